"""The KBS certifies only the TLS key the attested evidence bound (issue #16, defence in
depth): a stolen session cookie or attestation token, or a process outside the TEE riding the
session, cannot get an attested server certificate for a key of its own. Each refusal is a 403
with a generic message to the caller, the reason in the audit log, and a count in the metrics.
A real KBS over HTTPS on loopback, the simulated TEE, real CSRs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from sealserve.attestation.sim import SimAttester, SimTee
from sealserve.kbs.client import AttestedSession, KbsClient, KbsDenied, _session_cookie
from sealserve.kbs.protocol import (
    PROTOCOL_VERSION,
    SESSION_COOKIE,
    Attestation,
    TeePubKey,
    report_data_for,
    spki_sha256,
    tee_pubkey_jwk,
)
from sealserve.kbs.server_ca import claims_in_certificate
from sealserve.kbs.service import KbsService
from tests.harness import RunningKbs
from tests.kbs.conftest import MR_ENCLAVE, POLICY, RESOURCE, SECRET, make_ca_service

pytestmark = pytest.mark.integration  # a KBS on loopback (the `broker` fixture)

NAME = "hpt-server"
CERT_RESOURCE = f"sealserve/tls-cert/{NAME}"


@dataclass
class Broker:
    url: str
    ca: str
    service: KbsService


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, sim: SimTee, certs) -> Iterator[Broker]:  # type: ignore[no-untyped-def]
    service = make_ca_service(tmp_path_factory.mktemp("kbs-ca"), sim)
    for path in (RESOURCE, CERT_RESOURCE):
        service.store.set_policy(path, POLICY, "toml")
    service.store.put_resource(RESOURCE, SECRET)
    server = RunningKbs(service, certs.server_cert, certs.server_key)
    try:
        yield Broker(server.url, str(certs.trust_anchor), service)
    finally:
        server.stop()
        service.store.close()


def csr_for(key: ec.EllipticCurvePrivateKey) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, NAME)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


class Tee:
    """One attested session, made step by step: the TEE binds `tls_key` (None: no TLS key,
    as a Trustee client or a sealserve server before the binding attests)."""

    def __init__(
        self, broker: Broker, attester: SimAttester, tls_key: ec.EllipticCurvePrivateKey | None
    ) -> None:
        self.client = KbsClient(broker.url, ca_pem=broker.ca, attempts=1)
        answer = self.client.call(
            "POST", "/kbs/v0/auth", json_body={"version": PROTOCOL_VERSION, "tee": "sim"}
        )
        assert answer.status == 200, answer.body
        self.cookie = _session_cookie(answer)
        nonce = json.loads(answer.body)["nonce"]
        jwk = tee_pubkey_jwk(ECKey.generate_key("P-256"))
        bound = None if tls_key is None else spki_sha256(tls_key.public_key())
        quote = attester.evidence(report_data_for(nonce, jwk, tls_spki_sha256=bound)).quote
        body = Attestation(
            nonce=nonce, tee_pubkey=TeePubKey.from_jwk(jwk), quote=quote, tls_spki_sha256=bound
        ).to_json()
        answer = self.client.call(
            "POST", "/kbs/v0/attest", json_body=body, headers=self.cookie_header()
        )
        assert answer.status == 200, answer.body
        self.token = json.loads(answer.body)["token"]

    def cookie_header(self) -> dict[str, str]:
        return {"Cookie": f"{SESSION_COOKIE}={self.cookie}"}

    def token_header(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def certificate(self, csr: str, headers: dict[str, str]) -> Any:
        return self.client.call(
            "POST", f"/kbs/v0/server-certificate/{NAME}", json_body={"csr": csr}, headers=headers
        )


def last_audit(broker: Broker) -> dict[str, Any]:
    return broker.service.store.audit_records(since_seq=0, limit=100_000)[-1].to_json()


def denied_count(broker: Broker) -> float:
    return broker.service.metrics.releases.labels(CERT_RESOURCE, "denied")._value.get()


def leaf_of(answer: Any) -> x509.Certificate:
    assert answer.status == 200, answer.body
    return x509.load_pem_x509_certificate(json.loads(answer.body)["certificate_chain"].encode())


def assert_refused(broker: Broker, answer: Any, counted_before: float, reason: str) -> None:
    """403; the caller is told no key and no reason; the audit record and the metrics have it."""
    assert answer.status == 403, answer.body
    told = json.loads(answer.body)["detail"]
    assert "does not certify this key" in told and "audit log" in told
    assert reason not in told and "SPKI" not in told
    record = last_audit(broker)
    assert (record["action"], record["decision"]) == ("certificate", "denied")
    assert record["resource"] == CERT_RESOURCE and reason in record["reason"]
    assert denied_count(broker) == counted_before + 1


@pytest.mark.parametrize("credential", ["cookie", "token"])
def test_a_csr_for_another_key_over_an_attested_session_is_refused(
    broker: Broker, attester: SimAttester, credential: str
) -> None:
    """Who steals the session cookie or the token (or rides the session from outside the TEE)
    holds a key the TEE never quoted: no attested certificate for it."""
    tee_key, own_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    tee = Tee(broker, attester, tee_key)
    headers = tee.cookie_header() if credential == "cookie" else tee.token_header()
    before = denied_count(broker)
    answer = tee.certificate(csr_for(own_key), headers)
    assert_refused(broker, answer, before, "is not the TLS key the session's evidence bound")
    assert spki_sha256(own_key.public_key()) in last_audit(broker)["reason"]


def test_the_bound_key_is_issued_and_renewed_over_the_session(
    broker: Broker, attester: SimAttester
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    tee = Tee(broker, attester, key)
    first = leaf_of(tee.certificate(csr_for(key), tee.cookie_header()))
    assert first.public_key() == key.public_key()
    claims = claims_in_certificate(first)
    assert claims is not None and claims.mr_enclave == MR_ENCLAVE.hex()
    # renewal: the same key, over the same session, and with the token alone (another replica)
    for headers in (tee.cookie_header(), tee.token_header()):
        renewed = leaf_of(tee.certificate(csr_for(key), headers))
        assert renewed.public_key() == key.public_key()
        assert renewed.serial_number != first.serial_number
    # the audit log names the key each attestation bound and each certificate carries
    bound = spki_sha256(key.public_key())
    records = [r.to_json() for r in broker.service.store.audit_records(limit=100_000)[-4:]]
    assert [(r["action"], r["decision"]) for r in records] == [
        ("attest", "verified"),
        ("certificate", "issued"),
        ("certificate", "issued"),
        ("certificate", "issued"),
    ]
    assert all(bound in r["reason"] for r in records)


def test_a_session_that_bound_no_tls_key_can_get_keys_but_no_certificate(
    broker: Broker, attester: SimAttester
) -> None:
    """A Trustee client, or a sealserve server from before the binding, attests as it always
    did and gets its resources; a certificate needs an attestation that bound its key."""
    tee = Tee(broker, attester, None)
    assert (
        tee.client.call("GET", f"/kbs/v0/resource/{RESOURCE}", headers=tee.cookie_header()).status
        == 200
    )
    before = denied_count(broker)
    answer = tee.certificate(csr_for(ec.generate_private_key(ec.SECP256R1())), tee.token_header())
    assert_refused(broker, answer, before, "bound no TLS key")


def test_a_tls_key_the_quote_does_not_bind_cannot_be_claimed(
    broker: Broker, attester: SimAttester
) -> None:
    """The host swaps the runtime data's TLS key for its own after the TEE quoted: the quote
    no longer matches, the attestation is refused (and nothing is certified)."""
    for quoted, sent in (("a" * 64, "b" * 64), (None, "b" * 64), ("a" * 64, None)):
        client = KbsClient(broker.url, ca_pem=broker.ca, attempts=1)
        answer = client.call(
            "POST", "/kbs/v0/auth", json_body={"version": PROTOCOL_VERSION, "tee": "sim"}
        )
        cookie, nonce = _session_cookie(answer), json.loads(answer.body)["nonce"]
        jwk = tee_pubkey_jwk(ECKey.generate_key("P-256"))
        quote = attester.evidence(report_data_for(nonce, jwk, tls_spki_sha256=quoted)).quote
        body = Attestation(
            nonce=nonce, tee_pubkey=TeePubKey.from_jwk(jwk), quote=quote, tls_spki_sha256=sent
        ).to_json()
        answer = client.call(
            "POST",
            "/kbs/v0/attest",
            json_body=body,
            headers={"Cookie": f"{SESSION_COOKIE}={cookie}"},
        )
        assert answer.status == 401, (quoted, sent, answer.body)
        assert "report_data does not bind" in json.loads(answer.body)["detail"]


@pytest.mark.parametrize("value", ["A" * 64, "a" * 63, "a" * 65, "zz" * 32, 7, "", None])
def test_a_malformed_tls_key_binding_is_a_400(
    broker: Broker, attester: SimAttester, value: Any
) -> None:
    client = KbsClient(broker.url, ca_pem=broker.ca, attempts=1)
    answer = client.call(
        "POST", "/kbs/v0/auth", json_body={"version": PROTOCOL_VERSION, "tee": "sim"}
    )
    cookie, nonce = _session_cookie(answer), json.loads(answer.body)["nonce"]
    jwk = tee_pubkey_jwk(ECKey.generate_key("P-256"))
    quote = attester.evidence(report_data_for(nonce, jwk)).quote
    body = Attestation(nonce=nonce, tee_pubkey=TeePubKey.from_jwk(jwk), quote=quote).to_json()
    body["runtime-data"]["tls-spki-sha256"] = value
    answer = client.call(
        "POST", "/kbs/v0/attest", json_body=body, headers={"Cookie": f"{SESSION_COOKIE}={cookie}"}
    )
    assert answer.status == 400, answer.body
    assert "tls-spki-sha256" in json.loads(answer.body)["detail"]


def test_the_client_binds_its_tls_key_and_attests_again_only_for_a_new_one(
    broker: Broker, attester: SimAttester
) -> None:
    """`AttestedSession`: the key bound before the first request is certified over the same
    attestation that released the model key; renewing it costs no attestation; a new key is
    bound by a new one."""
    session = AttestedSession(KbsClient(broker.url, ca_pem=broker.ca, attempts=1), attester)
    first = ec.generate_private_key(ec.SECP256R1())
    session.bind_tls_key(first.public_key())
    assert session.get_resource(RESOURCE) == SECRET
    for _ in range(2):
        chain = session.server_certificate(NAME, csr_for(first))
        assert x509.load_pem_x509_certificate(chain.encode()).public_key() == first.public_key()
    assert session.attestations == 1
    second = ec.generate_private_key(ec.SECP256R1())
    chain = session.server_certificate(NAME, csr_for(second))
    assert x509.load_pem_x509_certificate(chain.encode()).public_key() == second.public_key()
    assert session.attestations == 2
    assert session.get_resource(RESOURCE) == SECRET  # the new attestation serves the keys too
    assert session.attestations == 2


def test_a_kbs_refusal_reaches_the_server_as_a_denial(
    broker: Broker, attester: SimAttester
) -> None:
    """The server's side of a refusal: `KbsDenied`, with the KBS's generic words."""
    session = AttestedSession(KbsClient(broker.url, ca_pem=broker.ca, attempts=1), attester)
    broker.service.store.set_policy(
        CERT_RESOURCE, POLICY.replace("min_isv_svn = 2", "min_isv_svn = 9"), "toml"
    )
    try:
        with pytest.raises(KbsDenied, match="denied this TEE"):
            session.server_certificate(NAME, csr_for(ec.generate_private_key(ec.SECP256R1())))
    finally:
        broker.service.store.set_policy(CERT_RESOURCE, POLICY, "toml")


def test_no_key_material_in_the_audit_log(broker: Broker) -> None:
    """The audit names keys by their SHA-256 only."""
    for record in broker.service.store.audit_records(since_seq=0, limit=100_000):
        assert "BEGIN" not in json.dumps(record.to_json())


def test_the_server_identity_binds_its_key_before_the_first_attestation(
    broker: Broker, attester: SimAttester
) -> None:
    """`serve --key_broker_tls_name`: the identity is made before anything fetches a key, so
    the attestation that releases the model key also binds the key the KBS then certifies."""
    from sealserve.serving.attested_identity import BrokeredIdentity

    session = AttestedSession(KbsClient(broker.url, ca_pem=broker.ca, attempts=1), attester)
    identity = BrokeredIdentity(session, NAME)
    assert session.get_resource(RESOURCE) == SECRET
    try:
        served = identity.start(None).current()
    finally:
        identity.stop()
    assert session.attestations == 1
    leaf = x509.load_pem_x509_certificate(served.server_cert.encode())
    key = serialization.load_pem_private_key(served.server_key.encode(), password=None)
    assert leaf.public_key() == key.public_key()
    assert spki_sha256(key.public_key()) in last_audit(broker)["reason"]
