"""The requester's check of a Kubernetes replica (docs/deployment.md, section 5), with the
deployment's own artefacts: the KBS's server CA as `kbs init` makes it and the Secret mounts it
(`sealserve-kbs-server-ca`), the certified name the CoCo pod passes (`--key_broker_tls_name`),
and the TDX policy `deploy/coco/initdata.py policy` makes from the committed init-data. The
KBS's own issuing code certifies a key; the requester's `verify_server_certificate` judges it.

What holds (issue #16): only a certificate the owner's KBS CA issued, valid now, whose claims
satisfy the owner's policy (this TD image, this init-data), is accepted; a certificate from any
other CA (another broker, carrying the same claims), an ordinary one without claims, an
expired one, or one for a TD launched with other init-data (say, an agent policy that allows
exec) is refused, and the requester sends nothing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sealserve.attestation import Claims
from sealserve.client.attested import ServerCheck, ServerNotAttested, verify_server_certificate
from sealserve.kbs.protocol import spki_sha256
from sealserve.kbs.server_ca import CA_FILES, ServerCA, make_server_ca
from sealserve.tools.certs import make_oneway
from tests.deploy.common import REPO, load_script
from tests.deploy.test_kubernetes import _coco_entrypoint, _container, _server

initdata_tool = load_script(REPO / "deploy/coco/initdata.py")
MR_TD = "a1" * 48
RTMRS = ["b2" * 48, "c3" * 48, "d4" * 48]


def _pod_tls_name() -> str:
    from sealserve.cli import build_parser

    container = _container(_server("tdx"), "server")
    args = build_parser().parse_args([*_coco_entrypoint(), *container["args"]][1:])
    name = args.key_broker_tls_name
    assert isinstance(name, str)
    return name


def _committed_initdata() -> str:
    return (REPO / "deploy/coco/initdata.toml").read_text()


def _td_claims(initdata: str) -> Claims:
    """What the KBS verified of a CoCo pod's quote: this TD, launched with this init-data."""
    return Claims(
        tee="tdx",
        quote_version=4,
        tcb_status="UpToDate",
        advisory_ids=(),
        report_data=b"\0" * 64,
        debug=False,
        fmspc="00906ED50000",
        collateral_issued_at=int(time.time()) - 3600,
        mr_td=MR_TD,
        rtmr0=RTMRS[0],
        rtmr1=RTMRS[1],
        rtmr2=RTMRS[2],
        mr_config_id=initdata_tool.mrconfigid(initdata),
    )


def _kbs_ca(directory: Path) -> ServerCA:
    """The CA as the KBS loads it from the Secret's files (kbs init's server-ca files)."""
    directory.mkdir()
    make_server_ca(directory)
    return ServerCA.load(
        str(directory / CA_FILES["key"]), str(directory / CA_FILES["cert"]), lifetime_seconds=3600
    )


def _issued(ca: ServerCA, claims: Claims, *, now: int | None = None) -> bytes:
    """The leaf certificate (DER) the KBS issues a replica for the TLS key its TEE made."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "replica")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    chain = ca.issue(
        csr,
        _pod_tls_name(),
        claims,
        int(time.time()) if now is None else now,
        bound_spki=spki_sha256(key.public_key()),
    )
    leaf = x509.load_pem_x509_certificates(chain.encode())[0]
    return leaf.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def owner(tmp_path: Path) -> tuple[ServerCA, ServerCheck]:
    """The owner's KBS CA, and the requester's check: that CA's certificate (the ConfigMap
    sealserve-server-ca) and the owner's TDX policy for the committed init-data."""
    ca = _kbs_ca(tmp_path / "kbs-keys")
    policy = tmp_path / "policy.toml"
    policy.write_text(initdata_tool.kbs_policy(_committed_initdata(), MR_TD, RTMRS))
    published = tmp_path / "server-ca.pem"
    published.write_text(ca.certificate_pem)
    return ca, ServerCheck.from_files(str(policy), server_ca=str(published))


def test_a_replica_the_owner_kbs_certified_is_accepted(owner: tuple[ServerCA, ServerCheck]) -> None:
    ca, check = owner
    claims = verify_server_certificate(_issued(ca, _td_claims(_committed_initdata())), check)
    assert claims.mr_config_id == initdata_tool.mrconfigid(_committed_initdata())
    leaf = x509.load_der_x509_certificate(_issued(ca, _td_claims(_committed_initdata())))
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["sealserve.sealserve.svc"]


def test_a_td_launched_with_other_init_data_is_refused(
    owner: tuple[ServerCA, ServerCheck],
) -> None:
    """The host launches the pod with an agent policy that lets it exec into the TD: another
    MRCONFIGID. Even a certificate the owner's CA issued for it (under a careless
    tls-cert policy) does not satisfy the requester's policy."""
    ca, check = owner
    looser = _committed_initdata().replace(
        "default ExecProcessRequest := false", "default ExecProcessRequest := true"
    )
    with pytest.raises(ServerNotAttested, match="mr_config_id"):
        verify_server_certificate(_issued(ca, _td_claims(looser)), check)


def test_a_certificate_from_another_kbs_ca_is_refused_whatever_its_claims(
    owner: tuple[ServerCA, ServerCheck], tmp_path: Path
) -> None:
    """Someone runs a broker of their own and certifies a key outside any TEE with the claims
    the owner's policy wants: not the owner's CA, refused."""
    _, check = owner
    other = _kbs_ca(tmp_path / "other-kbs-keys")
    with pytest.raises(ServerNotAttested, match="not issued by the given server CA"):
        verify_server_certificate(_issued(other, _td_claims(_committed_initdata())), check)


def test_an_expired_certificate_is_refused(owner: tuple[ServerCA, ServerCheck]) -> None:
    """A replica whose certificate the KBS stopped renewing (policy changed, KBS gone)."""
    ca, check = owner
    long_ago = int(time.time()) - 2 * 3600
    expired = _issued(ca, _td_claims(_committed_initdata()), now=long_ago)
    with pytest.raises(ServerNotAttested, match="not valid now"):
        verify_server_certificate(expired, check)


def test_an_ordinary_server_certificate_is_refused(
    owner: tuple[ServerCA, ServerCheck], tmp_path: Path
) -> None:
    """ssl.cfg's certificate (sealserve certs), as the servers served before: no claims."""
    _, check = owner
    ordinary = make_oneway("sealserve.sealserve.svc", tmp_path / "tls")
    der = x509.load_pem_x509_certificate(Path(ordinary.server_cert).read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    with pytest.raises(ServerNotAttested):
        verify_server_certificate(der, check)
