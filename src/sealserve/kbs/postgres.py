"""The PostgreSQL store: `KbsStore` for replicated deployments (`postgresql://...` URLs).

Same invariants as `store.SqliteStore` — secrets AES-256-GCM-encrypted under the master key
with the resource path as AAD, one transaction per write, the same hash-chained audit log
(records hash identically, so `verify_chain` means the same on either backend). Appends to the
audit log are serialised across KBS replicas with a transaction-scoped advisory lock, so the
chain stays linear when several KBS processes share one database. Durability is the server's
(`synchronous_commit` on, its default).

Needs `psycopg` (the `postgres` extra). Thread safety: one connection guarded by a lock.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sealserve.errors import Code, FailedPrecondition, InvalidArgument, NotFound, SealserveError
from sealserve.kbs.protocol import check_resource_path
from sealserve.kbs.store import (
    GENESIS_HASH,
    AuditRecord,
    ChainStatus,
    MasterKey,
    ResourceInfo,
    audit_hash,
    check_policy_key,
    verify_records,
)

_AUDIT_LOCK_ID = 0x5EA15E4B  # pg_advisory_xact_lock key serialising audit appends
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS kbs_resources (
        path TEXT PRIMARY KEY, ciphertext BYTEA NOT NULL, version BIGINT NOT NULL,
        size BIGINT NOT NULL, updated BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS kbs_policies (
        path TEXT PRIMARY KEY, text TEXT NOT NULL, format TEXT NOT NULL,
        updated BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS kbs_audit (
        seq BIGINT PRIMARY KEY, time BIGINT NOT NULL, session TEXT NOT NULL,
        tee TEXT NOT NULL, measurements TEXT NOT NULL, tcb_status TEXT NOT NULL,
        resource TEXT NOT NULL, action TEXT NOT NULL, decision TEXT NOT NULL,
        reason TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
)
_AUDIT_COLUMNS = (
    "seq, time, session, tee, measurements, tcb_status, resource, action, decision, "
    "reason, prev_hash, hash"
)


class PostgresStore:
    def __init__(self, url: str, master_key: MasterKey) -> None:
        try:
            import psycopg
        except ImportError:
            raise FailedPrecondition(
                "a postgresql:// store needs psycopg: pip install 'sealserve[postgres]'"
            ) from None
        self._key = master_key
        self._lock = threading.Lock()
        self._url_for_messages = url.split("@")[-1]  # never the password
        try:
            self._db = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as err:
            raise SealserveError(
                f"cannot connect to the KBS database {self._url_for_messages}: "
                f"{type(err).__name__}",
                code=Code.UNAVAILABLE,
            ) from None
        with self._tx() as db:
            for statement in _SCHEMA:
                db.execute(statement)

    def __repr__(self) -> str:
        return f"PostgresStore({self._url_for_messages!r})"

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock, self._db.transaction():
            yield self._db

    def put_resource(self, path: str, value: bytes) -> ResourceInfo:
        path = check_resource_path(path)
        if not isinstance(value, bytes | bytearray) or not value:
            raise InvalidArgument("a resource value must be non-empty bytes")
        blob = self._key.encrypt(path, bytes(value))
        now = int(time.time())
        with self._tx() as db:
            row = db.execute(
                "INSERT INTO kbs_resources(path, ciphertext, version, size, updated) "
                "VALUES (%s, %s, 1, %s, %s) ON CONFLICT(path) DO UPDATE SET "
                "ciphertext=excluded.ciphertext, version=kbs_resources.version + 1, "
                "size=excluded.size, updated=excluded.updated RETURNING version",
                (path, blob, len(value), now),
            ).fetchone()
        return ResourceInfo(path=path, version=int(row[0]), size=len(value), updated=now)

    def get_resource(self, path: str) -> bytes:
        path = check_resource_path(path)
        with self._lock:
            row = self._db.execute(
                "SELECT ciphertext FROM kbs_resources WHERE path=%s", (path,)
            ).fetchone()
        if row is None:
            raise NotFound(f"resource {path} not found")
        return self._key.decrypt(path, bytes(row[0]))

    def resource_exists(self, path: str) -> bool:
        path = check_resource_path(path)
        with self._lock:
            row = self._db.execute("SELECT 1 FROM kbs_resources WHERE path=%s", (path,)).fetchone()
        return row is not None

    def delete_resource(self, path: str) -> None:
        path = check_resource_path(path)
        with self._tx() as db:
            if db.execute("DELETE FROM kbs_resources WHERE path=%s", (path,)).rowcount == 0:
                raise NotFound(f"resource {path} not found")

    def list_resources(self) -> list[ResourceInfo]:
        with self._lock:
            rows = self._db.execute(
                "SELECT path, version, size, updated FROM kbs_resources ORDER BY path"
            ).fetchall()
        return [ResourceInfo(path=r[0], version=r[1], size=r[2], updated=r[3]) for r in rows]

    def set_policy(self, path: str, text: str, fmt: str) -> None:
        path = check_policy_key(path)
        if fmt not in ("toml", "json"):
            raise InvalidArgument("policy format must be toml or json")
        with self._tx() as db:
            db.execute(
                "INSERT INTO kbs_policies(path, text, format, updated) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT(path) DO UPDATE SET text=excluded.text, format=excluded.format, "
                "updated=excluded.updated",
                (path, text, fmt, int(time.time())),
            )

    def get_policy(self, path: str) -> tuple[str, str] | None:
        path = check_policy_key(path)
        with self._lock:
            row = self._db.execute(
                "SELECT text, format FROM kbs_policies WHERE path=%s", (path,)
            ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def delete_policy(self, path: str) -> None:
        path = check_policy_key(path)
        with self._tx() as db:
            if db.execute("DELETE FROM kbs_policies WHERE path=%s", (path,)).rowcount == 0:
                raise NotFound(f"no policy for {path}")

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
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_AUDIT_LOCK_ID,))
            row = db.execute("SELECT seq, hash FROM kbs_audit ORDER BY seq DESC LIMIT 1").fetchone()
            fields["seq"] = 1 if row is None else int(row[0]) + 1
            fields["prev_hash"] = GENESIS_HASH if row is None else str(row[1])
            fields["hash"] = audit_hash(fields)
            db.execute(
                f"INSERT INTO kbs_audit({_AUDIT_COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    fields["seq"],
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

    def audit_records(
        self, *, resource: str | None = None, since_seq: int = 0, limit: int = 1000
    ) -> list[AuditRecord]:
        query = f"SELECT {_AUDIT_COLUMNS} FROM kbs_audit WHERE seq > %s"
        args: list[Any] = [since_seq]
        if resource:
            query += " AND resource = %s"
            args.append(resource)
        query += " ORDER BY seq LIMIT %s"
        args.append(max(1, min(int(limit), 100_000)))
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [_record(tuple(r)) for r in rows]

    def verify_chain(self) -> ChainStatus:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM kbs_audit ORDER BY seq"
            ).fetchall()
        return verify_records([tuple(r) for r in rows])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _record(row: tuple[Any, ...]) -> AuditRecord:
    from sealserve.kbs.store import record_from_row

    return record_from_row(row)
