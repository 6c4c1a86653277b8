"""Claims: what a verified quote says about the TEE that produced it, as plain values.

A `Claims` is produced only by `verify.verify_quote` after dcap-qvl has verified the quote, so
every field is authenticated. Fields that do not apply to the TEE type are `None` (an SGX
enclave has no `mr_td`, a TD no `mr_enclave`). Measurements are lower-case hex; `report_data`
is the raw 64 bytes the attester bound to the quote.

`tee` is "sgx" or "tdx" when the quote chains to Intel's SGX root CA, and "sim" when it was
verified against any other root (a simulated TEE, see `attestation.sim`) whatever the quote's
format: the trust anchor, not the quote, decides whether the hardware is real.

Immutable and thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

TEE_TYPES = ("sgx", "tdx", "sim")

#: dcap-qvl's TCB status names (Intel's TCB Info `tcbStatus` values).
TCB_STATUSES = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)


@dataclass(frozen=True)
class Claims:
    tee: str
    quote_version: int
    tcb_status: str
    advisory_ids: tuple[str, ...]
    report_data: bytes
    debug: bool
    fmspc: str
    #: the matched platform TCB level's `tcbDate` (unix seconds); None if unknown
    tcb_date: int | None = None
    #: the Quoting Enclave's own TCB status (QE Identity); None if unknown
    qe_tcb_status: str | None = None
    #: when the collateral verified against was issued: the older of the TCB Info's and the
    #: QE Identity's `issueDate` (unix seconds); None if unknown
    collateral_issued_at: int | None = None
    # SGX enclave report (also the simulated TEE)
    mr_enclave: str | None = None
    mr_signer: str | None = None
    isv_prod_id: int | None = None
    isv_svn: int | None = None
    attributes: str | None = None
    # TDX TD report
    mr_td: str | None = None
    mr_seam: str | None = None
    mr_config_id: str | None = None
    mr_owner: str | None = None
    mr_owner_config: str | None = None
    rtmr0: str | None = None
    rtmr1: str | None = None
    rtmr2: str | None = None
    rtmr3: str | None = None
    td_attributes: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict for printing and audit records (bytes as hex, tuples as lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bytes):
                value = value.hex()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def format_time(unix: int) -> str:
    """RFC 3339 UTC ("2025-07-19T10:01:18Z"), the form Intel's collateral uses."""
    return datetime.fromtimestamp(unix, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
