"""Offline verification of a KBS audit log (`sealserve kbs audit verify`): read straight from
the database (SQLite file or PostgreSQL URL) with the KBS's *public* key, streaming page by
page from the genesis or from a signed checkpoint kept elsewhere.

What holds after `ok`: the hash chain is intact from the starting point to the last record;
every stored checkpoint on the way carries a valid signature of the KBS and names the record
the log holds at its position; with `--from-checkpoint`, the log still contains the record
that checkpoint signed (so it was neither rewritten nor truncated before it). Records after
the last checkpoint are covered by the hash chain only — unless `master_key` is given, then
every record's MAC is checked as well.

Reads only; thread-safe as far as its callers share nothing.
"""

from __future__ import annotations

from joserfc.jwk import ECKey

from sealserve.errors import InvalidArgument
from sealserve.kbs.audit import GENESIS_HASH, ChainStatus, ChainVerifier, read_checkpoint
from sealserve.kbs.sealing import MasterKey
from sealserve.kbs.store import AuditReader


def load_public_key(pem: bytes) -> ECKey:
    """The KBS's signing key as a public key (a public or a private PEM is accepted)."""
    try:
        key = ECKey.import_key(pem)
    except ValueError as err:
        raise InvalidArgument(f"not an EC key PEM: {err}") from None
    return ECKey.import_key(key.as_pem(private=False))


def verify_audit_log(
    location: str,
    public_key: ECKey,
    *,
    from_checkpoint: str | None = None,
    master_key: MasterKey | None = None,
) -> ChainStatus:
    reader = AuditReader(location)
    try:
        start_seq, start_hash = 1, GENESIS_HASH
        if from_checkpoint is not None:
            try:
                point = read_checkpoint(from_checkpoint, public_key)
            except ValueError as err:
                raise InvalidArgument(f"the given checkpoint is not valid: {err}") from None
            stored = reader.record_hash(point.seq)
            if stored != point.hash:
                state = "is missing (the log was truncated)" if stored is None else "differs"
                return ChainStatus(
                    False, 0, point.seq, f"record {point.seq} of the signed checkpoint {state}"
                )
            start_seq, start_hash = point.seq + 1, point.hash
        verifier = ChainVerifier(
            start_seq=start_seq,
            start_hash=start_hash,
            mac_ok=master_key.check_audit_mac if master_key is not None else None,
            public_key=public_key,
        )
        checkpoints = reader.checkpoints(after_seq=start_seq - 1)
        pending = next(checkpoints, None)
        for row in reader.rows(after_seq=start_seq - 1):
            verifier.add_row(row)
            if not verifier.ok:
                break
            seq = int(row[0])
            while pending is not None and pending[0] <= seq:
                verifier.checkpoint(*pending)
                pending = next(checkpoints, None)
        status = verifier.status()
        if status.ok and pending is not None:  # a signed checkpoint beyond the log's end
            return ChainStatus(
                False,
                status.records,
                pending[0],
                f"the log ends before its signed checkpoint at {pending[0]} (truncated)",
            )
        return status
    finally:
        reader.close()
