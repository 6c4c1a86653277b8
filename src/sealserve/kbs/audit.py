"""The KBS audit log as a tamper-evident chain: records, their hashes and MACs, signed
checkpoints, and a streaming verifier.

- Each record's `hash` is SHA-256 of the RFC 8785 canonical JSON of its fields including
  `prev_hash` (the previous record's hash; 64 zeros for the first): a public hash chain.
- Each record's `mac` is HMAC-SHA256 of its hash under a key derived from the master key
  (`MasterKey.audit_mac`): someone who rewrites a record and recomputes the chain cannot
  recompute the MACs. The KBS checks the MAC of the chain's tail before every append and of
  every record it shows.
- Every `CHECKPOINT_INTERVAL` records the KBS signs a checkpoint — `{seq, hash, time}` as a
  compact JWS (ES256) with its token-signing key — and stores it beside the log. Anyone with
  the KBS's *public* key can then verify the log offline (`sealserve kbs audit verify`):
  the hash chain from the genesis or from a checkpoint kept elsewhere, each stored
  checkpoint's signature and hash on the way. Records after the last checkpoint are covered
  by the hash chain only, unless the verifier also has the master key (MACs).

`ChainVerifier` consumes records one at a time (constant memory: stream rows in pages).
Truncating the tail is invisible to the chain itself; compare with a checkpoint kept outside
the database (`--from-checkpoint`) to detect it.

Pure; thread-safe (values and functions; a `ChainVerifier` belongs to one caller).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import rfc8785
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

GENESIS_HASH = "0" * 64
CHECKPOINT_INTERVAL = 100
_CHECKPOINT_TYPE = "sealserve-kbs-audit-checkpoint"

#: The columns of an audit row, in the order every query selects them.
AUDIT_COLUMNS = (
    "seq, time, session, tee, measurements, tcb_status, resource, action, decision, "
    "reason, prev_hash, hash, mac"
)


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
    mac: str = ""

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
            "mac": self.mac,
        }

    def computed_hash(self) -> str:
        return audit_hash(self.to_json())


def audit_hash(fields: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a record's fields (all but `hash` and `mac`)."""
    body = {k: v for k, v in fields.items() if k not in ("hash", "mac")}
    return hashlib.sha256(rfc8785.dumps(body)).hexdigest()


def record_from_row(row: tuple[Any, ...]) -> AuditRecord:
    """An audit row (columns in `AUDIT_COLUMNS` order) as a record."""
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
        mac=row[12] if len(row) > 12 else "",
    )


@dataclass(frozen=True)
class ChainStatus:
    ok: bool
    records: int
    first_bad_seq: int | None = None
    reason: str = ""
    checkpoints: int = 0
    last_checkpoint_seq: int = 0
    first_seq: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "checkpoints": self.checkpoints,
            "last_checkpoint_seq": self.last_checkpoint_seq,
        }


# --- checkpoints ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    hash: str
    time: int


def sign_checkpoint(key: ECKey, seq: int, record_hash: str, now: int) -> str:
    payload = rfc8785.dumps(
        {"typ": _CHECKPOINT_TYPE, "seq": int(seq), "hash": record_hash, "time": int(now)}
    )
    return jws.serialize_compact({"alg": "ES256"}, payload, key, algorithms=["ES256"])


def read_checkpoint(signed: str, public_key: ECKey) -> Checkpoint:
    """The checkpoint in `signed` if its ES256 signature verifies under `public_key`;
    ValueError otherwise."""
    try:
        obj = jws.deserialize_compact(signed.strip(), public_key, algorithms=["ES256"])
        data = json.loads(obj.payload)
        if data.get("typ") != _CHECKPOINT_TYPE:
            raise ValueError("not an audit checkpoint")
        return Checkpoint(seq=int(data["seq"]), hash=str(data["hash"]), time=int(data["time"]))
    except (JoseError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"the checkpoint's signature does not verify ({err})") from None


# --- verification --------------------------------------------------------------------------


class ChainVerifier:
    """Feed records in `seq` order (`add`), stored checkpoints as they come (`checkpoint`);
    `status()` says whether everything so far holds.

    `start_seq`/`start_hash`: where the stream begins (1 / genesis, or just after a trusted
    checkpoint). `mac_ok`: checks a record's MAC (with the master key), or None offline.
    `public_key`: verifies stored checkpoints, or None to ignore them."""

    def __init__(
        self,
        *,
        start_seq: int = 1,
        start_hash: str = GENESIS_HASH,
        mac_ok: Callable[[str, str], bool] | None = None,
        public_key: ECKey | None = None,
    ) -> None:
        self._expected_seq = start_seq
        self._prev = start_hash
        self._mac_ok = mac_ok
        self._public_key = public_key
        self._first_seq = start_seq
        self._count = 0
        self._checkpoints = 0
        self._last_checkpoint = 0
        self._bad: tuple[int, str] | None = None

    @property
    def ok(self) -> bool:
        return self._bad is None

    def _fail(self, seq: int, reason: str) -> None:
        if self._bad is None:
            self._bad = (seq, reason)

    def add_row(self, row: tuple[Any, ...]) -> None:
        try:
            record = record_from_row(row)
        except (json.JSONDecodeError, TypeError, ValueError, IndexError):
            self._fail(int(row[0]) if row and isinstance(row[0], int) else 0, "unreadable record")
            return
        self.add(record)

    def add(self, record: AuditRecord) -> None:
        if self._bad is not None:
            return
        if record.seq != self._expected_seq:
            self._fail(record.seq, f"record {self._expected_seq} is missing")
        elif record.prev_hash != self._prev:
            self._fail(record.seq, "prev_hash does not chain")
        elif record.computed_hash() != record.hash:
            self._fail(record.seq, "hash does not match the record")
        elif self._mac_ok is not None and not self._mac_ok(record.hash, record.mac):
            self._fail(record.seq, "MAC does not verify under the master key")
        else:
            self._prev = record.hash
            self._expected_seq += 1
            self._count += 1

    def checkpoint(self, seq: int, record_hash: str, signed: str) -> None:
        """A stored checkpoint, fed right after the record it names (same seq) was added."""
        if self._public_key is None or self._bad is not None:
            return
        try:
            point = read_checkpoint(signed, self._public_key)
        except ValueError as err:
            self._fail(seq, f"checkpoint at {seq}: {err}")
            return
        if point.seq != seq or point.hash != record_hash:
            self._fail(seq, f"checkpoint at {seq} was altered")
        elif seq != self._expected_seq - 1 or self._prev != point.hash:
            self._fail(seq, f"record {seq} differs from its signed checkpoint")
        else:
            self._checkpoints += 1
            self._last_checkpoint = seq

    def status(self) -> ChainStatus:
        bad_seq, reason = self._bad if self._bad is not None else (None, "")
        return ChainStatus(
            ok=self._bad is None,
            records=self._count,
            first_bad_seq=bad_seq,
            reason=reason,
            checkpoints=self._checkpoints,
            last_checkpoint_seq=self._last_checkpoint,
            first_seq=self._first_seq,
        )


def verify_records(rows: list[tuple[Any, ...]]) -> ChainStatus:
    """The unkeyed hash chain of a whole log, rows in `seq` order (schema 1's check; used by
    the migration before it vouches for an old log)."""
    verifier = ChainVerifier()
    for row in rows:
        verifier.add_row(row)
    return verifier.status()
