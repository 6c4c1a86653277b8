"""Gramine's secret provisioning against the KBS: a client that behaves as
`libsecret_prov_attest.so` (an RA-TLS client certificate carrying a simulated quote, the
35-byte request, the 37-byte response header, a big-endian u32 size, the secret) gets the key;
every refusal closes the connection with nothing released. As on the KBS's HTTP port, a
refusal of evidence that does not verify (anyone can send it) is counted, not audited; a
verified enclave's denial and every release are audited."""

from __future__ import annotations

import datetime as dt
import logging
import re
import socket
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sealserve.attestation.evidence import Evidence
from sealserve.attestation.ratls import FORMATS, LEGACY, TCG_DICE, make_certificate
from sealserve.attestation.sim import SimAttester
from sealserve.kbs.secret_prov import REQUEST, RESPONSE, SecretProvServer, server_context
from sealserve.kbs.store import SECRET_PROV_MAP
from tests.harness import KBS_LISTENING, SEALSERVE, Child, sim_kbs_argv

from .conftest import MR_ENCLAVE, RESOURCE, SECRET, Kbs

#: `sealserve kbs serve --secret-prov-port`'s start-up line, after "KBS listening on URL".
SECRET_PROV_ON = re.compile(r"secret provisioning \(Gramine RA-TLS\) on [^\s:]+:(?P<port>\d+)")

OTHER_RESOURCE = "sealserve/model-key/other"
OTHER_SECRET = b"\x42" * 16


@dataclass
class Endpoint:
    port: int
    ca: str
    kbs: Kbs


@pytest.fixture(scope="module")
def secret_prov_server(kbs_module: Kbs, certs) -> Iterator[SecretProvServer]:  # type: ignore[no-untyped-def]
    context = server_context(str(certs.server_cert), str(certs.server_key))
    server = SecretProvServer(kbs_module.service, context, port=0, timeout=5).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def endpoint(kbs: Kbs, secret_prov_server: SecretProvServer, certs) -> Endpoint:  # type: ignore[no-untyped-def]
    kbs.store.set_policy(SECRET_PROV_MAP, f'{{"resources": ["{RESOURCE}"]}}', "json")
    return Endpoint(secret_prov_server.port, str(certs.trust_anchor), kbs)


class DebugEnclave:
    """The test enclave's identity with ATTRIBUTES.DEBUG set."""

    tee = "sim"

    def __init__(self, attester: SimAttester) -> None:
        self.attester = attester

    def evidence(self, report_data: bytes) -> Evidence:
        return Evidence("sim", self.attester.quote(report_data, MR_ENCLAVE, debug=True))


def enclave_identity(
    tmp_path: Path, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[str, str]:
    cert_file, key_file = tmp_path / "ratls-cert.pem", tmp_path / "ratls-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


def gramine_client(
    endpoint: Endpoint, identity: tuple[str, str] | None, request: bytes = REQUEST
) -> bytes | None:
    """What libsecret_prov_attest.so does: the secret, or None when the server closed."""
    context = ssl.create_default_context(cafile=endpoint.ca)
    if identity is not None:
        context.load_cert_chain(*identity)
    with socket.create_connection(("127.0.0.1", endpoint.port), timeout=30) as sock:
        try:
            with context.wrap_socket(sock, server_hostname="localhost") as tls:
                tls.sendall(request)
                answer = b""
                while chunk := tls.recv(4096):
                    answer += chunk
        except (ssl.SSLError, ConnectionError):
            return None
    if not answer:
        return None
    header = len(RESPONSE) + 4
    assert answer[: len(RESPONSE)] == RESPONSE
    (size,) = struct.unpack(">I", answer[len(RESPONSE) : header])
    assert len(answer) == header + size
    return answer[header:]


def last_audit(kbs: Kbs) -> dict:  # type: ignore[type-arg]
    record = kbs.store.audit_records(limit=100_000)[-1].to_json()
    assert record["action"] == "secret-prov"
    return record


def audit_count(kbs: Kbs) -> int:
    return len(kbs.store.audit_records(limit=100_000))


def unauthenticated_refusals(kbs: Kbs) -> float:
    value = kbs.service.metrics.registry.get_sample_value(
        "sealserve_kbs_unauthenticated_failures_total", {"endpoint": "secret-prov"}
    )
    return value or 0.0


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())  # Gramine's RA-TLS key type


@pytest.mark.parametrize("formats", [FORMATS, (TCG_DICE,), (LEGACY,)], ids="+".join)
def test_an_emulated_gramine_enclave_gets_its_key(
    endpoint: Endpoint, attester: SimAttester, tmp_path: Path, formats: tuple[str, ...]
) -> None:
    key = new_key()
    certificate = make_certificate(attester, key, formats=formats)

    assert gramine_client(endpoint, enclave_identity(tmp_path, certificate, key)) == SECRET
    record = last_audit(endpoint.kbs)
    assert (record["decision"], record["resource"]) == ("allowed", RESOURCE)
    assert record["measurements"]["mr_enclave"] == MR_ENCLAVE.hex()


def test_the_first_mapped_resource_whose_policy_admits_the_enclave_is_released(
    endpoint: Endpoint, attester: SimAttester, tmp_path: Path
) -> None:
    kbs = endpoint.kbs
    kbs.store.put_resource(OTHER_RESOURCE, OTHER_SECRET)
    other_enclave = bytes(32)[:-1] + b"\x01"
    kbs.store.set_policy(
        OTHER_RESOURCE,
        f'tee = ["sim"]\n[[sim]]\nmr_enclave = ["{other_enclave.hex()}"]\n'
        'mr_signer = "any"\nisv_prod_id = "any"\n',
        "toml",
    )
    kbs.store.set_policy(
        SECRET_PROV_MAP, f'{{"resources": ["{OTHER_RESOURCE}", "{RESOURCE}"]}}', "json"
    )
    key = new_key()
    identity = enclave_identity(tmp_path, make_certificate(attester, key), key)

    assert gramine_client(endpoint, identity) == SECRET


def forged_binding(
    attester: SimAttester, formats: tuple[str, ...] = FORMATS
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for a new key that carries the evidence of another key's certificate."""
    genuine = make_certificate(attester, new_key(), formats=formats)
    key = new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(genuine.subject)
        .issuer_name(genuine.issuer)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(genuine.not_valid_before_utc)
        .not_valid_after(genuine.not_valid_after_utc)
    )
    for extension in genuine.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(key, hashes.SHA256()), key


def ordinary_client_certificate(certs) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A plain TLS client certificate (no evidence), from a CA of its own."""
    from sealserve.tools.certs import make_twoway

    made = make_twoway("localhost", "client", Path(str(certs.server_cert)).parent / "twoway")
    return str(made.client_cert), str(made.client_key)


def refusal_cases():  # type: ignore[no-untyped-def]
    def wrong_measurement(attester: SimAttester, tmp_path: Path):  # type: ignore[no-untyped-def]
        other = SimAttester(attester.directory, mr_enclave=b"\x66" * 32, isv_svn=3)
        key = new_key()
        return enclave_identity(tmp_path, make_certificate(other, key), key), REQUEST

    def debug_enclave(attester: SimAttester, tmp_path: Path):  # type: ignore[no-untyped-def]
        key = new_key()
        certificate = make_certificate(DebugEnclave(attester), key)  # type: ignore[arg-type]
        return enclave_identity(tmp_path, certificate, key), REQUEST

    def key_not_in_report_data(attester: SimAttester, tmp_path: Path):  # type: ignore[no-untyped-def]
        return enclave_identity(tmp_path, *forged_binding(attester)), REQUEST

    def key_not_in_legacy_report_data(attester: SimAttester, tmp_path: Path):  # type: ignore[no-untyped-def]
        return enclave_identity(tmp_path, *forged_binding(attester, (LEGACY,))), REQUEST

    def expired_certificate(attester: SimAttester, tmp_path: Path):  # type: ignore[no-untyped-def]
        key = new_key()
        past = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        certificate = make_certificate(
            attester, key, not_before=past, not_after=past + dt.timedelta(days=30)
        )
        return enclave_identity(tmp_path, certificate, key), REQUEST

    def malformed_request(attester: SimAttester, tmp_path: Path):  # type: ignore[no-untyped-def]
        key = new_key()
        identity = enclave_identity(tmp_path, make_certificate(attester, key), key)
        return identity, b"SECRET_PROVISION_RA_TLS_REQUEST_V2\0"

    return {  # case: (make the client's identity and request, what the audit record says)
        "wrong measurement": (wrong_measurement, "mr_enclave 6666"),
        "debug enclave": (debug_enclave, "Debug mode is enabled"),
        "key not matching the report data": (key_not_in_report_data, "pubkey-hash does not"),
        "key not matching the legacy report data": (
            key_not_in_legacy_report_data,
            "report_data does not bind the certificate's public key",
        ),
        "expired certificate": (expired_certificate, "not valid now"),
        "malformed request string": (malformed_request, "malformed"),
    }


@pytest.mark.parametrize("case", list(refusal_cases()))
def test_refusals_release_nothing(
    endpoint: Endpoint,
    attester: SimAttester,
    tmp_path: Path,
    case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    make, reason = refusal_cases()[case]
    identity, request = make(attester, tmp_path)
    audited, counted = audit_count(endpoint.kbs), unauthenticated_refusals(endpoint.kbs)

    with caplog.at_level(logging.INFO, logger="sealserve.kbs.service"):
        assert gramine_client(endpoint, identity, request) is None

    if case == "wrong measurement":  # a verified enclave the policy does not admit: audited
        record = last_audit(endpoint.kbs)
        assert record["decision"] == "denied" and reason in record["reason"]
    else:  # nothing verified: counted and logged, no audit row an attacker could multiply
        assert audit_count(endpoint.kbs) == audited
        assert unauthenticated_refusals(endpoint.kbs) == counted + 1
        assert reason in caplog.text


def test_a_plain_tls_client_certificate_is_refused(
    endpoint: Endpoint,
    certs,  # type: ignore[no-untyped-def]
    caplog: pytest.LogCaptureFixture,
) -> None:
    counted = unauthenticated_refusals(endpoint.kbs)
    with caplog.at_level(logging.INFO, logger="sealserve.kbs.service"):
        assert gramine_client(endpoint, ordinary_client_certificate(certs)) is None
    assert unauthenticated_refusals(endpoint.kbs) == counted + 1
    assert "no RA-TLS evidence" in caplog.text


def test_a_client_without_a_certificate_gets_nothing(endpoint: Endpoint) -> None:
    assert gramine_client(endpoint, None) is None


def test_nothing_is_released_while_no_resource_is_mapped(
    endpoint: Endpoint, attester: SimAttester, tmp_path: Path
) -> None:
    endpoint.kbs.store.delete_policy(SECRET_PROV_MAP)
    key = new_key()
    identity = enclave_identity(tmp_path, make_certificate(attester, key), key)

    assert gramine_client(endpoint, identity) is None
    assert "no resource is mapped" in last_audit(endpoint.kbs)["reason"]


RA_CONFIG = """{{
  "verify_mr_enclave": "on", "verify_mr_signer": "off",
  "verify_isv_prod_id": "on", "verify_isv_svn": "on",
  "mrs": [{{"mr_enclave": "{mr_enclave}", "mr_signer": "", "isv_prod_id": "0",
           "isv_svn": "3"}}]
}}"""


def test_end_to_end_against_sealserve_kbs_serve(tmp_path: Path) -> None:
    """The seed's deployment with one host name changed: `kbs serve --secret-prov-port`, the
    wrap key put and mapped with the seed's ra_config.json, the emulated enclave gets it."""
    import subprocess

    from sealserve.attestation.sim import init_sim
    from sealserve.tools.certs import make_oneway

    sim_dir = tmp_path / "sim"
    init_sim(sim_dir)  # the real clock: the process verifies at the current time
    keys = tmp_path / "kbs"
    subprocess.run([SEALSERVE, "kbs", "init", str(keys)], check=True, capture_output=True)
    certs = make_oneway("localhost", tmp_path / "tls", sans=["127.0.0.1"])
    # ready once the secret-provisioning port is bound (named after the KBS's own line)
    server = Child(sim_kbs_argv(tmp_path, certs, "--secret-prov-port", "0"), SECRET_PROV_ON)
    try:
        kbs_url = KBS_LISTENING.search(server.stdout)
        assert kbs_url, server.stdout
        admin = ["--url", kbs_url["url"], "--ca", str(certs.trust_anchor)]
        admin += ["--admin-token-file", str(keys / "admin.token")]
        (tmp_path / "wrap-key").write_bytes(SECRET)
        (tmp_path / "ra_config.json").write_text(RA_CONFIG.format(mr_enclave=MR_ENCLAVE.hex()))
        subprocess.run(
            [SEALSERVE, "kbs", "secret", "put", RESOURCE, "--file", str(tmp_path / "wrap-key")]
            + admin,
            check=True,
            capture_output=True,
        )
        mapped = subprocess.run(
            [SEALSERVE, "kbs", "secret-prov", "map", RESOURCE]
            + ["--ra-config", str(tmp_path / "ra_config.json"), "--insecure-sim"]
            + admin,
            capture_output=True,
            text=True,
        )
        assert mapped.returncode == 0, mapped.stderr
        endpoint = Endpoint(int(server.ready["port"]), str(certs.trust_anchor), None)  # type: ignore[arg-type]
        enclave = SimAttester(sim_dir, mr_enclave=MR_ENCLAVE, isv_svn=3)
        key = new_key()
        identity = enclave_identity(tmp_path, make_certificate(enclave, key), key)

        assert gramine_client(endpoint, identity) == SECRET

        impostor = SimAttester(sim_dir, mr_enclave=MR_ENCLAVE, isv_svn=2)
        key = new_key()
        identity = enclave_identity(tmp_path, make_certificate(impostor, key), key)
        assert gramine_client(endpoint, identity) is None
        audit = subprocess.run(
            [SEALSERVE, "kbs", "audit", "--resource", RESOURCE] + admin,
            capture_output=True,
            text=True,
        )
        decisions = [
            line for line in audit.stdout.splitlines() if '"action": "secret-prov"' in line
        ]
        assert ['"decision": "allowed"' in d for d in decisions] == [True, False]
    finally:
        server.stop()


def test_anonymous_failures_use_up_a_per_client_budget_and_attested_enclaves_do_not(
    kbs: Kbs,
    attester: SimAttester,
    certs,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    from sealserve.kbs.limits import AnonymousBudget

    kbs.store.set_policy(SECRET_PROV_MAP, f'{{"resources": ["{RESOURCE}"]}}', "json")
    context = server_context(str(certs.server_cert), str(certs.server_key))
    budget = AnonymousBudget(rate=0.001, burst=3)  # no refill within the test
    server = SecretProvServer(kbs.service, context, port=0, timeout=5, budget=budget).start()
    try:
        endpoint = Endpoint(server.port, str(certs.trust_anchor), kbs)
        key = new_key()
        enclave = enclave_identity(tmp_path, make_certificate(attester, key), key)
        for _ in range(5):  # served enclaves get their token back
            assert gramine_client(endpoint, enclave) == SECRET
        for _ in range(3):
            assert gramine_client(endpoint, enclave, b"x" * len(REQUEST)) is None
        limited = kbs.service.metrics.registry.get_sample_value(
            "sealserve_kbs_rate_limited_requests_total", {"limit": "secret-prov"}
        )
        assert gramine_client(endpoint, enclave) is None  # the budget is spent
        after = kbs.service.metrics.registry.get_sample_value(
            "sealserve_kbs_rate_limited_requests_total", {"limit": "secret-prov"}
        )
        assert (after or 0) == (limited or 0) + 1
    finally:
        server.stop()
