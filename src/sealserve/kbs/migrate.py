"""`sealserve kbs migrate`: upgrade a schema-1 KBS store to schema 2 (`kbs.store`) in place.

Schema 1 authenticated secrets by path only and kept policies and the audit chain without any
MAC. The upgrade trusts the old database only as far as it can check it: the old audit
chain must verify (else nothing is changed), every secret must decrypt under the master key.
Then, in one transaction: secrets are re-encrypted bound to (path, version), policies get
their MAC, audit records keep their hashes and get their MACs, the manifest is written, a
checkpoint of the chain's head is signed with the KBS's signing key, and the old tables are
dropped. A crash midway leaves the old store as it was.

The migrated policies are only as trustworthy as the old database was: review them
(`sealserve kbs policy show`) after upgrading.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import rfc8785
from joserfc.jwk import ECKey

from sealserve.errors import DataLoss, FailedPrecondition
from sealserve.kbs.audit import AUDIT_COLUMNS, sign_checkpoint, verify_records
from sealserve.kbs.dialects import SqliteDialect, dialect_for
from sealserve.kbs.sealing import MasterKey
from sealserve.kbs.store import SCHEMA_VERSION, _schema, is_old_schema

_OLD_AUDIT_COLUMNS = AUDIT_COLUMNS.replace(", mac", "")


@dataclass(frozen=True)
class Migrated:
    resources: int
    policies: int
    audit_records: int


def migrate_store(location: str, master_key: MasterKey, signing_key: ECKey) -> Migrated:
    dialect = dialect_for(location, create=False)
    sql = dialect.sql
    db = dialect.connect()
    try:
        tables = dialect.tables(db)
        if not is_old_schema(tables):
            raise FailedPrecondition(
                f"KBS database {dialect.describe()} is not in the old format: nothing to migrate"
            )
        old = (
            {"resources": "resources", "policies": "policies", "audit": "audit"}
            if isinstance(dialect, SqliteDialect)
            else {k: f"kbs_v1_{k}" for k in ("resources", "policies", "audit")}
        )
        dialect.begin_write(db)
        try:
            if not isinstance(dialect, SqliteDialect):  # same names in both schemas: rename
                for kind in ("resources", "policies", "audit"):
                    db.execute(f"ALTER TABLE kbs_{kind} RENAME TO {old[kind]}")
            counts = _copy(db, sql, dialect.blob, old, master_key, signing_key)
            for kind in ("resources", "policies", "audit"):
                db.execute(f"DROP TABLE {old[kind]}")
            if isinstance(dialect, SqliteDialect):
                db.execute("DROP TABLE IF EXISTS meta")
        except BaseException:
            dialect.rollback(db)
            raise
        dialect.commit(db)
        return counts
    finally:
        db.close()


def _copy(
    db: Any,
    sql: Any,
    blob_type: str,
    old: dict[str, str],
    key: MasterKey,
    signing_key: ECKey,
) -> Migrated:
    audit = [
        tuple(r)
        for r in db.execute(f"SELECT {_OLD_AUDIT_COLUMNS} FROM {old['audit']} ORDER BY seq")
    ]
    chain = verify_records(audit)
    if not chain.ok:
        raise DataLoss(
            f"the old audit log does not verify at record {chain.first_bad_seq} "
            f"({chain.reason}); refusing to vouch for this database"
        )
    resources = db.execute(
        f"SELECT path, ciphertext, version, size, updated FROM {old['resources']}"
    ).fetchall()
    policies = db.execute(f"SELECT path, text, format, updated FROM {old['policies']}").fetchall()
    for statement in _schema(blob_type):
        db.execute(statement)
    manifest: dict[str, Any] = {"generation": 1, "resources": {}, "policies": {}}
    for path, ciphertext, version, size, updated in resources:
        plaintext = key.open_legacy_resource(str(path), bytes(ciphertext))
        blob = key.seal_resource(str(path), int(version), plaintext)
        del plaintext
        db.execute(
            sql(
                "INSERT INTO kbs_resources(path, ciphertext, version, size, updated) "
                "VALUES (?, ?, ?, ?, ?)"
            ),
            (path, blob, int(version), int(size), int(updated)),
        )
        manifest["resources"][path] = {
            "version": int(version),
            "digest": hashlib.sha256(blob).hexdigest(),
        }
    for path, text, fmt, updated in policies:
        fields = {"path": path, "version": 1, "format": fmt, "text": text}
        mac = key.record_mac("policy", fields)
        db.execute(
            sql(
                "INSERT INTO kbs_policies(path, text, format, version, updated, mac) "
                "VALUES (?, ?, ?, ?, ?, ?)"
            ),
            (path, text, fmt, 1, int(updated), mac),
        )
        manifest["policies"][path] = {"version": 1, "mac": mac}
    for row in audit:
        db.execute(
            sql(f"INSERT INTO kbs_audit({AUDIT_COLUMNS}) VALUES ({', '.join('?' * 13)})"),
            (*row, key.audit_mac(str(row[11]))),
        )
    if audit:
        seq, head = int(audit[-1][0]), str(audit[-1][11])
        db.execute(
            sql("INSERT INTO kbs_checkpoints(seq, hash, signed) VALUES (?, ?, ?)"),
            (seq, head, sign_checkpoint(signing_key, seq, head, int(time.time()))),
        )
    meta = {
        "schema": SCHEMA_VERSION,
        "manifest": rfc8785.dumps(manifest).decode(),
        "manifest_mac": key.record_mac("manifest", manifest),
    }
    for name, value in meta.items():
        db.execute(sql("INSERT INTO kbs_meta(key, value) VALUES (?, ?)"), (name, value))
    return Migrated(len(resources), len(policies), len(audit))
