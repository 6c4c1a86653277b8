"""The KBS's `releases` metric cannot be grown by an attested caller: the NAME of
`sealserve/tls-cert/NAME` is the caller's choice, so it becomes a label value only where the
owner set a policy for that path; any other name is counted as `sealserve/tls-cert/(other)`.
A real KBS over HTTPS on loopback with a server CA, the simulated TEE, real CSRs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families

from sealserve.attestation.sim import SimAttester, SimTee
from sealserve.kbs.client import AttestedSession, KbsClient, KbsDenied
from sealserve.kbs.service import KbsService
from sealserve.kbs.store import DEFAULT_POLICY
from tests.harness import RunningKbs
from tests.kbs.conftest import POLICY, SVN, make_ca_service

pytestmark = pytest.mark.integration  # a KBS on loopback

KNOWN = "sealserve/tls-cert/known"


@pytest.fixture(scope="module")
def broker(
    tmp_path_factory: pytest.TempPathFactory, sim: SimTee, certs
) -> Iterator[tuple[str, str, KbsService]]:  # type: ignore[no-untyped-def]
    service = make_ca_service(tmp_path_factory.mktemp("kbs-labels"), sim)
    # the default policy admits the TEE for any name; `known` has a policy of its own
    service.store.set_policy(DEFAULT_POLICY, POLICY, "toml")
    service.store.set_policy(KNOWN, POLICY, "toml")
    server = RunningKbs(service, certs.server_cert, certs.server_key)
    try:
        yield server.url, str(certs.trust_anchor), service
    finally:
        server.stop()
        service.store.close()


def csr(key: ec.EllipticCurvePrivateKey, name: str) -> str:
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


def release_labels(service: KbsService) -> dict[tuple[str, str], float]:
    text = service.metrics.exposition().decode()
    return {
        (sample.labels["resource"], sample.labels["decision"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "sealserve_kbs_releases"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def test_certificate_names_the_caller_makes_up_add_no_metric_series(
    broker: tuple[str, str, KbsService], attester: SimAttester, sim_dir: Path
) -> None:
    url, ca, service = broker
    session = AttestedSession(KbsClient(url, ca_pem=ca, attempts=1), attester)
    key = ec.generate_private_key(ec.SECP256R1())
    names = ["known", *(f"made-up-{i}" for i in range(5))]
    for name in names:
        session.server_certificate(name, csr(key, name))
    # denied ones too: a TEE running other code, attested, that no policy admits
    other_code = SimAttester(sim_dir, mr_enclave=bytes(32), isv_svn=SVN)
    denied = AttestedSession(KbsClient(url, ca_pem=ca, attempts=1), other_code)
    for name in ("known", "made-up-a", "made-up-b"):
        with pytest.raises(KbsDenied, match="denied this TEE"):
            denied.server_certificate(name, csr(key, name))

    labels = release_labels(service)
    assert labels == {
        (KNOWN, "allowed"): 1,
        ("sealserve/tls-cert/(other)", "allowed"): 5,
        (KNOWN, "denied"): 1,
        ("sealserve/tls-cert/(other)", "denied"): 2,
    }
