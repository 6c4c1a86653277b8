"""KBS storage: secrets, per-resource policies and the audit log, tamper-evident against
anyone who can write the database but does not hold the master key.

`KbsStore` is the interface the service uses; `SqlStore` its one SQL implementation, on
SQLite (`SqliteStore`, a file) or PostgreSQL (`PostgresStore`, replicas sharing one database)
through `kbs.dialects`; `open_store(location, key)` picks by location. `AuditReader` reads the
audit log without the master key, for offline verification.

Invariants (schema 2; keys in `kbs.sealing`, chain in `kbs.audit`):

- A secret is stored only as AES-256-GCM ciphertext bound to its path and version; a
  policy carries an HMAC over its path, version, format and text.
- The *manifest* (one row of `kbs_meta`, HMAC'd) names every resource with its version and
  the SHA-256 of its ciphertext, and every policy with its version and MAC, plus a generation
  counter bumped by every write. A row put back from an older state, swapped with another
  row, deleted or added behind the KBS's back no longer matches the manifest; a whole
  manifest rolled back is refused while this process runs (its generation went down).
- Anything that does not authenticate raises `sealing.TamperDetected` and is logged; the
  service then refuses the release and audits why.
- The audit log is a hash chain with an HMAC per record; every append first authenticates
  the current tail (and refuses a tail that went backwards), so a rewritten or truncated tail
  stops the KBS releasing anything until an operator looks.
- Every write is one transaction, serialised across processes (dialects); a committed write
  survives a crash, an uncommitted one leaves nothing.
- Schema 1 stores (unauthenticated policies, unkeyed audit chain) are refused with the
  command that upgrades them (`sealserve kbs migrate`, `kbs.migrate`).

What this cannot see: the whole database replaced by an older copy of itself while the KBS
is stopped. Keep the latest signed audit checkpoint outside the database
(`sealserve kbs audit verify --from-checkpoint`) to detect that.

Thread safety: one connection guarded by a lock; safe to share between threads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

import rfc8785

from sealserve.errors import FailedPrecondition, InvalidArgument, NotFound
from sealserve.kbs.audit import (
    AUDIT_COLUMNS,
    GENESIS_HASH,
    AuditRecord,
    ChainStatus,
    ChainVerifier,
    audit_hash,
    record_from_row,
)
from sealserve.kbs.dialects import Dialect, PostgresDialect, SqliteDialect, dialect_for
from sealserve.kbs.protocol import check_resource_path
from sealserve.kbs.sealing import (
    MASTER_KEY_SIZE,
    MasterKey,
    TamperDetected,
    generate_master_key_file,
)

__all__ = [
    "AuditReader",
    "AuditRecord",
    "ChainStatus",
    "DEFAULT_POLICY",
    "GENESIS_HASH",
    "KbsStore",
    "MASTER_KEY_SIZE",
    "MasterKey",
    "OldSchema",
    "PostgresStore",
    "ResourceInfo",
    "SECRET_PROV_MAP",
    "SqlStore",
    "SqliteStore",
    "TamperDetected",
    "audit_hash",
    "check_policy_key",
    "generate_master_key_file",
    "open_store",
]

log = logging.getLogger(__name__)

#: The policy key that applies to resources without a policy of their own.
DEFAULT_POLICY = "default"
SECRET_PROV_MAP = "secret-prov"
SCHEMA_VERSION = "2"
_PAGE = 1000  # rows per query when streaming the audit log


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


class KbsStore(Protocol):
    """What the KBS service needs from storage (`SqlStore` on SQLite or PostgreSQL)."""

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
    def check_records(self, records: list[AuditRecord]) -> ChainStatus: ...
    def verify_chain(self) -> ChainStatus: ...
    def put_checkpoint(self, seq: int, record_hash: str, signed: str) -> None: ...
    def latest_checkpoint(self) -> tuple[int, str, str] | None: ...
    def close(self) -> None: ...


def check_policy_key(path: str) -> str:
    """A resource path, or one of the reserved keys: `default` (the policy of resources
    without one) and `secret-prov` (the resources Gramine's secret provisioning may release)."""
    return path if path in (DEFAULT_POLICY, SECRET_PROV_MAP) else check_resource_path(path)


class OldSchema(FailedPrecondition):
    """The database is in an older format this sealserve does not open."""


def _schema(blob: str) -> tuple[str, ...]:
    return (
        "CREATE TABLE IF NOT EXISTS kbs_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"""CREATE TABLE IF NOT EXISTS kbs_resources (
            path TEXT PRIMARY KEY, ciphertext {blob} NOT NULL, version BIGINT NOT NULL,
            size BIGINT NOT NULL, updated BIGINT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS kbs_policies (
            path TEXT PRIMARY KEY, text TEXT NOT NULL, format TEXT NOT NULL,
            version BIGINT NOT NULL, updated BIGINT NOT NULL, mac TEXT NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS kbs_audit (
            seq BIGINT PRIMARY KEY, time BIGINT NOT NULL, session TEXT NOT NULL,
            tee TEXT NOT NULL, measurements TEXT NOT NULL, tcb_status TEXT NOT NULL,
            resource TEXT NOT NULL, action TEXT NOT NULL, decision TEXT NOT NULL,
            reason TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL,
            mac TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS kbs_audit_by_resource ON kbs_audit (resource, seq)",
        """CREATE TABLE IF NOT EXISTS kbs_checkpoints (
            seq BIGINT PRIMARY KEY, hash TEXT NOT NULL, signed TEXT NOT NULL)""",
    )


def old_schema_message(dialect: Dialect) -> str:
    where = dialect.describe()
    return (
        f"KBS database {where} is in the old format (schema 1: policies and the audit log are "
        "not authenticated under the master key); upgrade it once with `sealserve kbs migrate "
        f"--db {where if isinstance(dialect, SqliteDialect) else 'URL'} --master-key FILE "
        "--signing-key FILE` (it verifies the old audit chain first; back the database up)"
    )


def is_old_schema(tables: set[str]) -> bool:
    # SQLite schema 1 used unprefixed tables; PostgreSQL schema 1 had no kbs_meta.
    return "resources" in tables or ("kbs_resources" in tables and "kbs_meta" not in tables)


class _Manifest:
    """The authenticated list of what the store holds (see the module docstring)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.generation: int = int(data.get("generation", 0))
        self.resources: dict[str, dict[str, Any]] = dict(data.get("resources", {}))
        self.policies: dict[str, dict[str, Any]] = dict(data.get("policies", {}))

    def to_json(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "resources": self.resources,
            "policies": self.policies,
        }


class SqlStore:
    """The store on one SQL database (see the module docstring)."""

    def __init__(self, dialect: Dialect, master_key: MasterKey) -> None:
        self._dialect = dialect
        self._sql = dialect.sql
        self._key = master_key
        self._lock = threading.Lock()
        self._db = dialect.connect()
        # Highest manifest generation and audit seq this process has seen: going back is
        # a rollback of the database under a running KBS.
        self._generation = 0
        self._audit_seq = 0
        self._manifest_cache: tuple[str, _Manifest] | None = None
        try:
            with self._write() as db:
                if is_old_schema(dialect.tables(db)):
                    raise OldSchema(old_schema_message(dialect))
                for statement in _schema(dialect.blob):
                    db.execute(statement)
                row = db.execute(self._sql("SELECT value FROM kbs_meta WHERE key='schema'"))
                found = row.fetchone()
                if found is None:
                    db.execute(
                        self._sql("INSERT INTO kbs_meta VALUES ('schema', ?)"), (SCHEMA_VERSION,)
                    )
                    self._write_manifest(db, _Manifest({}))
                elif found[0] != SCHEMA_VERSION:
                    raise OldSchema(
                        f"KBS database {dialect.describe()} has schema {found[0]}; this "
                        f"sealserve needs {SCHEMA_VERSION}"
                    )
        except BaseException:
            self._db.close()
            raise

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._dialect.describe()!r})"

    # --- transactions ---------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """One serialised write transaction (committed, or rolled back on any error)."""
        with self._lock:
            self._dialect.begin_write(self._db)
            try:
                yield self._db
            except BaseException:
                self._dialect.rollback(self._db)
                raise
            self._dialect.commit(self._db)

    def _query(self, statement: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return list(self._db.execute(self._sql(statement), args).fetchall())

    # --- the manifest ---------------------------------------------------------------------

    def _read_manifest(self, db: Any) -> _Manifest:
        rows = db.execute(
            self._sql("SELECT key, value FROM kbs_meta WHERE key IN ('manifest', 'manifest_mac')")
        ).fetchall()
        values = {str(r[0]): str(r[1]) for r in rows}
        text, mac = values.get("manifest"), values.get("manifest_mac")
        cached = self._manifest_cache
        if cached is not None and text is not None and cached[0] == f"{text}\0{mac}":
            return cached[1]
        try:
            data = json.loads(text) if text is not None else None
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or not self._key.check_record_mac("manifest", data, mac):
            self._tampered("manifest", "the store's manifest does not authenticate")
        manifest = _Manifest(data)  # type: ignore[arg-type]
        if manifest.generation < self._generation:
            self._tampered(
                "manifest",
                f"the store's manifest went back from generation {self._generation} to "
                f"{manifest.generation} (the database was rolled back)",
            )
        self._generation = manifest.generation
        self._manifest_cache = (f"{text}\0{mac}", manifest)
        return manifest

    def _write_manifest(self, db: Any, manifest: _Manifest) -> None:
        manifest.generation += 1
        data = manifest.to_json()
        text = rfc8785.dumps(data).decode()
        mac = self._key.record_mac("manifest", data)
        for key, value in (("manifest", text), ("manifest_mac", mac)):
            db.execute(
                self._sql(
                    "INSERT INTO kbs_meta(key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value=excluded.value"
                ),
                (key, value),
            )
        self._generation = manifest.generation
        self._manifest_cache = None

    def _tampered(self, what: str, message: str) -> NoReturn:
        log.error("TAMPERING detected in the KBS store %s: %s", self._dialect.describe(), message)
        raise TamperDetected(what, f"{message}: the database was modified without the master key")

    # --- resources ------------------------------------------------------------------------

    def put_resource(self, path: str, value: bytes) -> ResourceInfo:
        path = check_resource_path(path)
        if not isinstance(value, bytes | bytearray) or not value:
            raise InvalidArgument("a resource value must be non-empty bytes")
        now = int(time.time())
        with self._write() as db:
            manifest = self._read_manifest(db)
            version = int(manifest.resources.get(path, {}).get("version", 0)) + 1
            blob = self._key.seal_resource(path, version, bytes(value))
            db.execute(
                self._sql(
                    "INSERT INTO kbs_resources(path, ciphertext, version, size, updated) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
                    "ciphertext=excluded.ciphertext, version=excluded.version, "
                    "size=excluded.size, updated=excluded.updated"
                ),
                (path, blob, version, len(value), now),
            )
            manifest.resources[path] = {
                "version": version,
                "digest": hashlib.sha256(blob).hexdigest(),
            }
            self._write_manifest(db, manifest)
        return ResourceInfo(path=path, version=version, size=len(value), updated=now)

    def _checked_read(
        self,
        what: str,
        statement: str,
        path: str,
        check: Callable[[_Manifest, Any], str | None],
    ) -> tuple[_Manifest, Any]:
        """The manifest and `path`'s row, checked with `check` (None: consistent, else what
        is wrong). The fast read takes two statements; a mismatch is read again inside a
        write transaction (serialised with every writer, other KBS replicas included) before
        it is called tampering, so a rotation racing the read is no false alarm."""
        with self._lock:
            manifest = self._read_manifest(self._db)
            row = self._db.execute(self._sql(statement), (path,)).fetchone()
        if check(manifest, row) is None:
            return manifest, row
        with self._write() as db:
            manifest = self._read_manifest(db)
            row = db.execute(self._sql(statement), (path,)).fetchone()
        problem = check(manifest, row)
        if problem is not None:
            self._tampered(what, problem)
        return manifest, row

    def get_resource(self, path: str) -> bytes:
        path = check_resource_path(path)

        def check(manifest: _Manifest, row: Any) -> str | None:
            entry = manifest.resources.get(path)
            if row is None and entry is None:
                return None
            if row is None or entry is None:
                return f"resource {path} was deleted or added behind the KBS"
            if int(row[1]) != entry["version"] or (
                hashlib.sha256(bytes(row[0])).hexdigest() != entry["digest"]
            ):
                return f"stored resource {path} is not the one the KBS wrote"
            return None

        _, row = self._checked_read(
            "resource", "SELECT ciphertext, version FROM kbs_resources WHERE path=?", path, check
        )
        if row is None:
            raise NotFound(f"resource {path} not found")
        return self._key.open_resource(path, int(row[1]), bytes(row[0]))

    def resource_exists(self, path: str) -> bool:
        path = check_resource_path(path)
        return bool(self._query("SELECT 1 FROM kbs_resources WHERE path=?", (path,)))

    def delete_resource(self, path: str) -> None:
        path = check_resource_path(path)
        with self._write() as db:
            manifest = self._read_manifest(db)
            cursor = db.execute(self._sql("DELETE FROM kbs_resources WHERE path=?"), (path,))
            if cursor.rowcount == 0 and path not in manifest.resources:
                raise NotFound(f"resource {path} not found")
            manifest.resources.pop(path, None)
            self._write_manifest(db, manifest)

    def list_resources(self) -> list[ResourceInfo]:
        rows = self._query("SELECT path, version, size, updated FROM kbs_resources ORDER BY path")
        return [
            ResourceInfo(path=r[0], version=int(r[1]), size=int(r[2]), updated=int(r[3]))
            for r in rows
        ]

    # --- policies -------------------------------------------------------------------------

    @staticmethod
    def _policy_fields(path: str, version: int, fmt: str, text: str) -> dict[str, Any]:
        return {"path": path, "version": version, "format": fmt, "text": text}

    def set_policy(self, path: str, text: str, fmt: str) -> None:
        path = check_policy_key(path)
        if fmt not in ("toml", "json"):
            raise InvalidArgument("policy format must be toml or json")
        with self._write() as db:
            manifest = self._read_manifest(db)
            version = int(manifest.policies.get(path, {}).get("version", 0)) + 1
            mac = self._key.record_mac("policy", self._policy_fields(path, version, fmt, text))
            db.execute(
                self._sql(
                    "INSERT INTO kbs_policies(path, text, format, version, updated, mac) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
                    "text=excluded.text, format=excluded.format, version=excluded.version, "
                    "updated=excluded.updated, mac=excluded.mac"
                ),
                (path, text, fmt, version, int(time.time()), mac),
            )
            manifest.policies[path] = {"version": version, "mac": mac}
            self._write_manifest(db, manifest)

    def get_policy(self, path: str) -> tuple[str, str] | None:
        path = check_policy_key(path)

        def check(manifest: _Manifest, row: Any) -> str | None:
            entry = manifest.policies.get(path)
            if row is None and entry is None:
                return None
            if row is None or entry is None:
                return f"the policy of {path} was deleted or added behind the KBS"
            text, fmt, version, mac = str(row[0]), str(row[1]), int(row[2]), row[3]
            fields = self._policy_fields(path, version, fmt, text)
            if (
                version != entry["version"]
                or mac != entry["mac"]
                or not self._key.check_record_mac("policy", fields, mac)
            ):
                return f"the stored policy of {path} is not the one the KBS wrote"
            return None

        _, row = self._checked_read(
            "policy",
            "SELECT text, format, version, mac FROM kbs_policies WHERE path=?",
            path,
            check,
        )
        return None if row is None else (str(row[0]), str(row[1]))

    def delete_policy(self, path: str) -> None:
        path = check_policy_key(path)
        with self._write() as db:
            manifest = self._read_manifest(db)
            cursor = db.execute(self._sql("DELETE FROM kbs_policies WHERE path=?"), (path,))
            if cursor.rowcount == 0 and path not in manifest.policies:
                raise NotFound(f"no policy for {path}")
            manifest.policies.pop(path, None)
            self._write_manifest(db, manifest)

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
        with self._write() as db:
            row = db.execute(
                self._sql(f"SELECT {AUDIT_COLUMNS} FROM kbs_audit ORDER BY seq DESC LIMIT 1")
            ).fetchone()
            if row is None:
                seq, prev = 1, GENESIS_HASH
            else:
                tail = self._authentic_tail(row)
                seq, prev = tail.seq + 1, tail.hash
            if seq <= self._audit_seq:
                self._tampered(
                    "audit",
                    f"the audit log was truncated (it ends at {seq - 1}, this KBS wrote "
                    f"{self._audit_seq})",
                )
            fields["seq"] = seq
            fields["prev_hash"] = prev
            fields["hash"] = audit_hash(fields)
            fields["mac"] = self._key.audit_mac(fields["hash"])
            db.execute(
                self._sql(
                    f"INSERT INTO kbs_audit({AUDIT_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
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
                    prev,
                    fields["hash"],
                    fields["mac"],
                ),
            )
            self._audit_seq = seq
        return AuditRecord(**fields)

    def _authentic_tail(self, row: tuple[Any, ...]) -> AuditRecord:
        try:
            tail = record_from_row(tuple(row))
        except (json.JSONDecodeError, TypeError, ValueError):
            self._tampered("audit", "the last audit record is unreadable")
        if tail.computed_hash() != tail.hash or not self._key.check_audit_mac(tail.hash, tail.mac):
            self._tampered("audit", f"audit record {tail.seq} fails authentication")
        return tail

    def audit_records(
        self, *, resource: str | None = None, since_seq: int = 0, limit: int = 1000
    ) -> list[AuditRecord]:
        query = f"SELECT {AUDIT_COLUMNS} FROM kbs_audit WHERE seq > ?"
        args: list[Any] = [int(since_seq)]
        if resource:
            query += " AND resource = ?"
            args.append(resource)
        query += " ORDER BY seq LIMIT ?"
        args.append(max(1, min(int(limit), 100_000)))
        return [record_from_row(tuple(r)) for r in self._query(query, tuple(args))]

    def check_records(self, records: list[AuditRecord]) -> ChainStatus:
        """Authenticate a page of records (their hashes and MACs, and the chain between
        consecutive ones): cost proportional to the page, not the log."""
        checked = 0
        previous: AuditRecord | None = None
        for record in records:
            if record.computed_hash() != record.hash:
                return ChainStatus(False, checked, record.seq, "hash does not match the record")
            if not self._key.check_audit_mac(record.hash, record.mac):
                return ChainStatus(
                    False, checked, record.seq, "MAC does not verify under the master key"
                )
            chained = previous is not None and previous.seq + 1 == record.seq
            if chained and record.prev_hash != previous.hash:  # type: ignore[union-attr]
                return ChainStatus(False, checked, record.seq, "prev_hash does not chain")
            previous = record
            checked += 1
        return ChainStatus(True, checked)

    def verify_chain(self) -> ChainStatus:
        """The whole log with MACs and stored checkpoints' hashes, streamed page by page."""
        verifier = ChainVerifier(mac_ok=self._key.check_audit_mac)
        for row in audit_rows(self._query):
            verifier.add_row(row)
            if not verifier.ok:
                break
        return verifier.status()

    def put_checkpoint(self, seq: int, record_hash: str, signed: str) -> None:
        with self._write() as db:
            db.execute(
                self._sql(
                    "INSERT INTO kbs_checkpoints(seq, hash, signed) VALUES (?, ?, ?) "
                    "ON CONFLICT(seq) DO NOTHING"
                ),
                (int(seq), record_hash, signed),
            )

    def latest_checkpoint(self) -> tuple[int, str, str] | None:
        rows = self._query(
            "SELECT seq, hash, signed FROM kbs_checkpoints ORDER BY seq DESC LIMIT 1"
        )
        return None if not rows else (int(rows[0][0]), str(rows[0][1]), str(rows[0][2]))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class SqliteStore(SqlStore):
    """The store in one SQLite file (created with mode 0600 if missing)."""

    def __init__(self, path: str | os.PathLike[str], master_key: MasterKey) -> None:
        dialect = SqliteDialect(path)
        self.path = dialect.path
        super().__init__(dialect, master_key)


class PostgresStore(SqlStore):
    """The store in a PostgreSQL database (`postgresql://...`; needs psycopg)."""

    def __init__(self, url: str, master_key: MasterKey) -> None:
        super().__init__(PostgresDialect(url), master_key)


def open_store(location: str, master_key: MasterKey) -> SqlStore:
    """A store by location: `postgresql://...` (or `postgres://`) → PostgreSQL, a
    `sqlite:///path` URL or a plain file path → SQLite."""
    dialect = dialect_for(location)
    if isinstance(dialect, SqliteDialect):
        return SqliteStore(dialect.path, master_key)
    return SqlStore(dialect, master_key)


Query = Callable[[str, tuple[Any, ...]], list[Any]]


def audit_rows(query: Query, after_seq: int = 0) -> Iterator[tuple[Any, ...]]:
    """Audit rows after `after_seq` in order, fetched `_PAGE` at a time (keyset pagination:
    constant memory however long the log)."""
    while True:
        page = query(
            f"SELECT {AUDIT_COLUMNS} FROM kbs_audit WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, _PAGE),
        )
        if not page:
            return
        for row in page:
            yield tuple(row)
        after_seq = int(page[-1][0])


def checkpoint_rows(query: Query, after_seq: int = 0) -> Iterator[tuple[int, str, str]]:
    while True:
        page = query(
            "SELECT seq, hash, signed FROM kbs_checkpoints WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, _PAGE),
        )
        if not page:
            return
        for row in page:
            yield int(row[0]), str(row[1]), str(row[2])
        after_seq = int(page[-1][0])


class AuditReader:
    """The audit log and its checkpoints, read-only and without the master key (offline
    verification). Streams in pages of `_PAGE` rows by `seq` (keyset pagination), so memory
    stays constant however long the log."""

    def __init__(self, location: str) -> None:
        self._dialect = dialect_for(location, create=False)
        self._db = self._dialect.connect()
        self._lock = threading.Lock()
        tables = self._dialect.tables(self._db)
        if is_old_schema(tables):
            self._db.close()
            raise OldSchema(old_schema_message(self._dialect))
        if "kbs_audit" not in tables:
            self._db.close()
            raise InvalidArgument(f"{self._dialect.describe()} holds no KBS audit log")

    def _query(self, statement: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return list(self._db.execute(self._dialect.sql(statement), args).fetchall())

    def rows(self, after_seq: int = 0) -> Iterator[tuple[Any, ...]]:
        return audit_rows(self._query, after_seq)

    def checkpoints(self, after_seq: int = 0) -> Iterator[tuple[int, str, str]]:
        return checkpoint_rows(self._query, after_seq)

    def record_hash(self, seq: int) -> str | None:
        rows = self._query("SELECT hash FROM kbs_audit WHERE seq = ?", (int(seq),))
        return str(rows[0][0]) if rows else None

    def close(self) -> None:
        with self._lock:
            self._db.close()
