"""The client across KBS replicas: sessions live in one KBS process's memory, so when the KBS
that holds a handshake's session dies (or a load balancer sends the next connection to another
replica), the client starts the handshake again from `auth`, with backoff, instead of giving
up on the 401 "unknown session". A 401 from the KBS that holds the session stays final."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sealserve.attestation import Evidence
from sealserve.attestation.sim import SimAttester, SimTee
from sealserve.kbs.client import KbsDenied, KbsKeyProvider
from sealserve.kbs.service import KbsService
from tests.harness import RunningKbs
from tests.kbs.conftest import POLICY, RESOURCE, SECRET, SIM_NOW, Clock, Kbs, make_service


class ReplacedWhileQuoting:
    """An attester during whose quote the KBS that answered `auth` dies and another KBS
    process (same database and keys, no sessions) takes over its address."""

    tee = "sim"

    def __init__(self, attester: SimAttester, replace: Callable[[], None]) -> None:
        self.attester = attester
        self.replace = replace
        self.quotes = 0

    def evidence(self, report_data: bytes) -> Evidence:
        self.quotes += 1
        if self.quotes == 1:
            self.replace()
        return self.attester.evidence(report_data)


def test_handshake_restarts_when_the_kbs_holding_the_session_dies(
    tmp_path: Path, sim: SimTee, attester: SimAttester, certs
) -> None:  # type: ignore[no-untyped-def]
    first = make_service(tmp_path, sim, Clock(SIM_NOW + 60), admin=None)
    first.store.put_resource(RESOURCE, SECRET)
    first.store.set_policy(RESOURCE, POLICY, "toml")
    second = KbsService(first.store, first.config)  # one database, sessions of its own
    brokers = [RunningKbs(first, certs.server_cert, certs.server_key)]
    port = brokers[0].port

    def replace() -> None:
        brokers[0].stop()
        # the same address: a replica taking the dead one's place
        brokers.append(RunningKbs(second, certs.server_cert, certs.server_key, port))

    sleeps: list[float] = []
    quoting = ReplacedWhileQuoting(attester, replace)
    provider = KbsKeyProvider(
        f"https://127.0.0.1:{port}", str(certs.trust_anchor), quoting, sleep=sleeps.append
    )
    try:
        assert provider.key_for("mnist") == SECRET
    finally:
        brokers[-1].stop()
    assert quoting.quotes == 2  # a second handshake, from auth
    assert sleeps == [0.5]  # after the backoff
    records = [(r.action, r.decision) for r in first.store.audit_records(limit=100)]
    # the replacement did not know the session (counted, not audited: no credentials);
    # the new handshake got the key
    assert records == [("attest", "verified"), ("release", "allowed")]
    assert second.metrics.unauthenticated.labels("attest")._value.get() == 1
    first.store.close()


class WrongBinding:
    """Evidence that binds other report data: the KBS refuses it with 401."""

    tee = "sim"

    def __init__(self, attester: SimAttester) -> None:
        self.attester = attester

    def evidence(self, report_data: bytes) -> Evidence:
        return self.attester.evidence(bytes(64))


def test_a_401_from_the_kbs_holding_the_session_is_final(kbs: Kbs, attester: SimAttester) -> None:
    before = len(kbs.store.audit_records(limit=100_000))
    sleeps: list[float] = []
    provider = KbsKeyProvider(kbs.url, kbs.ca, WrongBinding(attester), sleep=sleeps.append)
    with pytest.raises(KbsDenied, match="does not bind") as err:
        provider.key_for("mnist")
    assert err.value.status == 401
    assert sleeps == []  # no second handshake: the same KBS would say the same
    assert len(kbs.store.audit_records(limit=100_000)) == before + 1
