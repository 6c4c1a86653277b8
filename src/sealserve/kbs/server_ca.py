"""The KBS as the certificate authority of attested servers.

An attested server (`serve --key_broker_tls_name NAME`) makes its TLS key pair in memory and
sends a certificate signing request over its attested session; the KBS issues a short-lived
certificate for that key when the policy of the resource `sealserve/tls-cert/NAME` admits the
session's verified claims. The certificate carries those claims (TEE type, measurements, TCB
status) in a non-critical extension, `CLAIMS_OID`, as canonical JSON, so that a requester
holding the owner's server CA certificate can check both who issued it and what it attests.

Only for the key the evidence bound: the session's attestation names the server's TLS key
(`runtime-data` `tls-spki-sha256`, covered by the quote's report_data, `kbs.protocol`), and
`issue` refuses a CSR for any other key, or when the evidence bound none (`KeyNotBound`, 403).
So a stolen session cookie or token, or a process outside the TEE riding the session, cannot
get an attested certificate for a key of its own: the key must be one the TEE quoted. The same
key is certified again over the session (renewal); a new key needs a new attestation.

Certificates: the CSR's key (EC P-256/P-384, or RSA >= 2048) with a valid CSR signature (proof
of possession); subject CN and DNS SAN `NAME`; serverAuth only; not a CA; valid from a minute
before `now` for `lifetime` seconds. The CA key is read from a 0600 file and never leaves this
process. Pure: no I/O besides loading the CA files. Thread safe.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hmac
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sealserve.attestation import Claims
from sealserve.errors import InvalidArgument, PermissionDenied
from sealserve.fsio import PRIVATE_FILE_MODE, atomic_output_file, read_user_file
from sealserve.kbs.protocol import TLS_SPKI_MEMBER, spki_sha256

#: the resource type whose policies decide who gets a server certificate for a name
TLS_CERT_RESOURCE = "sealserve/tls-cert/{name}"
#: sealserve's attestation-claims extension (a UUID-derived OID, ITU-T X.667: 2.25.<uuid>)
CLAIMS_OID = x509.ObjectIdentifier("2.25.141284203826467398622911035961330563394")
DEFAULT_LIFETIME_SECONDS = 3600
MIN_LIFETIME_SECONDS = 5  # servers renew at two thirds of it: short ones are for tests
MAX_CSR_BYTES = 16 << 10
CA_FILES = {"key": "server-ca-key.pem", "cert": "server-ca.pem"}


class KeyNotBound(PermissionDenied):
    """The CSR's key is not the TLS key the session's evidence bound (HTTP 403). The message,
    what the caller is told, names no key; `reason` (which key was bound) is for the audit
    log, as for a policy denial."""

    def __init__(self, resource: str, *, reason: str) -> None:
        super().__init__(
            f"the KBS does not certify this key for {resource} (the KBS's audit log says why)"
        )
        self.reason = reason


@dataclass(frozen=True)
class ServerCA:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    lifetime_seconds: int = DEFAULT_LIFETIME_SECONDS

    @classmethod
    def load(cls, key_path: str, cert_path: str, *, lifetime_seconds: int) -> ServerCA:
        key = serialization.load_pem_private_key(
            read_user_file(key_path, "server CA key"), password=None
        )
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidArgument(f"{key_path}: the server CA key must be an EC private key")
        certificate = x509.load_pem_x509_certificate(
            read_user_file(cert_path, "server CA certificate")
        )
        if certificate.public_key() != key.public_key():
            raise InvalidArgument(f"{cert_path} is not the certificate of {key_path}")
        if lifetime_seconds < MIN_LIFETIME_SECONDS:
            raise InvalidArgument(
                f"the server certificate lifetime must be at least {MIN_LIFETIME_SECONDS} seconds"
            )
        return cls(certificate, key, lifetime_seconds)

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    def issue(
        self, csr_pem: str, name: str, claims: Claims, now: int, *, bound_spki: str | None
    ) -> str:
        """The PEM chain (leaf, then this CA) for the CSR's key; `InvalidArgument` for a CSR
        that does not parse, is not self-signed by its key, or has a weak key; `KeyNotBound`
        unless the key's SHA-256 SubjectPublicKeyInfo is `bound_spki`, the one the attested
        evidence bound (None: it bound none)."""
        if not isinstance(csr_pem, str) or len(csr_pem) > MAX_CSR_BYTES:
            raise InvalidArgument("csr must be a PEM certificate signing request")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
        except ValueError:
            raise InvalidArgument("csr is not a PEM certificate signing request") from None
        if not csr.is_signature_valid:
            raise InvalidArgument("the CSR's signature does not verify with its own key")
        public = csr.public_key()
        resource = TLS_CERT_RESOURCE.format(name=name)
        requested = spki_sha256(public)
        if bound_spki is None:
            raise KeyNotBound(
                resource,
                reason="the session's evidence bound no TLS key (its runtime-data has no "
                f"{TLS_SPKI_MEMBER}): attest again binding the key to certify",
            )
        if not hmac.compare_digest(requested, bound_spki):
            raise KeyNotBound(
                resource,
                reason=f"the CSR's key (SHA-256 SPKI {requested}) is not the TLS key the "
                f"session's evidence bound ({bound_spki})",
            )
        strong = (
            isinstance(public, ec.EllipticCurvePublicKey)
            and public.curve.name in ("secp256r1", "secp384r1")
        ) or (isinstance(public, rsa.RSAPublicKey) and public.key_size >= 2048)
        if not strong:
            raise InvalidArgument("the CSR's key must be EC P-256/P-384 or RSA >= 2048")
        start = dt.datetime.fromtimestamp(now, dt.UTC)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
            .not_valid_before(start - dt.timedelta(minutes=1))
            .not_valid_after(start + dt.timedelta(seconds=self.lifetime_seconds))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.UnrecognizedExtension(CLAIMS_OID, encode_claims(claims)), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return leaf.public_bytes(serialization.Encoding.PEM).decode() + self.certificate_pem


def encode_claims(claims: Claims) -> bytes:
    return rfc8785.dumps(claims.to_json())


def claims_in_certificate(certificate: x509.Certificate) -> Claims | None:
    """The attestation claims a KBS-issued server certificate carries, or None."""
    try:
        extension = certificate.extensions.get_extension_for_oid(CLAIMS_OID)
    except x509.ExtensionNotFound:
        return None
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        return None
    try:
        document = json.loads(value.value)
        names = {f.name for f in dataclasses.fields(Claims)}
        values = {k: v for k, v in document.items() if k in names}
        values["report_data"] = bytes.fromhex(values["report_data"])
        values["advisory_ids"] = tuple(values.get("advisory_ids") or ())
        return Claims(**values)
    except (ValueError, UnicodeDecodeError, AttributeError, KeyError, TypeError):
        return None


def make_server_ca(directory: Path, *, common_name: str = "sealserve attested servers") -> None:
    """A new EC P-256 CA for attested servers: `server-ca-key.pem` (0600) and
    `server-ca.pem` (what requesters trust), valid ten years."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    with atomic_output_file(directory / CA_FILES["key"], mode=PRIVATE_FILE_MODE) as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    with atomic_output_file(directory / CA_FILES["cert"], mode=0o644) as out:
        out.write(certificate.public_bytes(serialization.Encoding.PEM))
