"""A tamper-evident store (issue #13 §2): an attacker with write access to the database but
not the master key rewrites rows with plain SQL — on SQLite and on PostgreSQL — and every
change is refused, the release denied, audited and logged; the audit log verifies offline
with the KBS's public key only, streaming, from a checkpoint kept elsewhere."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey

from sealserve.attestation.sim import SimAttester, SimTee
from sealserve.errors import DataLoss, FailedPrecondition
from sealserve.kbs.audit import audit_hash, read_checkpoint
from sealserve.kbs.audit_verify import verify_audit_log
from sealserve.kbs.jwe import open_resource
from sealserve.kbs.protocol import PROTOCOL_VERSION, b64encode, report_data_for, tee_pubkey_jwk
from sealserve.kbs.service import KbsConfig, KbsService
from sealserve.kbs.store import MasterKey, SqlStore, TamperDetected, open_store
from tests.kbs.conftest import KBS_TABLES, POLICY, RESOURCE, SECRET, SIM_NOW, Clock

Sql = Callable[..., list[Any]]


class Backend:
    """A store plus raw SQL access to its database, as the attacker has it."""

    def __init__(self, location: str, sql: Sql, key: MasterKey) -> None:
        self.location = location
        self.sql = sql
        self.key = key
        self.store: SqlStore = open_store(location, key)

    def reopen(self) -> SqlStore:
        self.store.close()
        self.store = open_store(self.location, self.key)
        return self.store


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    key = MasterKey(os.urandom(32))
    if request.param == "sqlite":
        path = tmp_path / "kbs.db"

        def sql(statement: str, *args: Any) -> list[Any]:
            db = sqlite3.connect(path)
            with db:
                rows = db.execute(statement, args).fetchall()
            db.close()
            return rows

        location = str(path)
    else:
        psycopg = pytest.importorskip("psycopg")
        url = request.getfixturevalue("pg_url")
        with psycopg.connect(url, autocommit=True) as db:
            for table in KBS_TABLES:
                db.execute(f"DROP TABLE IF EXISTS {table}")

        def sql(statement: str, *args: Any) -> list[Any]:
            with psycopg.connect(url, autocommit=True) as db:
                cursor = db.execute(statement.replace("?", "%s"), args)
                return cursor.fetchall() if cursor.description else []

        location = url
    backend = Backend(location, sql, key)
    yield backend
    backend.store.close()


def make_kbs(store: SqlStore, sim: SimTee, **config: Any) -> KbsService:
    return KbsService(
        store,
        KbsConfig(
            signing_key=ECKey.generate_key("P-256"),
            collateral=sim.collateral,
            insecure_trust_sim_root=sim.root_ca_der,
            clock=Clock(SIM_NOW + 60),
            **config,
        ),
    )


def release(service: KbsService, attester: SimAttester) -> bytes:
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
    return open_resource(service.resource(RESOURCE, session_id=sid), key)


def assert_release_refused(
    service: KbsService, attester: SimAttester, caplog: pytest.LogCaptureFixture, what: str
) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(DataLoss):
        release(service, attester)
    assert any("TAMPERING" in r.getMessage() for r in caplog.records)
    assert service.metrics.tampering.labels(what)._value.get() >= 1
    last = service.store.audit_records(limit=100_000)[-1]
    assert (last.action, last.decision) == ("release", "denied")
    assert "modified without the master key" in last.reason


def test_a_rewritten_policy_is_refused(
    backend: Backend, sim: SimTee, attester: SimAttester, caplog: pytest.LogCaptureFixture
) -> None:
    service = make_kbs(backend.store, sim)
    backend.store.put_resource(RESOURCE, SECRET)
    backend.store.set_policy(RESOURCE, POLICY.replace("min_isv_svn = 2", "min_isv_svn = 9"), "toml")
    # the attacker loosens the policy so that their TEE passes
    backend.sql("UPDATE kbs_policies SET text=? WHERE path=?", POLICY, RESOURCE)
    assert_release_refused(service, attester, caplog, "policy")


def test_a_deleted_policy_does_not_fall_back_to_the_default(
    backend: Backend, sim: SimTee, attester: SimAttester, caplog: pytest.LogCaptureFixture
) -> None:
    service = make_kbs(backend.store, sim)
    backend.store.put_resource(RESOURCE, SECRET)
    backend.store.set_policy("default", POLICY, "toml")
    backend.store.set_policy(RESOURCE, POLICY.replace("min_isv_svn = 2", "min_isv_svn = 9"), "toml")
    backend.sql("DELETE FROM kbs_policies WHERE path=?", RESOURCE)
    assert_release_refused(service, attester, caplog, "policy")


def test_an_older_secret_put_back_is_refused(
    backend: Backend, sim: SimTee, attester: SimAttester, caplog: pytest.LogCaptureFixture
) -> None:
    service = make_kbs(backend.store, sim)
    backend.store.set_policy(RESOURCE, POLICY, "toml")
    backend.store.put_resource(RESOURCE, b"old-key-revoked!")
    ((old,),) = backend.sql("SELECT ciphertext FROM kbs_resources WHERE path=?", RESOURCE)
    backend.store.put_resource(RESOURCE, SECRET)
    assert release(service, attester) == SECRET
    # the old ciphertext under the current version: bound to version 1, does not decrypt
    backend.sql("UPDATE kbs_resources SET ciphertext=? WHERE path=?", bytes(old), RESOURCE)
    assert_release_refused(service, attester, caplog, "resource")
    # the whole old row (ciphertext and version 1): the manifest names version 2
    backend.sql("UPDATE kbs_resources SET version=1 WHERE path=?", RESOURCE)
    assert_release_refused(service, attester, caplog, "resource")
    with pytest.raises(TamperDetected):
        backend.reopen().get_resource(RESOURCE)  # a restart does not launder it


def test_a_rolled_back_manifest_is_refused(backend: Backend) -> None:
    backend.store.put_resource(RESOURCE, b"old-key-revoked!")
    saved = backend.sql("SELECT key, value FROM kbs_meta WHERE key IN ('manifest', 'manifest_mac')")
    row = backend.sql("SELECT ciphertext, version FROM kbs_resources")[0]
    backend.store.put_resource(RESOURCE, SECRET)
    for key, value in saved:  # a consistent older state of every row involved
        backend.sql("UPDATE kbs_meta SET value=? WHERE key=?", value, key)
    backend.sql("UPDATE kbs_resources SET ciphertext=?, version=?", bytes(row[0]), row[1])
    with pytest.raises(TamperDetected, match="rolled back"):
        backend.store.get_resource(RESOURCE)
    backend.sql("UPDATE kbs_meta SET value='{}' WHERE key='manifest'")
    with pytest.raises(TamperDetected, match="manifest does not authenticate"):
        backend.store.get_resource(RESOURCE)


def _fill(store: SqlStore, n: int) -> None:
    for i in range(n):
        store.append_audit(
            session=f"s{i}",
            tee="sim",
            measurements={"mr_enclave": "00" * 32},
            tcb_status="UpToDate",
            resource=RESOURCE,
            action="release",
            decision="allowed",
            reason=f"reason {i}",
            now=1000 + i,
        )


def _rechain_from(backend: Backend, seq: int, reason: str) -> None:
    """Rewrite record `seq` and recompute the SHA-256 chain after it (no MACs: no key)."""
    records = [r.to_json() for r in backend.store.audit_records(limit=100_000)]
    prev = records[seq - 2]["hash"] if seq > 1 else "0" * 64
    for record in records[seq - 1 :]:
        if record["seq"] == seq:
            record["reason"] = reason
        record["prev_hash"] = prev
        record["hash"] = audit_hash(record)
        prev = record["hash"]
        backend.sql(
            "UPDATE kbs_audit SET reason=?, prev_hash=?, hash=? WHERE seq=?",
            record["reason"],
            record["prev_hash"],
            record["hash"],
            record["seq"],
        )


def test_a_rewritten_and_rechained_audit_log_is_detected_and_stops_releases(
    backend: Backend, sim: SimTee, attester: SimAttester, caplog: pytest.LogCaptureFixture
) -> None:
    service = make_kbs(backend.store, sim, audit_checkpoint_interval=10)
    public = ECKey.import_key(service.config.signing_key.as_pem(private=False))
    backend.store.put_resource(RESOURCE, SECRET)
    backend.store.set_policy(RESOURCE, POLICY, "toml")
    for _ in range(12):
        assert release(service, attester) == SECRET  # 24 records, checkpoints at 10 and 20
    assert verify_audit_log(backend.location, public).ok
    _rechain_from(backend, 5, "release denied")  # before a checkpoint
    offline = verify_audit_log(backend.location, public)
    assert not offline.ok and offline.first_bad_seq == 10 and "checkpoint" in offline.reason
    keyed = backend.store.verify_chain()
    assert not keyed.ok and keyed.first_bad_seq == 5
    # the tail no longer authenticates: nothing more is released
    with caplog.at_level(logging.ERROR), pytest.raises(DataLoss):
        release(service, attester)
    assert any("TAMPERING" in r.getMessage() for r in caplog.records)
    assert service.metrics.tampering.labels("audit")._value.get() >= 1


def test_records_after_the_last_checkpoint_need_the_master_key(backend: Backend) -> None:
    _fill(backend.store, 5)
    _rechain_from(backend, 4, "forged")
    public = ECKey.generate_key("P-256")
    assert verify_audit_log(backend.location, public).ok  # hash chain only: consistent
    with_key = verify_audit_log(backend.location, public, master_key=backend.key)
    assert not with_key.ok and with_key.first_bad_seq == 4


def test_a_truncated_audit_log_is_detected(backend: Backend, sim: SimTee) -> None:
    service = make_kbs(backend.store, sim, audit_checkpoint_interval=5)
    public = ECKey.import_key(service.config.signing_key.as_pem(private=False))
    for i in range(12):
        service._admin_audit(f"change {i}", RESOURCE)
    seq, _, signed = backend.store.latest_checkpoint()  # type: ignore[misc]
    assert seq == 10 and read_checkpoint(signed, public).seq == 10
    backend.sql("DELETE FROM kbs_audit WHERE seq > 8")
    backend.sql("DELETE FROM kbs_checkpoints WHERE seq > 8")
    # offline, from the checkpoint the operator kept: the log no longer reaches it
    status = verify_audit_log(backend.location, public, from_checkpoint=signed)
    assert not status.ok and "truncated" in status.reason
    # online: this KBS wrote record 12, the log now ends at 8
    with pytest.raises(TamperDetected, match="truncated"):
        service._admin_audit("after", RESOURCE)


def test_audit_limit_one_reads_one_page_not_the_log(backend: Backend, sim: SimTee) -> None:
    service = make_kbs(backend.store, sim, admin_token="a" * 20)
    _fill(backend.store, 1200)
    fetched: list[int] = []
    query = backend.store._query

    def counting(statement: str, args: tuple[Any, ...] = ()) -> list[Any]:
        rows = query(statement, args)
        fetched.append(len(rows))
        return rows

    backend.store._query = counting  # type: ignore[method-assign]
    answer = service.admin_audit("a" * 20, since_seq=600, limit=1)
    assert [r["seq"] for r in answer["records"]] == [601] and answer["chain"]["ok"]
    assert sum(fetched) <= 2  # the page and the latest checkpoint


def test_offline_verify_streams_from_a_checkpoint(
    backend: Backend, sim: SimTee, tmp_path: Path
) -> None:
    service = make_kbs(backend.store, sim, audit_checkpoint_interval=100)
    for i in range(1_200):
        service._admin_audit(f"change {i}", RESOURCE)
    pem = tmp_path / "kbs-public.pem"
    pem.write_bytes(service.config.signing_key.as_pem(private=False))
    sealserve = str(Path(sys.executable).with_name("sealserve"))
    done = subprocess.run(
        [sealserve, "kbs", "audit", "verify", "--db", backend.location, "--public-key", str(pem)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "records 1..1200, 12 signed checkpoints" in done.stdout
    checkpoint = tmp_path / "checkpoint.jws"
    checkpoint.write_text(backend.sql("SELECT signed FROM kbs_checkpoints WHERE seq=1000")[0][0])
    done = subprocess.run(
        [
            sealserve,
            "kbs",
            "audit",
            "verify",
            "--db",
            backend.location,
            "--public-key",
            str(pem),
            "--from-checkpoint",
            str(checkpoint),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "records 1001..1200" in done.stdout
    backend.sql("UPDATE kbs_audit SET decision='allowed' WHERE seq=1111")
    done = subprocess.run(
        [sealserve, "kbs", "audit", "verify", "--db", backend.location, "--public-key", str(pem)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "BROKEN at record 1111" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_old_format_store_is_refused_then_migrated(
    tmp_path: Path, sim: SimTee, attester: SimAttester
) -> None:
    """A schema-1 SQLite store (as sealserve wrote it before): refused with the command that
    upgrades it; `sealserve kbs migrate` keeps its secrets, policies and audit records."""
    from sealserve.kbs.migrate import migrate_store

    key = MasterKey(os.urandom(32))
    path = tmp_path / "old.db"
    _write_schema_1(path, key)
    with pytest.raises(FailedPrecondition, match="sealserve kbs migrate"):
        open_store(str(path), key)
    signing = ECKey.generate_key("P-256")
    done = migrate_store(str(path), key, signing)
    assert (done.resources, done.policies, done.audit_records) == (1, 1, 2)
    store = open_store(str(path), key)
    assert store.get_resource(RESOURCE) == SECRET
    assert store.get_policy(RESOURCE) == (POLICY, "toml")
    assert store.verify_chain().ok and store.verify_chain().records == 2
    public = ECKey.import_key(signing.as_pem(private=False))
    assert verify_audit_log(str(path), public).checkpoints == 1
    service = make_kbs(store, sim)
    assert release(service, attester) == SECRET
    store.close()


def _write_schema_1(path: Path, key: MasterKey) -> None:
    """The schema-1 layout and encodings, written by hand (the old code is gone)."""
    import hashlib
    import json

    import rfc8785
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    raw = key._legacy  # the old scheme encrypted under the master key itself
    assert isinstance(raw, AESGCM)
    nonce = os.urandom(12)
    blob = nonce + raw.encrypt(nonce, SECRET, b"sealserve-kbs-resource-v1\x00" + RESOURCE.encode())
    db = sqlite3.connect(path)
    db.executescript(
        """CREATE TABLE resources (path TEXT PRIMARY KEY, ciphertext BLOB NOT NULL,
            version INTEGER NOT NULL, size INTEGER NOT NULL, updated INTEGER NOT NULL);
        CREATE TABLE policies (path TEXT PRIMARY KEY, text TEXT NOT NULL, format TEXT NOT NULL,
            updated INTEGER NOT NULL);
        CREATE TABLE audit (seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, session TEXT NOT NULL,
            tee TEXT NOT NULL, measurements TEXT NOT NULL, tcb_status TEXT NOT NULL,
            resource TEXT NOT NULL, action TEXT NOT NULL, decision TEXT NOT NULL,
            reason TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema', '1');"""
    )
    db.execute("INSERT INTO resources VALUES (?, ?, 1, ?, 0)", (RESOURCE, blob, len(SECRET)))
    db.execute("INSERT INTO policies VALUES (?, ?, 'toml', 0)", (RESOURCE, POLICY))
    prev = "0" * 64
    for seq in (1, 2):
        fields = {
            "seq": seq,
            "time": seq,
            "session": "admin",
            "tee": "",
            "measurements": {},
            "tcb_status": "",
            "resource": RESOURCE,
            "action": "admin",
            "decision": "done",
            "reason": f"change {seq}",
            "prev_hash": prev,
        }
        digest = hashlib.sha256(rfc8785.dumps(fields)).hexdigest()
        db.execute(
            "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                seq,
                "admin",
                "",
                json.dumps({}),
                "",
                RESOURCE,
                "admin",
                "done",
                f"change {seq}",
                prev,
                digest,
            ),
        )
        prev = digest
    db.commit()
    db.close()
