"""The Kubernetes probes of deploy/kubernetes against the real server: a kubelet `tcpSocket`
probe (connect, then close without a TLS handshake) of either mutual-TLS port every 10 s
must leave the server's log as it was: no line per probe at INFO or above."""

from __future__ import annotations

import re
import socket
import ssl

import pytest

from tests.harness import mutual_tls_server

PROBES_PER_PORT = 5
SHUTDOWN_LINE = re.compile(r"sealserve: INFO: (shutting down|model \S+ version \d+ unloaded)")


@pytest.mark.e2e
def test_tcp_probes_of_the_mutual_tls_ports_add_nothing_to_the_log(tmp_path, half_plus_two):
    server, certs = mutual_tls_server(tmp_path, half_plus_two)
    try:
        before = server.stderr
        for port in (server.grpc_port, server.rest_port):
            for _ in range(PROBES_PER_PORT):
                socket.create_connection(("127.0.0.1", port), timeout=30).close()
        # then a handshake on each port, accepted after the probes' connections
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(str(certs.ca_cert))
        context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
        for port in (server.grpc_port, server.rest_port):
            with (
                socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
                context.wrap_socket(raw, server_hostname="localhost"),
            ):
                pass
    finally:
        assert server.stop() == 0, server.stderr
    # after the probes, only the shutdown's own lines
    after = server.stderr[len(before) :].splitlines()
    assert [line for line in after if not SHUTDOWN_LINE.fullmatch(line)] == [], after
