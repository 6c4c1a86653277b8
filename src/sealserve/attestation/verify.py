"""Quote verification with dcap-qvl, normalised into `Claims`.

`verify_quote(quote, collateral, now=..., root_ca_der=None)` runs dcap-qvl's full DCAP
verification — quote and QE report signatures, the QE report's binding of the attestation key
(`report_data[0:32] = SHA-256(attestation key || QE auth data)`), the PCK certificate chain up
to the root, CRLs, the TCB Info and QE Identity signatures and their validity window at `now`,
the QE identity, the TCB level match — and rejects debug enclaves / debug TDs. It does not
judge the TCB status (beyond Revoked): that is `policy.Policy.decide`'s job.

Which dcap-qvl call: `QuoteVerifier(root_ca_der).verify_with_policy(quote, collateral, now,
QuotePolicy.claims_only(now))`. In dcap-qvl 0.7 this runs the very same verification as
`dcap_qvl.verify` (Intel root) / `dcap_qvl.verify_with_root_ca` (explicit root) — both are
thin wrappers over one `verify_impl`, and the tests check the two agree on every vector — and
additionally returns the matched TCB level's date (`tcbDate`), which the policy's grace period
needs and `VerifiedReport` does not carry. `claims_only` applies no TCB policy. On failure
the one-shot call is repeated only to get dcap-qvl's full reason (the claims API drops the
cause: "Failed to verify certificate chain" instead of "...; CrlExpired {...}").

Trust anchors and the simulated TEE: with `root_ca_der=None` (or Intel's root given
explicitly) the quote must chain to Intel's SGX Provisioning Certification Root CA and the
claims' `tee` is the quote's ("sgx" / "tdx"). Any other root marks the claims `tee="sim"`: the
quote is then evidence of a *simulated* TEE only, which a policy accepts only when it lists
"sim" explicitly. Verifying against a non-Intel root logs a warning.

Every failure is an `AttestationFailed` (UNAUTHENTICATED) whose message carries dcap-qvl's
reason on one line, e.g. "quote verification failed: QE Identity expired". Never a traceback.

Pure apart from logging; thread-safe (dcap-qvl releases nothing shared).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from datetime import datetime
from typing import Any

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sealserve.attestation.claims import TEE_TYPES, Claims
from sealserve.attestation.collateral import Collateral
from sealserve.attestation.errors import AttestationFailed, one_line
from sealserve.errors import InvalidArgument

log = logging.getLogger(__name__)

#: SHA-256 of the DER of Intel's SGX Provisioning Certification Root CA (the root dcap-qvl
#: builds in: `src/TrustedRootCA.der`; also `tests/vectors/dcap/Intel_SGX_...RootCA.der`).
INTEL_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"

# SGX ATTRIBUTES.FLAGS bit 1 (Intel SDM Vol. 3D, 34.7.1 "ATTRIBUTES"): the enclave is
# debuggable. TDX TD_ATTRIBUTES bit 0 (Intel TDX Module ABI spec, "TD_ATTRIBUTES"): DEBUG.
_SGX_FLAG_DEBUG = 1 << 1
_TD_ATTRIBUTE_DEBUG = 1 << 0

# The report variants of dcap-qvl's `Report` enum (serde names) and the TEE they belong to.
_REPORT_KINDS = {"SgxEnclave": "sgx", "TD10": "tdx", "TD15": "tdx", "TD15Ex": "tdx"}


def is_intel_root(root_ca_der: bytes | None) -> bool:
    return root_ca_der is None or hashlib.sha256(root_ca_der).hexdigest() == INTEL_ROOT_CA_SHA256


def verify_quote(
    quote: bytes,
    collateral: Collateral,
    *,
    now: int,
    root_ca_der: bytes | None = None,
    tee_hint: str | None = None,
) -> Claims:
    """Verify `quote` against `collateral` at unix time `now` and return its claims.

    `root_ca_der`: the trust anchor; None means Intel's root (production). Any other root
    yields `tee="sim"` claims. `tee_hint`: the TEE type the evidence claimed to be ("sgx",
    "tdx", "sim"); if given, it must match what verification found.
    """
    if not isinstance(quote, bytes | bytearray | memoryview):
        raise InvalidArgument("quote must be bytes")
    if isinstance(now, bool) or not isinstance(now, int) or not 0 <= now < 1 << 63:
        raise InvalidArgument("now must be a non-negative integer of unix seconds")
    if tee_hint is not None and tee_hint not in TEE_TYPES:
        raise InvalidArgument(f"unknown TEE type {tee_hint!r} (expected one of {TEE_TYPES})")
    intel = is_intel_root(root_ca_der)
    if not intel:
        _warn_non_intel_root(hashlib.sha256(root_ca_der or b"").hexdigest()[:16])
    raw = bytes(quote)
    root = None if intel else bytes(root_ca_der or b"")
    try:
        result = dcap_qvl.QuoteVerifier(root).verify_with_policy(
            raw, collateral.dcap, now, dcap_qvl.QuotePolicy.claims_only(now)
        )
        data = json.loads(result.to_json())
    except (ValueError, TypeError, OverflowError) as err:  # dcap-qvl raises ValueError
        reason = _failure_reason(err, raw, collateral, now, root)
        raise AttestationFailed(f"quote verification failed: {reason}", reason=reason) from None
    claims = _normalise(data, sim=not intel, collateral_issued_at=_issued_at(collateral))
    if tee_hint is not None and tee_hint != claims.tee:
        reason = f"the evidence says tee {tee_hint} but the quote verified as {claims.tee}"
        raise AttestationFailed(f"quote verification failed: {reason}", reason=reason)
    return claims


def _failure_reason(
    err: Exception, raw: bytes, collateral: Collateral, now: int, root: bytes | None
) -> str:
    """dcap-qvl's reason for a failure, on one line.

    dcap-qvl 0.7's claims API reports only the outermost error ("Failed to verify certificate
    chain"); its one-shot API keeps the cause ("...; CrlExpired { ... }"). Failures are the
    rare path, so the one-shot call is repeated there for the operator's sake.

    A quote whose PCK chain ends at another root than the trust anchor fails deep inside
    dcap-qvl with a cryptic CRL signature error; that case is said in our words instead."""
    wrong_root = _foreign_root(raw, root)
    if wrong_root is not None:
        return wrong_root
    try:
        if root is None:
            dcap_qvl.verify(raw, collateral.dcap, now)
        else:
            dcap_qvl.verify_with_root_ca(raw, collateral.dcap, root, now)
    except (ValueError, TypeError, OverflowError) as detailed:
        err = detailed
    text = one_line(err)
    prefix = "Verification failed: "
    return text[len(prefix) :] if text.startswith(prefix) else text


def _foreign_root(raw: bytes, root: bytes | None) -> str | None:
    """Why the quote cannot verify when its own chain names another root than `root` (None:
    Intel's), else None. The chain's root is only read here, never trusted."""
    quote_root = pck_root_der(raw)
    if quote_root is None:
        return None
    quote_fp = hashlib.sha256(quote_root).hexdigest()
    anchor_fp = INTEL_ROOT_CA_SHA256 if root is None else hashlib.sha256(root).hexdigest()
    if quote_fp == anchor_fp:
        return None
    anchor = (
        "Intel's SGX root CA" if root is None else f"the root CA given (sha256 {anchor_fp[:16]})"
    )
    return (
        f"the quote's certificate chain leads to root CA sha256 {quote_fp[:16]}, not to the "
        f"trust anchor, {anchor}"
    )


def _issued_at(collateral: Collateral) -> int | None:
    """The older `issueDate` of the TCB Info and QE Identity (authenticated: dcap-qvl has just
    verified both signatures), for the policy's maximum collateral age."""
    try:
        dates = [
            json.loads(text)["issueDate"]
            for text in (collateral.dcap.tcb_info, collateral.dcap.qe_identity)
        ]
        return min(int(datetime.fromisoformat(d.replace("Z", "+00:00")).timestamp()) for d in dates)
    except (KeyError, ValueError, TypeError, AttributeError):
        return None  # the policy then denies: an unknown age is not a young one


def _normalise(data: dict[str, Any], *, sim: bool, collateral_issued_at: int | None) -> Claims:
    """dcap-qvl's `QuoteClaims` JSON → `Claims`. Field names follow dcap-qvl's serde output
    (`report: {SgxEnclave | TD10 | TD15 | TD15Ex: {...}}`, TD15 nesting its TD10 fields
    under `base`)."""
    try:
        (kind, report), *_ = data["report"].items()
        quote_tee = _REPORT_KINDS[kind]
        report = _flatten_base(report)
        platform = data.get("platform") or {}
        pck = platform.get("pck") or {}
        tcb_date = platform.get("tcb_date_tag")
        qe_level = (data.get("qe") or {}).get("tcb_level") or {}
        common: dict[str, Any] = {
            "tee": "sim" if sim else quote_tee,
            "quote_version": int(data["header"]["version"]),
            "tcb_status": str(data["tcb"]["status"]),
            "advisory_ids": tuple(str(a) for a in data["tcb"].get("advisory_ids", ())),
            "report_data": bytes.fromhex(report["report_data"]),
            "fmspc": bytes(pck.get("fmspc", ())).hex().upper(),
            "tcb_date": int(tcb_date) if tcb_date is not None else None,
            "qe_tcb_status": qe_level.get("tcbStatus"),
            "collateral_issued_at": collateral_issued_at,
        }
        if quote_tee == "sgx":
            attributes = bytes.fromhex(report["attributes"])
            flags = int.from_bytes(attributes[:8], "little")
            return Claims(
                **common,
                debug=bool(flags & _SGX_FLAG_DEBUG),
                mr_enclave=report["mr_enclave"].lower(),
                mr_signer=report["mr_signer"].lower(),
                isv_prod_id=int(report["isv_prod_id"]),
                isv_svn=int(report["isv_svn"]),
                attributes=attributes.hex(),
            )
        td_attributes = bytes.fromhex(report["td_attributes"])
        return Claims(
            **common,
            debug=bool(int.from_bytes(td_attributes, "little") & _TD_ATTRIBUTE_DEBUG),
            mr_td=report["mr_td"].lower(),
            mr_seam=report["mr_seam"].lower(),
            mr_config_id=report["mr_config_id"].lower(),
            mr_owner=report["mr_owner"].lower(),
            mr_owner_config=report["mr_owner_config"].lower(),
            rtmr0=report["rt_mr0"].lower(),
            rtmr1=report["rt_mr1"].lower(),
            rtmr2=report["rt_mr2"].lower(),
            rtmr3=report["rt_mr3"].lower(),
            td_attributes=td_attributes.hex(),
        )
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        # A dcap-qvl whose output we do not understand: fail closed, and say so.
        reason = f"unexpected verifier output ({type(err).__name__}: {err})"
        raise AttestationFailed(f"quote verification failed: {reason}", reason=reason) from None


def _flatten_base(report: dict[str, Any]) -> dict[str, Any]:
    flat = dict(report)
    while isinstance(flat.get("base"), dict):
        base = flat.pop("base")
        flat = {**base, **flat}
    return flat


@functools.cache
def _warn_non_intel_root(fingerprint: str) -> None:
    """Once per root and process: a broker verifying many quotes logs it once, not each time."""
    log.warning(
        "verifying quotes against a non-Intel root CA (sha256 %s): their claims are "
        "marked tee=sim and prove no hardware protection (INSECURE outside tests/demos)",
        fingerprint,
    )


def pck_root_der(quote: bytes) -> bytes | None:
    """The DER of the root certificate at the end of the PCK chain a quote carries (its
    certification data type 5: a PEM chain, leaf first), or None when there is none. Not a
    verification: it tells which trust anchor to verify the quote against."""
    start = quote.rfind(b"-----BEGIN CERTIFICATE-----")
    end = quote.find(b"-----END CERTIFICATE-----", start)
    if start < 0 or end < 0:
        return None
    try:
        pem = quote[start : end + len(b"-----END CERTIFICATE-----")]
        return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    except ValueError:
        return None
