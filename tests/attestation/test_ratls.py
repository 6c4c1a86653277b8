"""RA-TLS certificates (Gramine's two formats): what is extracted, and every malformed or
unbound certificate refused before its quote is even verified."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from sealserve.attestation import AttestationFailed
from sealserve.attestation.ratls import (
    LEGACY,
    LEGACY_QUOTE_OID,
    TCG_DICE,
    TCG_DICE_EVIDENCE_OID,
    TEE_QUOTE_CBOR_TAG,
    evidence_from_certificate,
    make_certificate,
    spki_der,
)
from sealserve.attestation.sim import SimAttester, init_sim

NOW = 1_800_000_000
REPORT_DATA = slice(368, 432)


@pytest.fixture(scope="module")
def attester(tmp_path_factory: pytest.TempPathFactory) -> SimAttester:
    directory = tmp_path_factory.mktemp("sim") / "tee"
    init_sim(directory, now=NOW)
    return SimAttester(directory, mr_enclave=b"\x11" * 32)


def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def test_gramine_legacy_oid_is_the_raw_bytes_gramine_writes() -> None:
    # Gramine's ra_tls.h: NON_STANDARD_INTEL_SGX_QUOTE_OID is these 11 bytes
    from cryptography.hazmat.primitives.serialization import Encoding

    private = key()
    certificate = make_certificate(_FixedQuote(), private, formats=(LEGACY,))
    der = certificate.public_bytes(Encoding.DER)
    gramine_oid = bytes([0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF8, 0x4D, 0x8A, 0x39, 0x06])
    assert b"\x06\x0b" + gramine_oid in der  # OBJECT IDENTIFIER, 11 bytes: Gramine's bytes
    tcg = make_certificate(_FixedQuote(), private, formats=(TCG_DICE,)).public_bytes(Encoding.DER)
    assert bytes([0x06, 0x06, 0x67, 0x81, 0x05, 0x05, 0x04, 0x09]) in tcg


class _FixedQuote:
    """An attester whose quote is only a well-formed-sized blob carrying the report data."""

    tee = "sim"

    def evidence(self, report_data: bytes):  # type: ignore[no-untyped-def]
        from sealserve.attestation.evidence import Evidence

        return Evidence("sim", bytes(368) + report_data + bytes(100))


@pytest.mark.parametrize("formats", [(LEGACY,), (TCG_DICE,), (LEGACY, TCG_DICE)])
def test_the_quote_is_extracted_bound_to_the_certificate_key(
    attester: SimAttester, formats: tuple[str, ...]
) -> None:
    private = key()
    certificate = make_certificate(attester, private, formats=formats)

    evidence = evidence_from_certificate(certificate, now=NOW)

    assert evidence.format == (TCG_DICE if TCG_DICE in formats else LEGACY)
    spki_hash = hashlib.sha256(spki_der(certificate)).digest()
    if evidence.format == LEGACY:
        assert evidence.quote[REPORT_DATA][:32] == spki_hash
    assert evidence.quote[112 : 112 + 32] == b"\x11" * 32  # mr_enclave at body offset 64


def _certificate(
    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    extensions: list[tuple[x509.ObjectIdentifier, bytes, bool]],
    *,
    signer: ec.EllipticCurvePrivateKey | None = None,
    not_after: dt.datetime = dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "RATLS")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2001, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(not_after)
    )
    for oid, value, critical in extensions:
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=critical)
    return builder.sign(signer or private, hashes.SHA256())  # type: ignore[arg-type]


def _spki(private: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _dice(attester: SimAttester, claims: bytes, *, quote_binds: bytes | None = None) -> bytes:
    digest = hashlib.sha256(claims if quote_binds is None else quote_binds).digest()
    quote = attester.evidence(digest + bytes(32)).quote
    return cbor2.dumps(cbor2.CBORTag(TEE_QUOTE_CBOR_TAG, [quote, claims]))


def _claims(private: ec.EllipticCurvePrivateKey, alg: int = 1, hasher=hashlib.sha256) -> bytes:  # type: ignore[no-untyped-def]
    return cbor2.dumps({"pubkey-hash": cbor2.dumps([alg, hasher(_spki(private)).digest()])})


def test_a_sha384_pubkey_hash_is_accepted_as_gramine_accepts_it(attester: SimAttester) -> None:
    private = key()
    value = _dice(attester, _claims(private, 7, hashlib.sha384))
    certificate = _certificate(private, [(TCG_DICE_EVIDENCE_OID, value, False)])

    assert evidence_from_certificate(certificate, now=NOW).format == TCG_DICE


Case = Callable[[SimAttester], x509.Certificate]


def _case_no_extension(attester: SimAttester) -> x509.Certificate:
    return _certificate(key(), [])


def _case_rsa_key(attester: SimAttester) -> x509.Certificate:
    return _certificate(rsa.generate_private_key(65537, 2048), [])


def _case_not_self_signed(attester: SimAttester) -> x509.Certificate:
    private = key()
    value = _dice(attester, _claims(private))
    return _certificate(private, [(TCG_DICE_EVIDENCE_OID, value, False)], signer=key())


def _case_expired(attester: SimAttester) -> x509.Certificate:
    private = key()
    value = _dice(attester, _claims(private))
    past = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    return _certificate(private, [(TCG_DICE_EVIDENCE_OID, value, False)], not_after=past)


def _case_critical(attester: SimAttester) -> x509.Certificate:
    private = key()
    return _certificate(private, [(TCG_DICE_EVIDENCE_OID, _dice(attester, _claims(private)), True)])


def _case_not_cbor(attester: SimAttester) -> x509.Certificate:
    return _certificate(key(), [(TCG_DICE_EVIDENCE_OID, b"\xff\x00garbage", False)])


def _case_wrong_tag(attester: SimAttester) -> x509.Certificate:
    private = key()
    claims = _claims(private)
    quote = attester.evidence(hashlib.sha256(claims).digest() + bytes(32)).quote
    value = cbor2.dumps(cbor2.CBORTag(60001, [quote, claims]))
    return _certificate(private, [(TCG_DICE_EVIDENCE_OID, value, False)])


def _case_claims_not_in_quote(attester: SimAttester) -> x509.Certificate:
    private = key()
    value = _dice(attester, _claims(private), quote_binds=b"other claims")
    return _certificate(private, [(TCG_DICE_EVIDENCE_OID, value, False)])


def _case_no_pubkey_hash(attester: SimAttester) -> x509.Certificate:
    # Gramine's verifier would skip the key check here; we refuse
    private = key()
    value = _dice(attester, cbor2.dumps({"nonce": b"1234"}))
    return _certificate(private, [(TCG_DICE_EVIDENCE_OID, value, False)])


def _case_unknown_hash_algorithm(attester: SimAttester) -> x509.Certificate:
    private = key()
    value = _dice(attester, _claims(private, 42))
    return _certificate(private, [(TCG_DICE_EVIDENCE_OID, value, False)])


def _case_other_key_hash(attester: SimAttester) -> x509.Certificate:
    private = key()
    value = _dice(attester, _claims(key()))
    return _certificate(private, [(TCG_DICE_EVIDENCE_OID, value, False)])


def _case_legacy_other_key(attester: SimAttester) -> x509.Certificate:
    private = key()
    quote = attester.evidence(hashlib.sha256(_spki(key())).digest() + bytes(32)).quote
    return _certificate(private, [(LEGACY_QUOTE_OID, quote, False)])


def _case_legacy_tiny_quote(attester: SimAttester) -> x509.Certificate:
    return _certificate(key(), [(LEGACY_QUOTE_OID, b"\x03\x00" * 20, False)])


CASES: dict[str, tuple[Case, str]] = {
    "no evidence": (_case_no_extension, "no RA-TLS evidence"),
    "RSA key": (_case_rsa_key, "not ECDSA"),
    "not self-signed": (_case_not_self_signed, "not self-signed"),
    "expired": (_case_expired, "not valid now"),
    "critical extension": (_case_critical, "must not be critical"),
    "not CBOR": (_case_not_cbor, "not valid CBOR"),
    "wrong CBOR tag": (_case_wrong_tag, "CBOR tag 60000"),
    "claims not in the quote": (_case_claims_not_in_quote, "does not bind"),
    "no pubkey-hash claim": (_case_no_pubkey_hash, "pubkey-hash"),
    "unknown hash algorithm": (_case_unknown_hash_algorithm, "unsupported hash"),
    "hash of another key": (_case_other_key_hash, "does not match"),
    "legacy quote of another key": (_case_legacy_other_key, "does not bind"),
    "legacy quote too small": (_case_legacy_tiny_quote, "impossible size"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_or_unbound_certificates_are_refused(
    attester: SimAttester, case: str, tmp_path: Path
) -> None:
    make, reason = CASES[case]
    with pytest.raises(AttestationFailed) as refused:
        evidence_from_certificate(make(attester), now=NOW)
    assert refused.value.message == "RA-TLS certificate refused"  # uninformative to the peer
    assert reason in refused.value.reason
