"""A server still fetching a model key from a key broker that never answers stops on SIGTERM
(issue #12 §4): the real `sealserve serve` process, and a stand-in broker socket that
accepts the connection and then says nothing."""

from __future__ import annotations

import signal
import socket
import subprocess

from sealserve.model_tree import encrypt_tree
from sealserve.tools.certs import make_oneway
from tests.harness import SEALSERVE

GUARD_SECONDS = 120  # only so that a broken server cannot hang the suite


def test_sigterm_stops_a_server_waiting_on_a_silent_key_broker(tmp_path, half_plus_two):
    subprocess.run([SEALSERVE, "sim", "init", str(tmp_path / "sim")], check=True, timeout=120)
    encrypt_tree(half_plus_two, str(tmp_path / "models" / "m" / "1"), bytes(16))
    tls = make_oneway("localhost", tmp_path / "kbs-tls", sans=["127.0.0.1"])
    with socket.create_server(("127.0.0.1", 0)) as silent_broker:
        silent_broker.settimeout(GUARD_SECONDS)
        port = silent_broker.getsockname()[1]
        server = subprocess.Popen(
            [
                SEALSERVE,
                "serve",
                "--model_name=m",
                f"--model_base_path={tmp_path / 'models' / 'm'}",
                "--port=0",
                "--rest_api_port=0",
                "--bind_address=127.0.0.1",
                f"--key_broker=https://127.0.0.1:{port}",
                f"--key_broker_ca={tls.server_cert}",
                "--attestation=sim",
                f"--sim_dir={tmp_path / 'sim'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            connection, _ = silent_broker.accept()  # the server is asking for its key
            with connection:
                server.send_signal(signal.SIGTERM)
                _, stderr = server.communicate(timeout=GUARD_SECONDS)
                # it left while its first request was still unanswered: it neither waited
                # for the client's timeout nor tried the broker again
                silent_broker.settimeout(0)
                try:
                    silent_broker.accept()[0].close()
                    retried = True
                except BlockingIOError:
                    retried = False
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    assert not retried
    assert server.returncode == 0, stderr
    assert "stop requested during start-up" in stderr
    assert "Traceback" not in stderr
