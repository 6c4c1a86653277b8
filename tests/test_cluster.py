"""The cluster on one machine, for real (issue #7): two KBS processes on one PostgreSQL, three
attested replicas behind nginx (REST over HTTPS, gRPC over TLS), load through nginx while one
replica and one KBS are killed, the replica restarted. Needs nginx with its stream module and
PostgreSQL's server binaries (`make test` installs the Debian packages when missing): without
them this test fails, it does not skip."""

from __future__ import annotations

from pathlib import Path

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
    assert not report.releases("denied")
    assert report.audit_chain_ok  # one hash chain, appended to by both KBS processes


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


def test_only_requests_in_flight_on_the_killed_replica_failed(
    report: cluster.ClusterReport,
) -> None:
    failures = report.failures()
    assert len(failures) <= report.concurrency  # at most one per client
    assert [r for r in failures if not report.in_flight_at_kill(r)] == []
    assert len(report.requests) > 20 * max(1, len(failures))


def test_the_restarted_replica_reattested_and_serves_again(
    report: cluster.ClusterReport,
) -> None:
    victim = f"replica-{len(report.measurements)}"
    again = [r for r in report.releases() if r["seq"] > report.seq_before_restart]
    assert again, "no key release after the restart"
    assert {r["measurements"]["mr_enclave"] for r in again} == {report.measurements[victim]}
    # nginx routes to it again: its request_count (since its restart) and everybody else's
    assert report.replica_requests[victim] > 0
    assert all(count > 0 for count in report.replica_requests.values())
    assert report.restarted <= report.rejoined
