"""What differs between the KBS's two SQL databases — SQLite (stdlib `sqlite3`, one file) and
PostgreSQL (`psycopg`, replicated deployments) — so that `store.SqlStore` is one SQL
implementation: connecting, the placeholder style, a few type names, how a write
transaction starts and how writers are serialised.

SQL in `store` is written with `?` placeholders; `Dialect.sql()` rewrites them for psycopg
(`%s`). Our statements never contain a literal `?` or `%`.

Writers are serialised so the audit chain and the manifest stay linear: SQLite by
`BEGIN IMMEDIATE` (one writer per file), PostgreSQL by a transaction-scoped advisory lock
(several KBS replicas on one database). Durability: SQLite in WAL mode with
`synchronous=FULL`; PostgreSQL's own (`synchronous_commit` on, its default).

Not thread-safe by themselves: `SqlStore` guards its one connection with a lock.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from sealserve.errors import Code, FailedPrecondition, SealserveError
from sealserve.fsio import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE

_WRITE_LOCK_ID = 0x5EA15E4B  # pg_advisory_xact_lock key serialising KBS writes


class SqliteDialect:
    name = "sqlite"
    blob = "BLOB"

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        self._create = create

    def describe(self) -> str:
        return str(self.path)

    def connect(self) -> Any:
        if not self.path.exists():
            if not self._create:
                raise FailedPrecondition(f"KBS database {self.path} does not exist")
            self.path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, PRIVATE_FILE_MODE)
            os.close(fd)
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE ... COMMIT).
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    @staticmethod
    def sql(statement: str) -> str:
        return statement

    @staticmethod
    def begin_write(db: Any) -> None:
        db.execute("BEGIN IMMEDIATE")

    @staticmethod
    def commit(db: Any) -> None:
        db.execute("COMMIT")

    @staticmethod
    def rollback(db: Any) -> None:
        db.execute("ROLLBACK")

    @staticmethod
    def tables(db: Any) -> set[str]:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        return {str(r[0]) for r in rows}


class PostgresDialect:
    name = "postgresql"
    blob = "BYTEA"

    def __init__(self, url: str) -> None:
        self._url = url
        self._where = url.split("@")[-1]  # never the password

    def describe(self) -> str:
        return self._where

    def connect(self) -> Any:
        try:
            import psycopg
        except ImportError:
            raise FailedPrecondition(
                "a postgresql:// store needs psycopg: pip install 'sealserve[postgres]'"
            ) from None
        try:
            return psycopg.connect(self._url, autocommit=True, connect_timeout=10)
        except psycopg.Error as err:
            raise SealserveError(
                f"cannot connect to the KBS database {self._where}: {type(err).__name__}",
                code=Code.UNAVAILABLE,
            ) from None

    @staticmethod
    def sql(statement: str) -> str:
        return statement.replace("?", "%s")

    @staticmethod
    def begin_write(db: Any) -> None:
        db.execute("BEGIN")
        db.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK_ID,))

    @staticmethod
    def commit(db: Any) -> None:
        db.execute("COMMIT")

    @staticmethod
    def rollback(db: Any) -> None:
        db.execute("ROLLBACK")

    @staticmethod
    def tables(db: Any) -> set[str]:
        rows = db.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchall()
        return {str(r[0]) for r in rows}


Dialect = SqliteDialect | PostgresDialect


def dialect_for(location: str, *, create: bool = True) -> Dialect:
    """`postgresql://...` (or `postgres://`) → PostgreSQL; `sqlite:///path` or a path →
    SQLite."""
    from sealserve.errors import InvalidArgument

    if location.startswith(("postgresql://", "postgres://")):
        return PostgresDialect(location)
    if location.startswith("sqlite:///"):
        location = location[len("sqlite://") :]
    elif "://" in location:
        raise InvalidArgument(f"unknown KBS store URL scheme in {location.split('://')[0]}://")
    return SqliteDialect(location, create=create)
