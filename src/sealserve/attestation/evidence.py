"""Evidence and the `Attester` protocol: how a server inside a TEE proves what it is.

An attester binds 64 bytes of caller-chosen `report_data` (the KBS protocol puts a hash of
its nonce and the server's ephemeral public key there) into a hardware-signed quote. The
quote is public: it carries no secret, and may be logged or sent anywhere.

Immutable values; the protocol says nothing about thread safety (each attester documents its
own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from sealserve.errors import InvalidArgument

REPORT_DATA_SIZE = 64


@dataclass(frozen=True)
class Evidence:
    """A quote and the TEE type that produced it ("sgx", "tdx" or "sim")."""

    tee: str
    quote: bytes

    def __repr__(self) -> str:
        return f"Evidence(tee={self.tee!r}, quote=<{len(self.quote)} bytes>)"


class Attester(Protocol):
    """Something that can quote: Gramine's /dev/attestation, configfs-tsm, the simulator."""

    tee: str

    def evidence(self, report_data: bytes) -> Evidence:
        """A quote whose report data is exactly these 64 bytes."""
        ...


def check_report_data(report_data: bytes) -> bytes:
    report_data = bytes(report_data)
    if len(report_data) != REPORT_DATA_SIZE:
        raise InvalidArgument(
            f"report_data must be exactly {REPORT_DATA_SIZE} bytes, not {len(report_data)} "
            "(pad a hash with zeros)"
        )
    return report_data
