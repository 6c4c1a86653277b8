"""The owner's certificate tool: layout, permissions, certificate profile, all-or-nothing
output and the (optionally protected) ssl.cfg. Handshakes with these certificates are in
tests/serving/test_tls.py."""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from sealserve.errors import AlreadyExists, InvalidArgument, NotFound
from sealserve.protected_files import ProtectedFileReader, normalize_path
from sealserve.protected_files.format import FILE_ID
from sealserve.serving.tls import SSLConfig, load_ssl_config
from sealserve.tools import certs
from sealserve.tools.certs import (
    CA_VALID_DAYS,
    LEAF_VALID_DAYS,
    CertificateSet,
    load_pem_bytes,
    make_oneway,
    make_twoway,
)

NOW = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
WRAP_KEY = bytes(range(16))
SANS = ["127.0.0.1", "::1", "Serving.Example.COM", "*.pods.example.com", "localhost"]


@dataclass(frozen=True)
class Made:
    twoway: CertificateSet
    oneway: CertificateSet
    rsa: CertificateSet


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    root = tmp_path_factory.mktemp("certs")
    return Made(
        twoway=make_twoway(
            "grpc.tf-serving.service.com", "client", root / "two", sans=SANS, now=NOW
        ),
        oneway=make_oneway("grpc.tf-serving.service.com", root / "one", sans=SANS, now=NOW),
        rsa=make_twoway("localhost", "client", root / "rsa", rsa_bits=2048, now=NOW),
    )


def _cert(path: Path | None) -> x509.Certificate:
    assert path is not None
    return x509.load_pem_x509_certificate(path.read_bytes())


def _key(path: Path | None) -> PrivateKeyTypes:
    assert path is not None
    data = path.read_bytes()
    assert data.startswith(b"-----BEGIN PRIVATE KEY-----")  # unencrypted PKCS#8
    return serialization.load_pem_private_key(data, None)


def _files(root: Path) -> dict[str, int]:
    return {
        str(path.relative_to(root)): stat.S_IMODE(path.stat().st_mode)
        for path in sorted(root.rglob("*"))
    }


def test_twoway_layout_and_permissions(made: Made) -> None:
    root = made.twoway.root
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert _files(root) == {
        "ca_cert.pem": 0o644,
        "ca_key.pem": 0o600,
        "client": 0o700,
        "client/cert.pem": 0o644,
        "client/key.pem": 0o600,
        "server": 0o700,
        "server/cert.pem": 0o644,
        "server/key.pem": 0o600,
        "ssl.cfg": 0o600,
    }
    assert made.twoway.trust_anchor == root / "ca_cert.pem"


def test_oneway_layout_and_permissions(made: Made) -> None:
    root = made.oneway.root
    assert _files(root) == {
        "server": 0o700,
        "server/cert.pem": 0o644,
        "server/key.pem": 0o600,
        "ssl.cfg": 0o600,
    }
    assert made.oneway.ca_cert is None and made.oneway.client_cert is None
    assert made.oneway.trust_anchor == root / "server" / "cert.pem"


def test_ssl_cfg_holds_the_written_pems(made: Made) -> None:
    twoway = load_ssl_config(made.twoway.ssl_config, None)
    assert twoway == SSLConfig(
        server_key=made.twoway.server_key.read_text(),
        server_cert=made.twoway.server_cert.read_text(),
        custom_ca=made.twoway.ssl_config.parent.joinpath("ca_cert.pem").read_text(),
        client_verify=True,
    )
    oneway = load_ssl_config(made.oneway.ssl_config, None)
    assert oneway.custom_ca == "" and oneway.client_verify is False
    text = made.oneway.ssl_config.read_text()
    assert text.startswith("# TF Serving SSLConfig")
    assert "custom_ca:\n  ''\nclient_verify: false\n" in text


def test_ca_profile(made: Made) -> None:
    ca = _cert(made.twoway.ca_cert)
    assert ca.subject == ca.issuer
    assert ca.subject.rfc4514_string().startswith("CN=sealserve CA ")
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ca.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == datetime.timedelta(
        days=CA_VALID_DAYS
    )
    ca.verify_directly_issued_by(ca)


def _leaf_checks(leaf: x509.Certificate, issuer: x509.Certificate, purpose: x509.ObjectIdentifier):
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [purpose]
    issuer_ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == issuer_ski.digest
    leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    leaf.verify_directly_issued_by(issuer)
    assert leaf.not_valid_before_utc == NOW - datetime.timedelta(hours=1)  # back-dated
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == datetime.timedelta(
        days=LEAF_VALID_DAYS
    )


def _sans(leaf: x509.Certificate) -> list[str]:
    return [
        str(name.value)
        for name in leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ]


def test_server_and_client_profiles(made: Made) -> None:
    ca, server, client = (
        _cert(made.twoway.ca_cert),
        _cert(made.twoway.server_cert),
        _cert(made.twoway.client_cert),
    )
    _leaf_checks(server, ca, ExtendedKeyUsageOID.SERVER_AUTH)
    _leaf_checks(client, ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    assert server.subject.rfc4514_string() == "CN=grpc.tf-serving.service.com"
    assert client.subject.rfc4514_string() == "CN=client"
    assert server.issuer == ca.subject == client.issuer
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [
        "grpc.tf-serving.service.com",
        "serving.example.com",
        "*.pods.example.com",
        "localhost",
    ]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert _sans(client) == ["client"]


def test_chains_verify_under_a_strict_rfc5280_verifier(made: Made) -> None:
    """cryptography's verifier applies RFC 5280 and CA/B Forum profile checks."""
    for made_set in (made.twoway, made.rsa):
        store = Store([_cert(made_set.ca_cert)])
        at = NOW + datetime.timedelta(days=1)
        server = _cert(made_set.server_cert)
        for name in _sans(server):
            subject: x509.verification.Subject = (
                x509.IPAddress(ipaddress.ip_address(name))
                if name[0].isdigit() or ":" in name
                else x509.DNSName(name.replace("*", "api"))
            )
            PolicyBuilder().store(store).time(at).build_server_verifier(subject).verify(server, [])
        with pytest.raises(VerificationError):
            PolicyBuilder().store(store).time(at).build_server_verifier(
                x509.DNSName("elsewhere.example")
            ).verify(server, [])
        client = _cert(made_set.client_cert)
        verified = PolicyBuilder().store(store).time(at).build_client_verifier().verify(client, [])
        assert verified.subjects == [x509.DNSName("client")]
        with pytest.raises(VerificationError):  # a client certificate cannot serve
            PolicyBuilder().store(store).time(at).build_server_verifier(
                x509.DNSName("localhost")
            ).verify(client, [])


def test_oneway_server_certificate_is_its_own_trust_anchor(made: Made) -> None:
    server = _cert(made.oneway.server_cert)
    assert server.subject == server.issuer
    _leaf_checks(server, server, ExtendedKeyUsageOID.SERVER_AUTH)
    assert _sans(server)[0] == "grpc.tf-serving.service.com"


def test_keys_match_certificates_and_default_to_p256(made: Made) -> None:
    pairs = [
        (made.twoway.ca_key, made.twoway.ca_cert),
        (made.twoway.server_key, made.twoway.server_cert),
        (made.twoway.client_key, made.twoway.client_cert),
        (made.oneway.server_key, made.oneway.server_cert),
    ]
    secrets = set()
    for key_path, cert_path in pairs:
        key = _key(key_path)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
        secrets.add(key.private_numbers().private_value)
        assert key.public_key() == _cert(cert_path).public_key()
        assert isinstance(_cert(cert_path).signature_hash_algorithm, hashes.SHA256)
    assert len(secrets) == len(pairs)


def test_rsa_keys(made: Made) -> None:
    for key_path in (made.rsa.ca_key, made.rsa.server_key, made.rsa.client_key):
        key = _key(key_path)
        assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    server = _cert(made.rsa.server_cert)
    assert server.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    assert isinstance(server.signature_hash_algorithm, hashes.SHA256)


def test_serials_are_unique_and_random(made: Made) -> None:
    paths = [
        made.twoway.ca_cert,
        made.twoway.server_cert,
        made.twoway.client_cert,
        made.oneway.server_cert,
        made.rsa.ca_cert,
        made.rsa.server_cert,
        made.rsa.client_cert,
    ]
    serials = [_cert(path).serial_number for path in paths]
    assert len(set(serials)) == len(serials)
    assert all(64 < serial.bit_length() <= 159 for serial in serials)


def test_encrypted_ssl_cfg_is_bound_to_the_path_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    made = make_twoway("localhost", "client", "out/./tls", encrypt_ssl_cfg_key=WRAP_KEY)
    data = made.ssl_config.read_bytes()
    assert data.startswith(FILE_ID) and b"PRIVATE KEY" not in data
    with ProtectedFileReader(made.ssl_config, WRAP_KEY) as reader:
        assert reader.bound_path == normalize_path("out/./tls/ssl.cfg") == b"out/tls/ssl.cfg"
    config = load_ssl_config(made.ssl_config, WRAP_KEY)
    assert config.server_key == made.server_key.read_text() and config.client_verify
    assert stat.S_IMODE(made.ssl_config.stat().st_mode) == 0o600


def test_refuses_an_existing_out_dir(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    out.mkdir()
    (out / "keep").write_text("mine")
    for make in (
        lambda: make_twoway("localhost", "client", out),
        lambda: make_oneway("localhost", out),
    ):
        with pytest.raises(AlreadyExists):
            make()
    assert [p.name for p in out.iterdir()] == ["keep"]


def test_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(certs, "format_ssl_config", fail)
    with pytest.raises(OSError, match="disk full"):
        make_twoway("localhost", "client", tmp_path / "tls")
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary


def test_creates_missing_parents(tmp_path: Path) -> None:
    made = make_oneway("localhost", tmp_path / "a" / "b" / "tls")
    assert made.server_cert.is_file()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"server_name": ""}, "the server name is empty"),
        (
            {"server_name": "a" * 65},
            "the server name must be 1 to 64 printable characters (an X.509 common name); "
            "give longer DNS names as extra SANs",
        ),
        ({"client_name": " "}, "the client name is empty"),
        ({"client_name": "My Client"}, "'My Client' is neither an IP address nor a DNS name"),
        (
            {"server_name": "bad_name"},
            "'bad_name' is neither an IP address nor a DNS name (letters, digits and '-' in "
            "dot-separated labels; a leading '*.' for a wildcard; IDNs as xn-- labels)",
        ),
        ({"sans": ["ok.example", "-bad.example"]}, "'-bad.example' is neither"),
        ({"sans": ["*.com"]}, "'*.com' is neither"),
        ({"sans": ["exämple.com"]}, "'exämple.com' is neither"),
        ({"rsa_bits": 1024}, "RSA key size must be one of 2048, 3072, 4096, not 1024"),
        (
            {"valid_days": 826},
            "certificate validity must be 1 to 825 days, not 826 (longer TLS server "
            "certificates are refused by Apple clients)",
        ),
        ({"valid_days": 0}, "certificate validity must be 1 to 825 days, not 0"),
        ({"encrypt_ssl_cfg_key": b"short"}, "wrap key must be 16 bytes, got 5"),
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"server_name": "localhost", "client_name": "client"}
    arguments.update(kwargs)
    with pytest.raises(InvalidArgument) as raised:
        make_twoway(out_dir=tmp_path / "tls", **arguments)  # type: ignore[arg-type]
    assert str(raised.value).startswith(message)
    assert not (tmp_path / "tls").exists()


def test_valid_days_and_ipv6_server_name(tmp_path: Path) -> None:
    made = make_oneway("::1", tmp_path / "tls", valid_days=825, now=NOW)
    server = _cert(made.server_cert)
    assert server.not_valid_after_utc - server.not_valid_before_utc == datetime.timedelta(days=825)
    assert _sans(server) == ["::1"]
    assert server.subject.rfc4514_string() == "CN=::1"


def test_load_pem_bytes(made: Made, tmp_path: Path) -> None:
    assert load_pem_bytes(made.twoway.server_cert) == made.twoway.server_cert.read_bytes()
    with pytest.raises(NotFound, match="not found$"):
        load_pem_bytes(tmp_path / "missing.pem")
    (tmp_path / "der").write_bytes(b"\x30\x82")
    with pytest.raises(InvalidArgument) as raised:
        load_pem_bytes(tmp_path / "der")
    assert str(raised.value) == f"{tmp_path / 'der'} is not a PEM file (no '-----BEGIN' line)"


def test_private_keys_ignore_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        made = make_twoway("localhost", "client", tmp_path / "tls")
    finally:
        os.umask(old)
    assert stat.S_IMODE(made.server_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(made.root.stat().st_mode) == 0o700
