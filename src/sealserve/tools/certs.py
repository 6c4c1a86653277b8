"""The model owner's certificate tool: keys, certificates and TF Serving's `ssl.cfg` for the
REST and gRPC ports, replacing the seed's `generate_twoway_ssl_config.sh` and
`generate_oneway_ssl_config.sh` with the same layout and correct certificates.

Layout of `out_dir` (the seed's `ssl_configure/`):

    ca_cert.pem  ca_key.pem                 two-way only: the private CA
    server/key.pem  server/cert.pem
    client/key.pem  client/cert.pem         two-way only
    ssl.cfg                                 TF Serving SSLConfig text proto, PEM inline

Decisions:
- Keys are ECDSA P-256 (fast, small, accepted by OpenSSL, BoringSSL/gRPC and browsers); RSA
  with `rsa_bits` (2048, 3072 or 4096) for clients that need it. Signatures use SHA-256.
- Every certificate carries SKI and AKI, unique 159-bit random serials (RFC 5280 §4.1.2.2,
  CA/B Forum ≥ 64 bits of entropy), basicConstraints (critical; CA:TRUE with pathLen 0 on
  the CA only), a critical keyUsage, and an extendedKeyUsage on leaves (serverAuth on the
  server, clientAuth on the client). The server certificate's subjectAltName holds the
  server name plus every `sans` entry, each recognised as an IP address or a DNS name:
  clients match host names against the SAN only (RFC 6125; the seed's certificates had none,
  so only CN-matching clients accepted them). The client certificate's SAN holds the client
  name (so it too must be a DNS name or an IP address, as in the seed's examples).
- Validity: leaves 365 days by default, at most 825 (Apple's limit for TLS server
  certificates from any CA, including private ones); the CA 10 years, because it is the
  trust anchor handed to every client and rotating it means touching all of them, while its
  key stays on the owner's machine and never goes to the server. Start times are back-dated
  one hour so a server or client whose clock runs a little behind accepts a fresh certificate.
- One-way (server-only) TLS: the server certificate is self-signed with CA:FALSE and is
  itself the clients' trust anchor, as in the seed, whose clients pass `server/cert.pem` as
  the root. Tested: gRPC (BoringSSL) and Python's ssl (OpenSSL 3, also with
  VERIFY_X509_STRICT) accept a self-signed CA:FALSE leaf as a root and check its SAN. A
  CA-signed leaf given as the only root is accepted by gRPC but refused by OpenSSL unless
  the client enables partial chains (Python < 3.13 does not), so it would break plain
  Python and curl clients that follow the seed's instructions.
- Private keys are written with mode 0600; `out_dir`, `server/` and `client/` are 0700
  (`ssl.cfg` holds the server key; certificates are 0644 inside them). `out_dir` must not
  exist; everything appears at once or not at all (`fsio.atomic_output_dir`).
- With `encrypt_ssl_cfg_key`, `ssl.cfg` is a Gramine protected file bound to
  `<out_dir>/ssl.cfg` exactly as `out_dir` was given (what `gramine-sgx-pf-crypt encrypt -o`
  and `model_tree.encrypt_file` bind), or to `ssl_cfg_bound_path`, the path the server will
  read it from (the server checks the bound path, as Gramine does), so it can be mounted
  encrypted in an enclave or read by `sealserve serve --ssl_config_key`. The plaintext is
  encrypted from memory; it is never written to a file (the same key is still in
  `server/key.pem`, which the owner keeps).

Functions are safe to call from several threads on different `out_dir`s.
"""

from __future__ import annotations

import datetime
import io
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sealserve.errors import InvalidArgument
from sealserve.fsio import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    atomic_output_dir,
    atomic_output_file,
    read_user_file,
)
from sealserve.model_tree import bound_path_in
from sealserve.protected_files import KEY_SIZE, normalize_path, write_protected
from sealserve.serving.tls import SSLConfig, format_ssl_config

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

CA_VALID_DAYS = 3650
LEAF_VALID_DAYS = 365
MAX_LEAF_VALID_DAYS = 825
RSA_BITS = (2048, 3072, 4096)
BACKDATE = datetime.timedelta(hours=1)
MAX_NAME_CHARS = 64  # X.509's upper bound for a commonName (RFC 5280 ub-common-name)
PUBLIC_FILE_MODE = 0o644
SSL_CONFIG_NAME = "ssl.cfg"

_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


@dataclass(frozen=True)
class CertificateSet:
    """Where `make_twoway` / `make_oneway` wrote each file (None: not part of this layout)."""

    root: Path
    server_key: Path
    server_cert: Path
    ssl_config: Path
    ca_cert: Path | None = None
    ca_key: Path | None = None
    client_key: Path | None = None
    client_cert: Path | None = None

    @property
    def trust_anchor(self) -> Path:
        """What clients pass as their root certificate (`-ca` / `-crt` in the seed)."""
        return self.ca_cert or self.server_cert


def make_twoway(
    server_name: str,
    client_name: str,
    out_dir: str | os.PathLike[str],
    *,
    sans: Sequence[str] = (),
    rsa_bits: int | None = None,
    valid_days: int = LEAF_VALID_DAYS,
    encrypt_ssl_cfg_key: bytes | None = None,
    ssl_cfg_bound_path: str | None = None,
    now: datetime.datetime | None = None,
) -> CertificateSet:
    """A private CA, a server and a client certificate signed by it, and an `ssl.cfg` that
    requires client certificates from that CA (`client_verify: true`)."""
    names = _server_names(server_name, sans)
    _check_common_name(client_name, "client name")
    # the client's identity in its SAN too: verifiers that identify clients (cryptography's,
    # Go's, Envoy's) read it from there, not from the common name
    client_names = [_general_name(client_name)]
    _check_settings(rsa_bits, valid_days, encrypt_ssl_cfg_key)
    start = (now or datetime.datetime.now(datetime.UTC)) - BACKDATE

    ca_key = _new_key(rsa_bits)
    ca_name = _name(f"sealserve CA {os.urandom(4).hex()}")
    ca_cert = _ca_certificate(ca_key, ca_name, start)
    server_key = _new_key(rsa_bits)
    server_cert = _leaf_certificate(
        server_key,
        _name(server_name),
        ca_key,
        ca_name,
        start,
        valid_days,
        ExtendedKeyUsageOID.SERVER_AUTH,
        names,
    )
    client_key = _new_key(rsa_bits)
    client_cert = _leaf_certificate(
        client_key,
        _name(client_name),
        ca_key,
        ca_name,
        start,
        valid_days,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        client_names,
    )
    config = SSLConfig(
        server_key=_key_pem(server_key).decode("ascii"),
        server_cert=_cert_pem(server_cert).decode("ascii"),
        custom_ca=_cert_pem(ca_cert).decode("ascii"),
        client_verify=True,
    )

    out = Path(out_dir)
    with atomic_output_dir(out, mode=PRIVATE_DIR_MODE) as tmp:
        _write(tmp / "ca_cert.pem", _cert_pem(ca_cert), PUBLIC_FILE_MODE)
        _write(tmp / "ca_key.pem", _key_pem(ca_key), PRIVATE_FILE_MODE)
        _write_pair(tmp / "server", server_key, server_cert)
        _write_pair(tmp / "client", client_key, client_cert)
        _write_ssl_config(
            tmp, out_dir, config, encrypt_ssl_cfg_key, server_name, client_name, ssl_cfg_bound_path
        )
    return CertificateSet(
        root=out,
        server_key=out / "server" / "key.pem",
        server_cert=out / "server" / "cert.pem",
        ssl_config=out / SSL_CONFIG_NAME,
        ca_cert=out / "ca_cert.pem",
        ca_key=out / "ca_key.pem",
        client_key=out / "client" / "key.pem",
        client_cert=out / "client" / "cert.pem",
    )


def make_oneway(
    server_name: str,
    out_dir: str | os.PathLike[str],
    *,
    sans: Sequence[str] = (),
    rsa_bits: int | None = None,
    valid_days: int = LEAF_VALID_DAYS,
    encrypt_ssl_cfg_key: bytes | None = None,
    ssl_cfg_bound_path: str | None = None,
    now: datetime.datetime | None = None,
) -> CertificateSet:
    """A self-signed server certificate (clients trust `server/cert.pem` itself) and an
    `ssl.cfg` without client verification."""
    names = _server_names(server_name, sans)
    _check_settings(rsa_bits, valid_days, encrypt_ssl_cfg_key)
    start = (now or datetime.datetime.now(datetime.UTC)) - BACKDATE

    server_key = _new_key(rsa_bits)
    subject = _name(server_name)
    server_cert = _leaf_certificate(
        server_key,
        subject,
        server_key,
        subject,
        start,
        valid_days,
        ExtendedKeyUsageOID.SERVER_AUTH,
        names,
    )
    config = SSLConfig(
        server_key=_key_pem(server_key).decode("ascii"),
        server_cert=_cert_pem(server_cert).decode("ascii"),
        custom_ca="",
        client_verify=False,
    )

    out = Path(out_dir)
    with atomic_output_dir(out, mode=PRIVATE_DIR_MODE) as tmp:
        _write_pair(tmp / "server", server_key, server_cert)
        _write_ssl_config(
            tmp, out_dir, config, encrypt_ssl_cfg_key, server_name, None, ssl_cfg_bound_path
        )
    return CertificateSet(
        root=out,
        server_key=out / "server" / "key.pem",
        server_cert=out / "server" / "cert.pem",
        ssl_config=out / SSL_CONFIG_NAME,
    )


def load_pem_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a PEM file (a certificate or key for a client's credentials), checked
    to hold at least one PEM block."""
    path = Path(path)
    data = read_user_file(path, "PEM file")
    if b"-----BEGIN " not in data:
        raise InvalidArgument(f"{path} is not a PEM file (no '-----BEGIN' line)")
    return data


# -- names ---------------------------------------------------------------------------------


def _server_names(server_name: str, sans: Sequence[str]) -> list[x509.GeneralName]:
    _check_common_name(server_name, "server name")
    names: list[x509.GeneralName] = []
    for value in (server_name, *sans):
        general_name = _general_name(value)
        if general_name not in names:
            names.append(general_name)
    return names


def _general_name(value: str) -> x509.GeneralName:
    """An IP address SAN for anything that parses as one, else a DNS name SAN."""
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _is_dns_name(value):
        raise InvalidArgument(
            f"'{value}' is neither an IP address nor a DNS name (letters, digits and '-' "
            "in dot-separated labels; a leading '*.' for a wildcard; IDNs as xn-- labels)"
        )
    return x509.DNSName(value.lower())


def _is_dns_name(value: str) -> bool:
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253 or not name.isascii():
        return False
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 2:  # a wildcard covers one label of a domain
        labels = labels[1:]
    return all(_DNS_LABEL.match(label) for label in labels)


def _check_common_name(value: str, what: str) -> None:
    if not value or not value.strip():
        raise InvalidArgument(f"the {what} is empty")
    if len(value) > MAX_NAME_CHARS or not value.isprintable():
        raise InvalidArgument(
            f"the {what} must be 1 to {MAX_NAME_CHARS} printable characters (an X.509 "
            "common name); give longer DNS names as extra SANs"
        )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _check_settings(rsa_bits: int | None, valid_days: int, wrap_key: bytes | None) -> None:
    if rsa_bits is not None and rsa_bits not in RSA_BITS:
        raise InvalidArgument(
            f"RSA key size must be one of {', '.join(map(str, RSA_BITS))}, not {rsa_bits}"
        )
    if not 1 <= valid_days <= MAX_LEAF_VALID_DAYS:
        raise InvalidArgument(
            f"certificate validity must be 1 to {MAX_LEAF_VALID_DAYS} days, not {valid_days} "
            "(longer TLS server certificates are refused by Apple clients)"
        )
    if wrap_key is not None and len(wrap_key) != KEY_SIZE:
        raise InvalidArgument(f"wrap key must be {KEY_SIZE} bytes, got {len(wrap_key)}")


# -- keys and certificates -----------------------------------------------------------------


def _new_key(rsa_bits: int | None) -> PrivateKey:
    if rsa_bits is None:
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)


def _key_usage(*, cert_sign: bool, key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_certificate(key: PrivateKey, name: x509.Name, start: datetime.datetime) -> x509.Certificate:
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=CA_VALID_DAYS))
        # pathLen 0: this CA signs leaves only, never another CA
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True, key_encipherment=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _leaf_certificate(
    key: PrivateKey,
    subject: x509.Name,
    issuer_key: PrivateKey,
    issuer: x509.Name,
    start: datetime.datetime,
    valid_days: int,
    purpose: x509.ObjectIdentifier,
    names: list[x509.GeneralName],
) -> x509.Certificate:
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # keyEncipherment lets RSA keys serve TLS 1.2 clients that still use RSA key exchange
        .add_extension(
            _key_usage(cert_sign=False, key_encipherment=isinstance(key, rsa.RSAPrivateKey)),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        # not critical: the subject (the common name) is not empty (RFC 5280 §4.2.1.6)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


# -- output --------------------------------------------------------------------------------


def _write(path: Path, data: bytes, mode: int) -> None:
    with atomic_output_file(path, mode=mode) as out:
        out.write(data)
    os.chmod(path, mode)  # the umask may have removed bits; keys must be exactly 0600


def _write_pair(directory: Path, key: PrivateKey, certificate: x509.Certificate) -> None:
    directory.mkdir(mode=PRIVATE_DIR_MODE)
    _write(directory / "key.pem", _key_pem(key), PRIVATE_FILE_MODE)
    _write(directory / "cert.pem", _cert_pem(certificate), PUBLIC_FILE_MODE)


def _write_ssl_config(
    tmp: Path,
    out_dir: str | os.PathLike[str],
    config: SSLConfig,
    wrap_key: bytes | None,
    server_name: str,
    client_name: str | None,
    bound_path: str | None,
) -> None:
    mode = "two-way TLS: clients need a certificate signed by ca_cert.pem"
    if client_name is None:
        mode = "one-way TLS: clients trust server/cert.pem"
    comment = (
        f"TF Serving SSLConfig (config/ssl_config.proto) for {server_name}, written by "
        f"sealserve\n{mode}\nholds the server's private key: keep it private"
    )
    text = format_ssl_config(config, comment=comment).encode("ascii")
    if wrap_key is None:
        _write(tmp / SSL_CONFIG_NAME, text, PRIVATE_FILE_MODE)
        return
    bound = (
        normalize_path(bound_path)
        if bound_path
        else bound_path_in(os.fspath(out_dir), SSL_CONFIG_NAME)
    )
    with atomic_output_file(tmp / SSL_CONFIG_NAME, mode=PRIVATE_FILE_MODE) as out:
        write_protected(io.BytesIO(text), len(text), out, wrap_key, bound)
    os.chmod(tmp / SSL_CONFIG_NAME, PRIVATE_FILE_MODE)
