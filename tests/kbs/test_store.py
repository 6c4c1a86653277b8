"""The store: encryption at rest, the hash-chained audit log, crash safety (SIGKILL)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealserve.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from sealserve.kbs.store import MasterKey, SqliteStore, generate_master_key_file

SECRET = b"TOP-SECRET-wrap-key-\x00\x01\x02-0123456789"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "master.key"
    generate_master_key_file(path)
    return path


@pytest.fixture
def store(tmp_path: Path, key_file: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "kbs.db", MasterKey.load(key_file))
    yield s
    s.close()


def _all_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.name.startswith("kbs.db"))


def test_master_key_file_is_private_and_never_replaced(key_file: Path) -> None:
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert len(key_file.read_bytes()) == 32
    with pytest.raises(Exception, match="already exists"):
        generate_master_key_file(key_file)
    assert "redacted" in repr(MasterKey.load(key_file))


def test_master_key_readable_by_others_is_refused(key_file: Path) -> None:
    key_file.chmod(0o644)
    with pytest.raises(FailedPrecondition, match="chmod 600"):
        MasterKey.load(key_file)


def test_master_key_of_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.key"
    path.write_bytes(bytes(16))
    path.chmod(0o600)
    with pytest.raises(InvalidArgument, match="32 raw bytes"):
        MasterKey.load(path)


def test_secrets_are_encrypted_at_rest(tmp_path: Path, store: SqliteStore) -> None:
    info = store.put_resource("repo/key/a", SECRET)
    assert (info.version, info.size) == (1, len(SECRET))
    assert store.get_resource("repo/key/a") == SECRET
    assert SECRET not in _all_bytes(tmp_path)
    assert SECRET[:16] not in _all_bytes(tmp_path)
    assert (tmp_path / "kbs.db").stat().st_mode & 0o777 == 0o600
    # rotation: a new version, the old value gone
    assert store.put_resource("repo/key/a", b"second").version == 2
    assert store.get_resource("repo/key/a") == b"second"
    assert [r.path for r in store.list_resources()] == ["repo/key/a"]
    store.delete_resource("repo/key/a")
    with pytest.raises(NotFound):
        store.get_resource("repo/key/a")


def test_ciphertext_moved_to_another_path_does_not_decrypt(
    tmp_path: Path, store: SqliteStore
) -> None:
    store.put_resource("repo/key/a", SECRET)
    store.put_resource("repo/key/b", b"other")
    db = sqlite3.connect(tmp_path / "kbs.db")
    with db:
        db.execute(
            "UPDATE kbs_resources SET ciphertext=(SELECT ciphertext FROM kbs_resources "
            "WHERE path='repo/key/a') WHERE path='repo/key/b'"
        )
    db.close()
    with pytest.raises(DataLoss, match="not the one the KBS wrote") as err:
        store.get_resource("repo/key/b")
    assert SECRET.hex() not in str(err.value)


def test_another_master_key_cannot_read(tmp_path: Path, store: SqliteStore) -> None:
    store.put_resource("repo/key/a", SECRET)
    other = SqliteStore(tmp_path / "kbs.db", MasterKey(os.urandom(32)))
    with pytest.raises(DataLoss):
        other.get_resource("repo/key/a")
    other.close()


@pytest.mark.parametrize("path", ["a/b", "a/b/c/d", "../b/c", "a/../c", "a/b/", "a b/c/d"])
def test_bad_resource_paths_are_refused(store: SqliteStore, path: str) -> None:
    with pytest.raises(InvalidArgument):
        store.put_resource(path, b"x")


def _fill_audit(store: SqliteStore, n: int) -> None:
    for i in range(n):
        store.append_audit(
            session=f"s{i}",
            tee="sim",
            measurements={"mr_enclave": "00" * 32},
            tcb_status="UpToDate",
            resource="repo/key/a",
            action="release",
            decision="allowed" if i % 2 else "denied",
            reason=f"reason {i}",
            now=1000 + i,
        )


def test_audit_chain_verifies_and_detects_an_edited_row(tmp_path: Path, store: SqliteStore) -> None:
    _fill_audit(store, 5)
    status = store.verify_chain()
    assert status.ok and status.records == 5
    records = store.audit_records()
    assert records[0].prev_hash == "0" * 64
    assert all(b.prev_hash == a.hash for a, b in zip(records, records[1:], strict=False))
    db = sqlite3.connect(tmp_path / "kbs.db")
    with db:
        db.execute("UPDATE kbs_audit SET decision='allowed' WHERE seq=3")
    db.close()
    status = store.verify_chain()
    assert not status.ok and status.first_bad_seq == 3 and "hash" in status.reason


def test_audit_chain_detects_a_deleted_row(tmp_path: Path, store: SqliteStore) -> None:
    _fill_audit(store, 4)
    db = sqlite3.connect(tmp_path / "kbs.db")
    with db:
        db.execute("DELETE FROM kbs_audit WHERE seq=2")
    db.close()
    status = store.verify_chain()
    assert not status.ok and status.first_bad_seq == 3


def test_audit_chain_detects_a_rehashed_row(tmp_path: Path, store: SqliteStore) -> None:
    """Editing a row and fixing its own hash: its MAC (keyed) no longer verifies."""
    from sealserve.kbs.store import audit_hash

    _fill_audit(store, 4)
    record = store.audit_records()[1].to_json()
    record["reason"] = "forged"
    new_hash = audit_hash(record)
    db = sqlite3.connect(tmp_path / "kbs.db")
    with db:
        db.execute("UPDATE kbs_audit SET reason='forged', hash=? WHERE seq=2", (new_hash,))
    db.close()
    status = store.verify_chain()
    assert not status.ok and status.first_bad_seq == 2 and "MAC" in status.reason


def test_policies_are_stored(store: SqliteStore) -> None:
    assert store.get_policy("repo/key/a") is None
    store.set_policy("repo/key/a", "tee = ['sim']", "toml")
    store.set_policy("default", "{}", "json")
    assert store.get_policy("repo/key/a") == ("tee = ['sim']", "toml")
    assert store.get_policy("default") == ("{}", "json")


_WRITER = textwrap.dedent(
    """
    import sys
    from sealserve.kbs.store import MasterKey, SqliteStore
    store = SqliteStore(sys.argv[1], MasterKey.load(sys.argv[2]))
    i = 0
    while True:
        value = (b"secret-%08d-" % i) * 64
        store.put_resource(f"repo/key/k{i % 50}", value)
        store.append_audit(session="w", tee="", measurements={}, tcb_status="",
                           resource=f"repo/key/k{i % 50}", action="admin", decision="done",
                           reason=str(i))
        print(i, flush=True)
        i += 1
    """
)


def test_sigkill_while_writing_loses_no_committed_secret(tmp_path: Path, key_file: Path) -> None:
    db = tmp_path / "crash.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db), str(key_file)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    committed: list[int] = []
    for line in proc.stdout:
        committed.append(int(line))
        if len(committed) >= 300:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed.extend(int(line) for line in proc.stdout.read().split())
    assert proc.returncode == -signal.SIGKILL
    last = committed[-1]
    store = SqliteStore(db, MasterKey.load(key_file))
    try:
        # every secret whose write was acknowledged reads back intact (its last acknowledged
        # version, or a later one that committed before the kill)
        for slot in range(50):
            acked = [i for i in committed if i % 50 == slot]
            if not acked:
                continue
            value = store.get_resource(f"repo/key/k{slot}")
            index = int(value[7:15])
            assert value == (b"secret-%08d-" % index) * 64
            assert index % 50 == slot and acked[-1] <= index <= last + 1
        assert store.verify_chain().ok
        assert store.verify_chain().records >= len(committed)
    finally:
        store.close()
