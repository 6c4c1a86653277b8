"""What differs between the KBS's two SQL databases — SQLite (stdlib `sqlite3`, one file) and
PostgreSQL (`psycopg`, replicated deployments) — so that `store.SqlStore` is one SQL
implementation: connecting, and one table of the statements that differ (`Statements`: the
placeholder style, the byte-string type, how a write transaction starts and how writers are
serialised, how tables are listed); everything else is shared (`_SqlDialect`).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealserve.errors import Code, FailedPrecondition, SealserveError
from sealserve.fsio import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE

_WRITE_LOCK_ID = 0x5EA15E4B  # pg_advisory_xact_lock key serialising KBS writes


@dataclass(frozen=True)
class Statements:
    """The statements in which the two databases differ; all others are shared."""

    placeholder: str  # psycopg takes %s where sqlite3 (and `store`'s SQL) takes ?
    blob: str  # the type of a byte string column
    begin_write: tuple[str, ...]  # start a transaction that holds the one writer's lock
    list_tables: str  # the names of the tables in the database (one column)


SQLITE = Statements(
    placeholder="?",
    blob="BLOB",
    begin_write=("BEGIN IMMEDIATE",),  # one writer per file
    list_tables="SELECT name FROM sqlite_master WHERE type='table'",
)
POSTGRESQL = Statements(
    placeholder="%s",
    blob="BYTEA",
    # several KBS replicas on one database: a transaction-scoped advisory lock
    begin_write=("BEGIN", f"SELECT pg_advisory_xact_lock({_WRITE_LOCK_ID})"),
    list_tables="SELECT tablename FROM pg_tables WHERE schemaname = current_schema()",
)


class _SqlDialect:
    """What both databases do alike, from their `Statements`; subclasses connect."""

    name: str
    statements: Statements

    @property
    def blob(self) -> str:
        return self.statements.blob

    def sql(self, statement: str) -> str:
        return statement.replace("?", self.statements.placeholder)

    def begin_write(self, db: Any) -> None:
        for statement in self.statements.begin_write:
            db.execute(statement)

    @staticmethod
    def commit(db: Any) -> None:
        db.execute("COMMIT")

    @staticmethod
    def rollback(db: Any) -> None:
        db.execute("ROLLBACK")

    def tables(self, db: Any) -> set[str]:
        rows = db.execute(self.statements.list_tables).fetchall()
        return {str(r[0]) for r in rows}


class SqliteDialect(_SqlDialect):
    name = "sqlite"
    statements = SQLITE

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


class PostgresDialect(_SqlDialect):
    name = "postgresql"
    statements = POSTGRESQL

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
