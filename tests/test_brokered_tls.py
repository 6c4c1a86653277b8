"""Attested server certificates issued by the owner's KBS (issue #16): the server makes its TLS
key in memory, the KBS certifies it over the server's one attested session when the policy of
`sealserve/tls-cert/NAME` admits it, with the verified claims inside; the server renews it
before it expires without a restart; requesters check the KBS's server CA and the claims
against their own policy before sending anything."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from sealserve.tools.certs import make_oneway
from tests.harness import KbsProcess, sim_kbs_argv
from tests.test_attested_tls import Server, encrypted_model_and_certs, model_available, run

TLS_NAME = "hpt-server"


@pytest.fixture(scope="module")
def kbs(tmp_path_factory, half_plus_two) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("brokered")
    run("sim", "init", root / "sim")
    run("kbs", "init", root / "kbs")
    tls = make_oneway("localhost", root / "kbs-tls", sans=["127.0.0.1"])
    process = KbsProcess(
        sim_kbs_argv(
            root,
            tls,
            "--server-ca-key",
            root / "kbs" / "server-ca-key.pem",
            "--server-ca-cert",
            root / "kbs" / "server-ca.pem",
            "--server-cert-lifetime",
            "6",
        )  # fmt: skip
    )
    key, certs = encrypted_model_and_certs(root, half_plus_two)
    url = process.url
    admin = ["--url", url, "--ca", tls.server_cert]
    admin += ["--admin-token-file", root / "kbs" / "admin.token"]
    run("kbs", "secret", "put", "sealserve/model-key/hpt", "--file", key, *admin)
    yield {"root": root, "url": url, "ca": tls.server_cert, "admin": admin, "certs": certs}
    process.stop()


def server_flags(kbs: dict) -> list[str]:  # type: ignore[type-arg]
    root = kbs["root"]
    return [
        "--model_name=hpt",
        f"--model_base_path={root / 'models' / 'hpt'}",
        "--port=0",  # the harness reads the ports the server bound from its start-up line
        "--rest_api_port=0",
        "--bind_address=127.0.0.1",
        f"--ssl_config_file={kbs['certs'].ssl_config}",
        "--ssl_config_key=hpt",
        f"--key_broker={kbs['url']}",
        f"--key_broker_ca={kbs['ca']}",
        "--attestation=sim",
        f"--sim_dir={root / 'sim'}",
        f"--key_broker_tls_name={TLS_NAME}",
    ]


def sim_policy(path: Path, mr_enclave: str) -> Path:
    path.write_text(
        f'tee = ["sim"]\n[[sim]]\nmr_enclave = ["{mr_enclave}"]\nmr_signer = "any"\n'
        'isv_prod_id = "any"\n'
    )
    return path


@pytest.fixture(scope="module")
def server(kbs) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    flags = server_flags(kbs)
    measured = run("measure", *flags).stdout.strip()
    policy = sim_policy(kbs["root"] / "policy.toml", measured)
    for resource in ("sealserve/model-key/hpt", f"sealserve/tls-cert/{TLS_NAME}"):
        run("kbs", "policy", "set", resource, policy, *kbs["admin"])
    kbs["policy"] = policy
    started = Server(flags)
    started.wait_ready(lambda s: model_available(s, {"certs": kbs["certs"]}))
    yield started
    started.stop()


def predict(kbs: dict, server: Server, policy: Path, *, check: bool = True):  # type: ignore[no-untyped-def,type-arg]
    certs = kbs["certs"]
    return run(
        "predict",
        "--grpc",
        f"127.0.0.1:{server.grpc}",
        "-m",
        "hpt",
        "--json",
        '{"instances": [1.0, 2.0, 5.0]}',
        "--verify-server",
        policy,
        "--server-ca",
        kbs["root"] / "kbs" / "server-ca.pem",
        "--cert",
        certs.client_cert,
        "--key",
        certs.client_key,
        check=check,
    )


def served_certificate(kbs: dict, server: Server) -> x509.Certificate:  # type: ignore[type-arg]
    from sealserve.client import tls_files
    from sealserve.client.attested import fetch_server_certificate

    certs = kbs["certs"]
    client = tls_files(None, str(certs.client_cert), str(certs.client_key))
    der = fetch_server_certificate(f"127.0.0.1:{server.rest}", 8501, client)
    return x509.load_der_x509_certificate(der)


def test_the_kbs_certifies_the_attested_server_and_requesters_check_it(kbs, server) -> None:  # type: ignore[no-untyped-def]
    from sealserve.kbs.server_ca import claims_in_certificate

    certificate = served_certificate(kbs, server)
    claims = claims_in_certificate(certificate)
    assert claims is not None and claims.tee == "sim"
    assert claims.mr_enclave == run("measure", *server.flags).stdout.strip()

    result = predict(kbs, server, kbs["policy"])
    assert json.loads(result.stdout) == {"predictions": [2.5, 3.0, 4.5]}

    # the model key and the first certificate came over one attestation, which bound the
    # certified key (each renewal's new key is bound by an attestation of its own)
    audit = [json.loads(line) for line in run("kbs", "audit", *kbs["admin"]).stdout.splitlines()]
    actions = [record["action"] for record in audit]
    first_certificate = actions.index("certificate")
    assert actions[:first_certificate].count("attest") == 1
    assert "release" in actions[:first_certificate]
    assert all(r["decision"] != "denied" for r in audit if r["action"] == "certificate")


def test_a_requester_whose_policy_the_claims_miss_sends_nothing(kbs, server) -> None:  # type: ignore[no-untyped-def]
    other = sim_policy(kbs["root"] / "other.toml", "cd" * 32)
    result = predict(kbs, server, other, check=False)
    assert result.returncode != 0
    assert "does not satisfy the policy" in result.stderr and "mr_enclave" in result.stderr


def test_the_certificate_is_renewed_without_a_restart(kbs, server) -> None:  # type: ignore[no-untyped-def]
    first = served_certificate(kbs, server)
    deadline = time.monotonic() + 120
    renewed = first
    while renewed.serial_number == first.serial_number and time.monotonic() < deadline:
        time.sleep(1)
        renewed = served_certificate(kbs, server)
    assert renewed.serial_number != first.serial_number
    assert renewed.public_key() != first.public_key()  # a new key each time
    assert server.process.poll() is None
    result = predict(kbs, server, kbs["policy"])
    assert json.loads(result.stdout) == {"predictions": [2.5, 3.0, 4.5]}


def test_a_certificate_from_the_owner_ca_without_claims_is_refused(kbs) -> None:  # type: ignore[no-untyped-def]
    """An ordinary server certificate (the owner's TLS CA, not the KBS's server CA) is not
    an attested one."""
    from sealserve.client.attested import ServerCheck, ServerNotAttested, verify_server_certificate

    check = ServerCheck.from_files(
        str(kbs["policy"]), server_ca=str(kbs["root"] / "kbs" / "server-ca.pem")
    )
    ordinary = x509.load_pem_x509_certificate(Path(kbs["certs"].server_cert).read_bytes())
    from cryptography.hazmat.primitives.serialization import Encoding

    with pytest.raises(ServerNotAttested, match="no claims"):
        verify_server_certificate(ordinary.public_bytes(Encoding.DER), check)
