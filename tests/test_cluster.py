"""The cluster on one machine, for real (issues #7, #16): two KBS processes on one PostgreSQL,
three attested replicas, each with its own KBS-issued certificate, behind nginx at layer 4
only (TLS passthrough: TLS ends in the replicas); requesters verify each replica's attestation
through the balancer before sending anything and reconnect so that load spreads; one replica
and one KBS are killed, the replica restarted; last, the model key is revoked and every replica
unloads the model. One shared run (slow: end-to-end tier), several assertions. Needs nginx
with its stream module and PostgreSQL's server binaries (`make test` installs the Debian
packages when missing): without them this test fails, it does not skip."""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections import Counter
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from examples import cluster


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, half_plus_two: Path) -> cluster.ClusterReport:
    return cluster.run(tmp_path_factory.mktemp("cluster") / "work", model=half_plus_two)


def test_every_replica_attested_and_got_its_key(report: cluster.ClusterReport) -> None:
    before = [r for r in report.releases() if r["seq"] <= report.seq_before_restart]
    released_to = {r["measurements"]["mr_enclave"] for r in before}
    assert released_to == set(report.measurements.values())  # each of the 3 replicas
    assert len({r["session"] for r in before}) >= 3  # each its own attested session
    assert all(r["tee"] == "sim" and r["resource"] == cluster.RESOURCE for r in before)
    assert all(r["seq"] > report.revoke_seq > 0 for r in report.releases("denied"))
    assert report.audit_chain_ok  # one hash chain, appended to by both KBS processes


def test_the_balancer_sees_only_ciphertext(report: cluster.ClusterReport) -> None:
    """nginx forwards TCP (stream, TLS passthrough): it holds no certificate or key and has
    no `http` block; the certificates the requesters verified are the replicas' own."""
    config = report.nginx_config
    assert "stream {" in config and "proxy_pass rest_replicas;" in config
    assert not re.search(r"^\s*http\s*\{", config, re.MULTILINE)
    assert "ssl" not in config and ".pem" not in config
    verified = {c.certificate for c in report.connections if c.certificate}
    assert verified and all(report.replica_of(serial) for serial in verified)


def test_each_replica_holds_its_own_attested_certificate(report: cluster.ClusterReport) -> None:
    assert set(report.replica_certificates) == set(report.measurements)
    serials = [s for held in report.replica_certificates.values() for s in held]
    assert len(serials) == len(set(serials)) == len(report.measurements) + 1  # + the restart's
    # the REST requesters verified (server CA, name, claims against the policy) each of the
    # three replicas' certificates through the balancer before the kill
    before_kill = {
        report.replica_of(c.certificate)
        for c in report.connections
        if c.certificate and c.opened < report.replica_killed[0]
    }
    assert before_kill == set(report.measurements)
    issued_to = {report.replica_named(r) for r in report.audit if r["action"] == "certificate"}
    assert set(report.measurements) <= issued_to


def test_load_spreads_over_every_replica(report: cluster.ClusterReport) -> None:
    # Prometheus request_count of each replica (the restarted one counts since its restart)
    assert all(count > 0 for count in report.replica_requests.values())
    assert len(report.replica_requests) == len(report.measurements)
    assert Counter(c.protocol for c in report.connections).keys() == {"REST", "gRPC"}


def test_both_brokers_served_and_the_survivor_took_over(report: cluster.ClusterReport) -> None:
    used = set(" then ".join(report.broker_connections).split(" then "))
    assert used == {"kbs-1", "kbs-2"}
    after_kill = [r for r in report.requests if r.start > report.broker_killed[1]]
    assert after_kill and not any(r.error for r in after_kill)


def test_traffic_flows_before_and_after_the_kills(report: cluster.ClusterReport) -> None:
    sent, _ = report.replica_killed
    before = [r for r in report.requests if r.end < sent]
    after = [r for r in report.requests if r.start > report.rejoined]
    for phase in (before, after):
        assert {r.protocol for r in phase} == {"REST", "gRPC"}
        assert not [r for r in phase if r.error]


def test_only_requests_on_connections_to_the_killed_replica_failed(
    report: cluster.ClusterReport,
) -> None:
    failures = report.failures()
    assert [r for r in failures if not report.on_killed_connection(r)] == []
    # a connection breaks once: its requester opens a new one, which nginx sends elsewhere
    per_connection = Counter(r.connection for r in failures if r.connection >= 0)
    assert all(n == 1 for n in per_connection.values())
    assert len(failures) <= report.concurrency  # one connection per client at a time
    assert len(report.requests) > 20 * max(1, len(failures))


def test_the_restarted_replica_reattested_and_serves_again(
    report: cluster.ClusterReport,
) -> None:
    victim = report.victim
    sessions_before = {r["session"] for r in report.audit if r["seq"] <= report.seq_before_restart}
    again = [
        r
        for r in report.releases()
        if r["seq"] > report.seq_before_restart and r["session"] not in sessions_before
    ]
    assert report.measurements[victim] in {r["measurements"]["mr_enclave"] for r in again}
    first, renewed = report.replica_certificates[victim]
    assert first != renewed  # a new key, a new certificate
    assert report.replica_requests[victim] > 0  # nginx routes to it again
    assert report.restarted <= report.rejoined


def test_revocation_reaches_every_replica(report: cluster.ClusterReport) -> None:
    names = set(report.measurements)
    assert set(report.revoked_status) == names
    for name, status in report.revoked_status.items():
        assert status["state"] == "END", name
        assert "key revoked" in status["status"]["error_message"], name
        # its metrics: the predict after the revocation counted as failed (not OK)
        assert sum(n for s, n in report.revoked_counts[name].items() if s != "OK") > 0, name
    revoke = [r for r in report.audit if r["seq"] == report.revoke_seq]
    assert revoke and revoke[0]["action"] == "admin" and revoke[0]["reason"] == "revoke"
    refused = {report.replica_named(r) for r in report.releases("denied")}
    assert refused == names  # every replica's renewal was refused, and audited


# --- the run's own rules, without a run (unit tier) ---------------------------------------------


def _report_with_a_kill() -> cluster.ClusterReport:
    """replica-3 killed at t=10 (gone at 10.1); REST connection 0 on replica-3, 1 on replica-1
    (both opened at 5), 2 opened after the kill; gRPC channel 3 opened at 5 (peer unknown)."""
    report = cluster.ClusterReport(victim="replica-3", replica_killed=(10.0, 10.1))
    report.replica_certificates = {"replica-1": ["a1"], "replica-3": ["c1", "c2"]}
    report.connections = [
        cluster.Connection("REST", 5.0, "c1"),
        cluster.Connection("REST", 5.0, "a1"),
        cluster.Connection("REST", 12.0, "c2"),
        cluster.Connection("gRPC", 5.0, ""),
    ]
    return report


@pytest.mark.unit
@pytest.mark.parametrize(
    ("request_", "excused"),
    [
        (cluster.Request("REST", 10.01, 10.05, "RemoteDisconnected", 0), True),
        (cluster.Request("REST", 11.0, 11.01, "RemoteDisconnected", 0), True),  # next use
        (cluster.Request("REST", 10.01, 10.05, "RemoteDisconnected", 1), False),  # other replica
        (cluster.Request("REST", 13.0, 13.05, "HTTP 502", 2), False),  # opened after the kill
        (cluster.Request("REST", 9.0, 9.5, "HTTP 500", 0), False),  # before the kill
        (cluster.Request("gRPC", 10.0, 10.08, "UNAVAILABLE", 3), True),  # in flight
        (cluster.Request("gRPC", 20.0, 20.01, "UNAVAILABLE", 3), False),  # long after
        (cluster.Request("REST", 10.05, 10.2, "SSLError", -1), True),  # handshake at the kill
        (cluster.Request("REST", 30.0, 30.2, "SSLError", -1), False),
    ],
)
def test_which_failures_the_kill_excuses(request_: cluster.Request, excused: bool) -> None:
    assert _report_with_a_kill().on_killed_connection(request_) is excused


@pytest.mark.unit
def test_the_balancer_config_is_layer_4_only(tmp_path: Path) -> None:
    replicas = [cluster.Replica(f"replica-{i}", 9000 + i, 9100 + i, []) for i in (1, 2, 3)]
    config = cluster.nginx_conf(tmp_path, "", [8001, 8002], 8000, 8501, 8500, replicas)
    assert not re.search(r"^\s*http\s*\{", config, re.MULTILINE)
    assert "ssl" not in config and ".pem" not in config
    for port in (9101, 9102, 9103, 9001, 9002, 9003):
        assert f"server 127.0.0.1:{port} max_fails=1" in config
    assert config.count("proxy_next_upstream on;") == 3


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="running a command as another user needs root")
def test_commands_run_as_another_user_survive_a_parent_busy_with_grpc() -> None:
    """The cluster starts PostgreSQL as user postgres from a process whose gRPC threads are
    busy (the test session's channels, the load). Dropping privileges in a fork() of it ran
    gRPC's fork handlers in the child, which now and then died before its exec (SIGSEGV;
    "initdb failed: ... Epoll1Poller ... Bad file descriptor"): about 4 starts in 100."""
    echo = grpc.unary_unary_rpc_method_handler(lambda request, _: request)
    server = grpc.server(futures.ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t", {"E": echo})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    done = threading.Event()

    def call_until_done() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/t/E")
            while not done.is_set():
                call(b"x")

    callers = [threading.Thread(target=call_until_done) for _ in range(2)]
    for caller in callers:
        caller.start()
    try:
        codes = Counter(
            subprocess.run(cluster.as_user("nobody", ["true"]), capture_output=True).returncode
            for _ in range(300)
        )
    finally:
        done.set()
        for caller in callers:
            caller.join()
        server.stop(None)
    assert codes == {0: 300}
