"""RA-TLS certificates: a TEE's self-signed X.509 certificate carrying its quote.

Gramine's RA-TLS library (`tools/sgx/ra-tls/ra_tls_attest.c`, read for the byte layouts)
puts the quote into the certificate in two formats, both non-critical extensions:

- legacy (Gramine >= 1.0): the extension whose OID Gramine writes as the raw bytes
  `06 09 2A 86 48 86 F8 4D 8A 39 06` (so, decoded as an OID, 0.6.9.42.840.113741.1337.6 —
  the DER type and length of 1.2.840.113741.1337.6 became part of the OID by mistake, kept for
  compatibility). Its value is the raw quote, whose `report_data[0:32]` is SHA-256 of the
  certificate's DER SubjectPublicKeyInfo.
- TCG DICE tagged evidence (OID 2.23.133.5.4.9, Gramine >= 1.8): CBOR
  `tag 60000([bstr quote, bstr claims])`, where `claims` is a serialized CBOR map with
  `"pubkey-hash": bstr(serialized CBOR [hash-alg-id, bstr hash of the SPKI])` (IANA named
  information ids: 1 SHA-256, 7 SHA-384, 8 SHA-512) and the quote's `report_data[0:32]` is
  SHA-256 of the serialized claims.

`evidence_from_certificate` extracts the quote and checks that binding, preferring the TCG
format as Gramine's verifier does; it is stricter than Gramine in one place: the claims must
carry "pubkey-hash" (Gramine skips the key check when the claim is absent, which would let
any certificate carry someone else's quote). The quote itself is *not* verified here: the
caller verifies it (`verify_quote`) and decides on its claims.

`make_certificate` produces such certificates from an `Attester`: for tests (an emulated
Gramine enclave) and for servers that present their own RA-TLS certificate. Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

import cbor2
import dcap_qvl
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sealserve.attestation.errors import AttestationFailed
from sealserve.attestation.evidence import Attester

#: Gramine's legacy quote extension, as its raw OID bytes decode (see the module docstring)
LEGACY_QUOTE_OID = x509.ObjectIdentifier("0.6.9.42.840.113741.1337.6")
#: TCG DICE "tagged evidence" (DICE Attestation Architecture, 2.23.133.5.4.9)
TCG_DICE_EVIDENCE_OID = x509.ObjectIdentifier("2.23.133.5.4.9")
#: the CBOR tag Gramine registers for a TEE quote inside tagged evidence
TEE_QUOTE_CBOR_TAG = 60000
#: the DNS name in sealserve's attested server certificates: clients pin the verified
#: certificate itself and check this name, whatever address they dialled
ATTESTED_SERVER_NAME = "sealserve-attested"
LEGACY = "legacy"
TCG_DICE = "tcg-dice"
FORMATS = (TCG_DICE, LEGACY)

# IANA "Named Information Hash Algorithm Registry" ids Gramine accepts in "pubkey-hash"
_HASHES = {1: hashlib.sha256, 7: hashlib.sha384, 8: hashlib.sha512}
_MIN_QUOTE = 48 + 384
_MAX_QUOTE = 64 << 10  # Gramine's SGX_QUOTE_MAX_SIZE bound (the length is a 2-byte DER size)
_SUBJECT = x509.Name(
    [
        x509.NameAttribute(NameOID.COMMON_NAME, "RATLS"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GramineDevelopers"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
    ]
)


@dataclass(frozen=True)
class RaTlsEvidence:
    """The quote an RA-TLS certificate carries, already bound to the certificate's key."""

    quote: bytes
    format: str  # TCG_DICE or LEGACY

    def __repr__(self) -> str:
        return f"RaTlsEvidence(format={self.format!r}, quote=<{len(self.quote)} bytes>)"


def spki_der(certificate: x509.Certificate) -> bytes:
    """The certificate's DER SubjectPublicKeyInfo (what Gramine hashes)."""
    return certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def evidence_from_certificate(certificate: x509.Certificate, *, now: int) -> RaTlsEvidence:
    """The quote of an RA-TLS certificate valid at `now` (Unix seconds) and signed by its own
    key, the quote's report data checked against that key; `AttestationFailed` (uninformative
    message, the detail in `reason`) otherwise."""
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    if not certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc:
        raise _refused("the certificate is not valid now (expired or not yet valid)")
    key = certificate.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in (
        "secp256r1",
        "secp384r1",
    ):
        raise _refused("the certificate's key is not ECDSA P-256 or P-384")
    extensions = {ext.oid: ext for ext in certificate.extensions}
    if TCG_DICE_EVIDENCE_OID not in extensions and LEGACY_QUOTE_OID not in extensions:
        raise _refused("the certificate carries no RA-TLS evidence (not an RA-TLS certificate)")
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        raise _refused("the certificate is not self-signed by its own key") from None
    if TCG_DICE_EVIDENCE_OID in extensions:  # preferred, as Gramine's verifier does
        return _from_tcg_dice(_extension_bytes(extensions[TCG_DICE_EVIDENCE_OID]), certificate)
    quote = _checked_quote(_extension_bytes(extensions[LEGACY_QUOTE_OID]))
    _expect_binding(quote, hashlib.sha256(spki_der(certificate)).digest(), "public key")
    return RaTlsEvidence(quote=quote, format=LEGACY)


def _from_tcg_dice(value: bytes, certificate: x509.Certificate) -> RaTlsEvidence:
    try:
        tagged = cbor2.loads(value)
    except (cbor2.CBORDecodeError, ValueError, RecursionError) as err:
        raise _refused(f"TCG DICE evidence is not valid CBOR ({err})") from None
    if not isinstance(tagged, cbor2.CBORTag) or tagged.tag != TEE_QUOTE_CBOR_TAG:
        raise _refused(f"TCG DICE evidence is not CBOR tag {TEE_QUOTE_CBOR_TAG}")
    items = tagged.value
    if not (isinstance(items, list | tuple) and len(items) == 2 and all(map(_bstr, items))):
        raise _refused("TCG DICE evidence must be an array [bstr quote, bstr claims]")
    quote, claims = _checked_quote(items[0]), items[1]
    if not claims:
        raise _refused("TCG DICE evidence has empty claims")
    # the quote binds the serialized claims, the claims bind the certificate's key
    _expect_binding(quote, hashlib.sha256(claims).digest(), "TCG DICE claims")
    try:
        claims_map = cbor2.loads(claims)
        entry = cbor2.loads(claims_map["pubkey-hash"]) if isinstance(claims_map, dict) else None
    except (cbor2.CBORDecodeError, ValueError, RecursionError, KeyError, TypeError):
        raise _refused("TCG DICE claims must be a CBOR map with a pubkey-hash entry") from None
    if not (isinstance(entry, list | tuple) and len(entry) == 2 and _bstr(entry[1])):
        raise _refused("TCG DICE pubkey-hash must be [hash-alg-id, bstr hash]")
    algorithm, digest = entry
    hasher = _HASHES.get(algorithm) if isinstance(algorithm, int) else None
    if hasher is None:
        raise _refused(f"TCG DICE pubkey-hash uses an unsupported hash algorithm {algorithm!r}")
    if digest != hasher(spki_der(certificate)).digest():
        raise _refused("the TCG DICE pubkey-hash does not match the certificate's public key")
    return RaTlsEvidence(quote=quote, format=TCG_DICE)


def _extension_bytes(extension: x509.Extension[Any]) -> bytes:
    if extension.critical:
        raise _refused("RA-TLS evidence extensions must not be critical")
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise _refused("unexpected RA-TLS extension value")
    return bytes(value.value)


def _bstr(item: object) -> bool:
    return isinstance(item, bytes)


def _checked_quote(quote: bytes) -> bytes:
    if not _MIN_QUOTE <= len(quote) <= _MAX_QUOTE:
        raise _refused(f"the embedded quote has an impossible size ({len(quote)} bytes)")
    return quote


def _expect_binding(quote: bytes, digest: bytes, what: str) -> None:
    # Gramine compares report_data[0:32] only; the rest is whatever the enclave wrote
    try:
        report_data = bytes(dcap_qvl.parse_quote(quote).report.report_data)  # SGX or TDX
    except (ValueError, AttributeError):
        raise _refused("the embedded quote cannot be parsed") from None
    if report_data[:32] != digest:
        raise _refused(f"the quote's report_data does not bind the certificate's {what}")


def _refused(reason: str) -> AttestationFailed:
    return AttestationFailed("RA-TLS certificate refused", reason=reason)


# --- making RA-TLS certificates -------------------------------------------------------------


def make_certificate(
    attester: Attester,
    private_key: ec.EllipticCurvePrivateKey,
    *,
    formats: tuple[str, ...] = FORMATS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    names: tuple[str, ...] = (),
) -> x509.Certificate:
    """A self-signed RA-TLS certificate for `private_key` with evidence from `attester`, in
    the given formats (both by default, as Gramine >= 1.8 does). Validity defaults to
    Gramine's (2001-01-01 to 2030-12-31); `names` become DNS subject alternative names."""
    public = private_key.public_key()
    spki = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_SUBJECT)
        .issuer_name(_SUBJECT)
        .public_key(public)
        .serial_number(1)
        .not_valid_before(not_before or dt.datetime(2001, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(not_after or dt.datetime(2030, 12, 31, 23, 59, 59, tzinfo=dt.UTC))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
    )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False
        )
    if LEGACY in formats:
        quote = attester.evidence(_report_data(hashlib.sha256(spki).digest())).quote
        builder = builder.add_extension(
            x509.UnrecognizedExtension(LEGACY_QUOTE_OID, quote), critical=False
        )
    if TCG_DICE in formats:
        hash_entry = cbor2.dumps([1, hashlib.sha256(spki).digest()])
        claims = cbor2.dumps({"pubkey-hash": hash_entry})
        quote = attester.evidence(_report_data(hashlib.sha256(claims).digest())).quote
        evidence = cbor2.dumps(cbor2.CBORTag(TEE_QUOTE_CBOR_TAG, [quote, claims]))
        builder = builder.add_extension(
            x509.UnrecognizedExtension(TCG_DICE_EVIDENCE_OID, evidence), critical=False
        )
    return builder.sign(private_key, hashes.SHA256())


def _report_data(digest: bytes) -> bytes:
    return digest + bytes(64 - len(digest))
