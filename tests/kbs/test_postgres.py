"""The PostgreSQL store against a real, throwaway PostgreSQL server (skipped where the
machine has no PostgreSQL binaries or psycopg): same behaviour as the SQLite store."""

from __future__ import annotations

import os

import pytest
from joserfc.jwk import ECKey

from sealserve.attestation.sim import SimAttester, SimTee
from sealserve.errors import DataLoss, NotFound
from sealserve.kbs.jwe import open_resource
from sealserve.kbs.protocol import PROTOCOL_VERSION, b64encode, report_data_for, tee_pubkey_jwk
from sealserve.kbs.service import KbsConfig, KbsService
from sealserve.kbs.store import MasterKey, open_store
from tests.kbs.conftest import KBS_TABLES, POLICY, RESOURCE, SECRET, SIM_NOW, Clock

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def pg_store(pg_url: str):  # type: ignore[no-untyped-def]
    with psycopg.connect(pg_url, autocommit=True) as db:
        for table in KBS_TABLES:
            db.execute(f"DROP TABLE IF EXISTS {table}")
    store = open_store(pg_url, MasterKey(os.urandom(32)))
    yield store
    store.close()


def test_secrets_encrypted_versions_and_delete(pg_url: str, pg_store) -> None:  # type: ignore[no-untyped-def]
    assert pg_store.put_resource("repo/key/a", SECRET).version == 1
    assert pg_store.put_resource("repo/key/a", SECRET).version == 2
    assert pg_store.get_resource("repo/key/a") == SECRET
    with psycopg.connect(pg_url) as db:
        (blob,) = db.execute("SELECT ciphertext FROM kbs_resources").fetchone()
    assert SECRET not in bytes(blob)
    assert "postgres@" not in repr(pg_store)
    pg_store.delete_resource("repo/key/a")
    with pytest.raises(NotFound):
        pg_store.get_resource("repo/key/a")


def test_moved_ciphertext_does_not_decrypt(pg_url: str, pg_store) -> None:  # type: ignore[no-untyped-def]
    pg_store.put_resource("repo/key/a", SECRET)
    pg_store.put_resource("repo/key/b", b"other")
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute(
            "UPDATE kbs_resources SET ciphertext=(SELECT ciphertext FROM kbs_resources "
            "WHERE path='repo/key/a') WHERE path='repo/key/b'"
        )
    with pytest.raises(DataLoss):
        pg_store.get_resource("repo/key/b")


def test_audit_chain_on_postgres(pg_url: str, pg_store) -> None:  # type: ignore[no-untyped-def]
    for i in range(4):
        pg_store.append_audit(
            session="s",
            tee="sim",
            measurements={"mr_enclave": "ab"},
            tcb_status="UpToDate",
            resource="repo/key/a",
            action="release",
            decision="denied",
            reason=str(i),
            now=i,
        )
    assert pg_store.verify_chain().ok and pg_store.verify_chain().records == 4
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("UPDATE kbs_audit SET decision='allowed' WHERE seq=2")
    status = pg_store.verify_chain()
    assert not status.ok and status.first_bad_seq == 2


def test_release_flow_on_postgres(pg_store, sim: SimTee, attester: SimAttester) -> None:  # type: ignore[no-untyped-def]
    service = KbsService(
        pg_store,
        KbsConfig(
            signing_key=ECKey.generate_key("P-256"),
            collateral=sim.collateral,
            insecure_trust_sim_root=sim.root_ca_der,
            clock=Clock(SIM_NOW + 60),
        ),
    )
    pg_store.put_resource(RESOURCE, SECRET)
    pg_store.set_policy(RESOURCE, POLICY, "toml")
    sid, challenge = service.auth({"version": PROTOCOL_VERSION, "tee": "sim"})
    key = ECKey.generate_key("P-256")
    jwk = tee_pubkey_jwk(key)
    quote = attester.evidence(report_data_for(challenge["nonce"], jwk)).quote
    service.attest(
        sid,
        {
            "runtime-data": {"nonce": challenge["nonce"], "tee-pubkey": jwk},
            "tee-evidence": {"quote": b64encode(quote)},
        },
    )
    sealed = service.resource(RESOURCE, session_id=sid)
    assert open_resource(sealed, key) == SECRET
    decisions = [(r.action, r.decision) for r in pg_store.audit_records()]
    assert decisions == [("attest", "verified"), ("release", "allowed")]
    assert pg_store.verify_chain().ok
