"""The errors of attestation: evidence that does not verify, and evidence that cannot be had.

Code choices (gRPC's canonical codes, see `sealserve.errors`):

- `AttestationFailed` is **UNAUTHENTICATED**: the evidence could not be authenticated (a bad
  signature, a broken certificate chain, expired or mismatched collateral, a debug enclave that
  dcap-qvl refuses, a malformed quote). Nothing is known about the peer, which is what
  UNAUTHENTICATED means; PERMISSION_DENIED is kept for the *policy* saying no to an
  authenticated TEE (`policy.Decision.raise_if_denied` raises `AttestationDenied`).
- `AttestationUnavailable` is **UNAVAILABLE**: collateral could not be fetched (PCCS down),
  a retry may succeed.

Messages are one line and carry dcap-qvl's reason ("quote verification failed: QE Identity
expired"); the reason alone is in `.reason` for audit records. None of them contains a secret:
quotes, collateral and claims are public data.
"""

from __future__ import annotations

from sealserve.errors import Code, PermissionDenied, SealserveError


class AttestationFailed(SealserveError):
    """Evidence did not verify. `reason` is the verifier's own words (one line)."""

    code = Code.UNAUTHENTICATED

    def __init__(self, message: str, *, reason: str | None = None, code: Code | None = None):
        super().__init__(message, code=code)
        self.reason = reason if reason is not None else message


class AttestationDenied(PermissionDenied):
    """Evidence verified, but the attestation policy does not accept the TEE it describes."""

    def __init__(self, message: str, *, reasons: tuple[str, ...] = ()):
        super().__init__(message)
        self.reasons = reasons


class AttestationUnavailable(SealserveError):
    """Collateral (or a quote) could not be obtained right now; retrying may help."""

    code = Code.UNAVAILABLE


class AttestationUnsupported(SealserveError):
    """This kind of TEE or evidence cannot be attested or verified by sealserve."""

    code = Code.UNIMPLEMENTED


def one_line(err: BaseException) -> str:
    """An error's text on one line: dcap-qvl's multi-line "Caused by:" chains are joined
    with "; " (messages are one line, DESIGN.md)."""
    lines = [line.strip() for line in str(err).splitlines()]
    parts = [line for line in lines if line and line != "Caused by:"]
    return "; ".join(parts) if parts else type(err).__name__
