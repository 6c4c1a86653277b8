"""KBS storage: secrets encrypted at rest, per-resource policies, and a hash-chained audit log.

`KbsStore` is the interface; `SqliteStore` the embedded backend (stdlib `sqlite3`); `open_store`
picks a backend by location (a path or `sqlite:///path`; `postgresql://...` → `kbs.postgres`).

Invariants:

- Secrets are stored only as AES-256-GCM ciphertext under the KBS master key (32 bytes,
  `MasterKey.load`, a 0600 file), with a fresh 96-bit nonce per write and AAD
  `"sealserve-kbs-resource-v1\\0" + <resource path>`, so a ciphertext moved to another row does
  not decrypt (`DataLoss`). The plaintext never reaches the database file, logs or `repr`.
- Every write is one transaction; the database runs in WAL mode with `synchronous=FULL`, so a
  committed write survives a crash (SIGKILL, power loss) and an uncommitted one leaves nothing.
- The audit log is append-only and hash-chained: each record's `hash` is SHA-256 of the RFC 8785
  canonical JSON of its fields including `prev_hash` (the previous record's hash; 64 zeros for
  the first). `verify_chain()` recomputes it and names the first record that does not match,
  so an edited, deleted or reordered row is detected (truncating the tail is not: keep copies
  of the latest hash elsewhere if that matters).

Thread safety: one connection guarded by a lock; safe to share between threads (the HTTP
adapter runs store calls in worker threads). Several processes may open the same file (SQLite
locking), each with its own `SqliteStore`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import sqlite3
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import rfc8785
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sealserve.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from sealserve.fsio import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    atomic_output_file,
    read_user_file,
)
from sealserve.kbs.protocol import check_resource_path

log = logging.getLogger(__name__)

MASTER_KEY_SIZE = 32
GENESIS_HASH = "0" * 64
#: The policy key that applies to resources without a policy of their own.
DEFAULT_POLICY = "default"
SECRET_PROV_MAP = "secret-prov"
_AAD_PREFIX = b"sealserve-kbs-resource-v1\x00"
_NONCE_SIZE = 12


class MasterKey:
    """The KBS master key (AES-256). Its bytes never appear in `repr`, logs or messages."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != MASTER_KEY_SIZE:
            raise InvalidArgument(f"the KBS master key must be {MASTER_KEY_SIZE} bytes")
        self._aead = AESGCM(bytes(key))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MasterKey:
        """Read a 32-byte key file; refuse one readable by group or others (secure default)."""
        path = Path(path)
        raw = read_user_file(path, "KBS master key file")
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise FailedPrecondition(
                f"KBS master key file {path} is accessible to other users (mode "
                f"{mode & 0o777:o}); chmod 600 it"
            )
        if len(raw) != MASTER_KEY_SIZE:
            raise InvalidArgument(
                f"KBS master key file {path} must hold {MASTER_KEY_SIZE} raw bytes "
                f"(it has {len(raw)})"
            )
        return cls(raw)

    def encrypt(self, path: str, plaintext: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, plaintext, _AAD_PREFIX + path.encode())

    def decrypt(self, path: str, blob: bytes) -> bytes:
        try:
            return self._aead.decrypt(
                blob[:_NONCE_SIZE], blob[_NONCE_SIZE:], _AAD_PREFIX + path.encode()
            )
        except (InvalidTag, ValueError):
            log.error("stored resource %s does not authenticate under the master key", path)
            raise DataLoss(f"stored resource {path} cannot be authenticated") from None

    def __repr__(self) -> str:
        return "MasterKey(<redacted>)"


def generate_master_key_file(path: str | os.PathLike[str]) -> None:
    """Write 32 fresh random bytes to a new file with mode 0600 (never replaces one)."""
    path = Path(path)
    path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    if path.exists():
        raise AlreadyExists(f"{path} already exists; refusing to replace a KBS master key")
    with atomic_output_file(path, mode=PRIVATE_FILE_MODE) as out:
        out.write(secrets.token_bytes(MASTER_KEY_SIZE))


@dataclass(frozen=True)
class ResourceInfo:
    """What may be shown about a stored resource (never its value)."""

    path: str
    version: int
    size: int
    updated: int

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "version": self.version,
            "size": self.size,
            "updated": self.updated,
        }


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    time: int
    session: str
    tee: str
    measurements: dict[str, Any]
    tcb_status: str
    resource: str
    action: str
    decision: str
    reason: str
    prev_hash: str
    hash: str

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "session": self.session,
            "tee": self.tee,
            "measurements": self.measurements,
            "tcb_status": self.tcb_status,
            "resource": self.resource,
            "action": self.action,
            "decision": self.decision,
            "reason": self.reason,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def audit_hash(fields: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a record's fields (all but `hash`)."""
    body = {k: v for k, v in fields.items() if k != "hash"}
    return hashlib.sha256(rfc8785.dumps(body)).hexdigest()


@dataclass(frozen=True)
class ChainStatus:
    ok: bool
    records: int
    first_bad_seq: int | None = None
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
        }


_AUDIT_COLUMNS = (
    "seq, time, session, tee, measurements, tcb_status, resource, action, decision, "
    "reason, prev_hash, hash"
)


def record_from_row(row: tuple[Any, ...]) -> AuditRecord:
    """An audit row (columns in `_AUDIT_COLUMNS` order) as a record."""
    return AuditRecord(
        seq=int(row[0]),
        time=int(row[1]),
        session=row[2],
        tee=row[3],
        measurements=json.loads(row[4]),
        tcb_status=row[5],
        resource=row[6],
        action=row[7],
        decision=row[8],
        reason=row[9],
        prev_hash=row[10],
        hash=row[11],
    )


def verify_records(rows: list[tuple[Any, ...]]) -> ChainStatus:
    """Check a whole audit log, rows in `seq` order (see the module docstring)."""
    prev = GENESIS_HASH
    count = 0
    for expected_seq, row in enumerate(rows, start=1):
        try:
            record = record_from_row(row)
        except (json.JSONDecodeError, TypeError, ValueError):
            return ChainStatus(False, count, row[0], "unreadable record")
        if record.seq != expected_seq:
            return ChainStatus(False, count, record.seq, f"record {expected_seq} is missing")
        if record.prev_hash != prev:
            return ChainStatus(False, count, record.seq, "prev_hash does not chain")
        if audit_hash(record.to_json()) != record.hash:
            return ChainStatus(False, count, record.seq, "hash does not match the record")
        prev = record.hash
        count += 1
    return ChainStatus(True, count)


class KbsStore(Protocol):
    """What the KBS service needs from storage (`SqliteStore`, `postgres.PostgresStore`)."""

    def put_resource(self, path: str, value: bytes) -> ResourceInfo: ...
    def get_resource(self, path: str) -> bytes: ...
    def resource_exists(self, path: str) -> bool: ...
    def delete_resource(self, path: str) -> None: ...
    def list_resources(self) -> list[ResourceInfo]: ...
    def set_policy(self, path: str, text: str, fmt: str) -> None: ...
    def get_policy(self, path: str) -> tuple[str, str] | None: ...
    def delete_policy(self, path: str) -> None: ...
    def append_audit(
        self,
        *,
        session: str,
        tee: str,
        measurements: dict[str, Any],
        tcb_status: str,
        resource: str,
        action: str,
        decision: str,
        reason: str,
        now: int | None = None,
    ) -> AuditRecord: ...
    def audit_records(
        self, *, resource: str | None = None, since_seq: int = 0, limit: int = 1000
    ) -> list[AuditRecord]: ...
    def verify_chain(self) -> ChainStatus: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    path TEXT PRIMARY KEY,
    ciphertext BLOB NOT NULL,
    version INTEGER NOT NULL,
    size INTEGER NOT NULL,
    updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS policies (
    path TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    format TEXT NOT NULL,
    updated INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    time INTEGER NOT NULL,
    session TEXT NOT NULL,
    tee TEXT NOT NULL,
    measurements TEXT NOT NULL,
    tcb_status TEXT NOT NULL,
    resource TEXT NOT NULL,
    action TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_SCHEMA_VERSION = "1"


def check_policy_key(path: str) -> str:
    """A resource path, or one of the reserved keys: `default` (the policy of resources
    without one) and `secret-prov` (the resources Gramine's secret provisioning may release)."""
    return path if path in (DEFAULT_POLICY, SECRET_PROV_MAP) else check_resource_path(path)


class SqliteStore:
    """The embedded store (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], master_key: MasterKey) -> None:
        self.path = Path(path)
        self._key = master_key
        self._lock = threading.Lock()
        new = not self.path.exists()
        if new:
            self.path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, PRIVATE_FILE_MODE)
            os.close(fd)
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._tx() as db:
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))
            elif row[0] != _SCHEMA_VERSION:
                raise FailedPrecondition(
                    f"KBS database {self.path} has schema {row[0]}, this sealserve needs "
                    f"{_SCHEMA_VERSION}"
                )

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # --- transactions -------------------------------------------------------------------

    def _tx(self) -> _Transaction:
        return _Transaction(self._db, self._lock)

    # --- resources ------------------------------------------------------------------------

    def put_resource(self, path: str, value: bytes) -> ResourceInfo:
        path = check_resource_path(path)
        if not isinstance(value, bytes | bytearray) or not value:
            raise InvalidArgument("a resource value must be non-empty bytes")
        blob = self._key.encrypt(path, bytes(value))
        now = int(time.time())
        with self._tx() as db:
            row = db.execute("SELECT version FROM resources WHERE path=?", (path,)).fetchone()
            version = 1 if row is None else int(row[0]) + 1
            db.execute(
                "INSERT INTO resources(path, ciphertext, version, size, updated) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
                "ciphertext=excluded.ciphertext, version=excluded.version, "
                "size=excluded.size, updated=excluded.updated",
                (path, blob, version, len(value), now),
            )
        return ResourceInfo(path=path, version=version, size=len(value), updated=now)

    def get_resource(self, path: str) -> bytes:
        path = check_resource_path(path)
        with self._lock:
            row = self._db.execute(
                "SELECT ciphertext FROM resources WHERE path=?", (path,)
            ).fetchone()
        if row is None:
            raise NotFound(f"resource {path} not found")
        return self._key.decrypt(path, bytes(row[0]))

    def resource_exists(self, path: str) -> bool:
        path = check_resource_path(path)
        with self._lock:
            row = self._db.execute("SELECT 1 FROM resources WHERE path=?", (path,)).fetchone()
        return row is not None

    def delete_resource(self, path: str) -> None:
        path = check_resource_path(path)
        with self._tx() as db:
            cur = db.execute("DELETE FROM resources WHERE path=?", (path,))
            if cur.rowcount == 0:
                raise NotFound(f"resource {path} not found")

    def list_resources(self) -> list[ResourceInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT path, version, size, updated FROM resources ORDER BY path"
            ).fetchall()
        return [ResourceInfo(path=r[0], version=r[1], size=r[2], updated=r[3]) for r in rows]

    # --- policies -------------------------------------------------------------------------

    def set_policy(self, path: str, text: str, fmt: str) -> None:
        path = check_policy_key(path)
        if fmt not in ("toml", "json"):
            raise InvalidArgument("policy format must be toml or json")
        with self._tx() as db:
            db.execute(
                "INSERT INTO policies(path, text, format, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET text=excluded.text, format=excluded.format, "
                "updated=excluded.updated",
                (path, text, fmt, int(time.time())),
            )

    def get_policy(self, path: str) -> tuple[str, str] | None:
        path = check_policy_key(path)
        with self._lock:
            row = self._db.execute(
                "SELECT text, format FROM policies WHERE path=?", (path,)
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def delete_policy(self, path: str) -> None:
        path = check_policy_key(path)
        with self._tx() as db:
            if db.execute("DELETE FROM policies WHERE path=?", (path,)).rowcount == 0:
                raise NotFound(f"no policy for {path}")

    # --- audit ------------------------------------------------------------------------------

    def append_audit(
        self,
        *,
        session: str,
        tee: str,
        measurements: dict[str, Any],
        tcb_status: str,
        resource: str,
        action: str,
        decision: str,
        reason: str,
        now: int | None = None,
    ) -> AuditRecord:
        fields: dict[str, Any] = {
            "time": int(time.time()) if now is None else int(now),
            "session": session,
            "tee": tee,
            "measurements": measurements,
            "tcb_status": tcb_status,
            "resource": resource,
            "action": action,
            "decision": decision,
            "reason": reason,
        }
        with self._tx() as db:
            row = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq = 1 if row is None else int(row[0]) + 1
            fields["seq"] = seq
            fields["prev_hash"] = GENESIS_HASH if row is None else str(row[1])
            fields["hash"] = audit_hash(fields)
            db.execute(
                "INSERT INTO audit(seq, time, session, tee, measurements, tcb_status, resource, "
                "action, decision, reason, prev_hash, hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,
                    fields["time"],
                    session,
                    tee,
                    json.dumps(measurements, sort_keys=True),
                    tcb_status,
                    resource,
                    action,
                    decision,
                    reason,
                    fields["prev_hash"],
                    fields["hash"],
                ),
            )
        return AuditRecord(**fields)

    _AUDIT_COLUMNS = _AUDIT_COLUMNS

    def audit_records(
        self, *, resource: str | None = None, since_seq: int = 0, limit: int = 1000
    ) -> list[AuditRecord]:
        query = f"SELECT {self._AUDIT_COLUMNS} FROM audit WHERE seq > ?"
        args: list[Any] = [since_seq]
        if resource:
            query += " AND resource = ?"
            args.append(resource)
        query += " ORDER BY seq LIMIT ?"
        args.append(max(1, min(int(limit), 100_000)))
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [record_from_row(r) for r in rows]

    def verify_chain(self) -> ChainStatus:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {self._AUDIT_COLUMNS} FROM audit ORDER BY seq"
            ).fetchall()
        return verify_records(rows)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _Transaction:
    """`BEGIN IMMEDIATE` … `COMMIT` (or `ROLLBACK` on error) under the store's lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db = db
        self._lock = lock

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise
        return self._db

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self._db.execute("COMMIT")
            else:
                self._db.execute("ROLLBACK")
        finally:
            self._lock.release()


def open_store(location: str, master_key: MasterKey) -> KbsStore:
    """A store by location: `postgresql://...` (or `postgres://`) → PostgreSQL, a
    `sqlite:///path` URL or a plain file path → SQLite."""
    if location.startswith(("postgresql://", "postgres://")):
        from sealserve.kbs.postgres import PostgresStore

        return PostgresStore(location, master_key)
    if location.startswith("sqlite:///"):
        location = location[len("sqlite://") :]
    elif "://" in location:
        raise InvalidArgument(f"unknown KBS store URL scheme in {location.split('://')[0]}://")
    return SqliteStore(location, master_key)
