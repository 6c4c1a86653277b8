"""The requester verifies the server before sending a byte (issue #16, RA-TLS path): a server
started with `--attested_tls` serves both ports with an in-memory key whose certificate carries
its (simulated) TEE evidence; `sealserve predict --verify-server POLICY` and the Python API
check that evidence against the requester's policy, pin the certificate, and only then send.
A server without attestation, or attested with another measurement, gets nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sealserve.model_tree import encrypt_tree
from sealserve.tools.certs import make_twoway
from tests.harness import SEALSERVE, ServeProcess

# the brokered-TLS and revocation tests use these
__all__ = [
    "SEALSERVE",
    "Server",
    "encrypted_model_and_certs",
    "model_available",
    "run",
]


def run(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [SEALSERVE, *map(str, args)], capture_output=True, text=True, timeout=180
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


class Server(ServeProcess):
    """`sealserve serve FLAGS` (the harness's child process) on the ports it bound; `flags`
    as given, so `sealserve measure FLAGS` measures this very server."""

    def __init__(self, flags: list[str]) -> None:
        super().__init__(*flags, timeout=180)
        self.flags = flags
        self.grpc = self.grpc_port
        self.rest = self.rest_port

    def wait_ready(self, probe: Callable[[Server], bool]) -> None:
        """Wait until `probe(self)` (e.g. the model is AVAILABLE); fail with the server's
        output if it exits first or the probe never holds."""
        deadline = time.monotonic() + 180
        while not probe(self):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise AssertionError(f"the server did not become ready:\n{self.stderr}")
            time.sleep(0.3)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, half_plus_two):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("attested-tls")
    run("sim", "init", root / "sim")
    key, certs = encrypted_model_and_certs(root, half_plus_two)
    return {"root": root, "key": key, "certs": certs}


def encrypted_model_and_certs(root: Path, model: Path) -> tuple[Path, Any]:
    """A new model key `root/model.key`; `model` encrypted with it as `root/models/hpt/1`; a
    server and requester certificate pair in `root/certs` whose SSL config is protected with
    that key (an attested server reads only a protected one)."""
    key = root / "model.key"
    run("keygen", "-w", key)
    encrypt_tree(model, str(root / "models" / "hpt" / "1"), key.read_bytes())
    certs = make_twoway(
        "localhost",
        "requester",
        root / "certs",
        sans=["127.0.0.1"],
        encrypt_ssl_cfg_key=key.read_bytes(),
    )
    return key, certs


def serve_flags(setup, *, attested: bool) -> list[str]:  # type: ignore[no-untyped-def]
    root = setup["root"]
    flags = [
        "--model_name=hpt",
        f"--model_base_path={root / 'models' / 'hpt'}",
        f"--model_key=hpt={setup['key']}",
        "--port=0",  # the harness reads the ports the server bound from its start-up line
        "--rest_api_port=0",
        "--bind_address=127.0.0.1",
        f"--ssl_config_file={setup['certs'].ssl_config}",
    ]
    if attested:
        flags += ["--attested_tls", "--attestation=sim", f"--sim_dir={root / 'sim'}"]
    return flags


def model_available(server: Server, setup) -> bool:  # type: ignore[no-untyped-def]
    """Readiness through the ordinary mutual-TLS path, trusting whatever the server shows
    (this is the test's own probe, not what a requester does)."""
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    certs = setup["certs"]
    context.load_cert_chain(certs.client_cert, certs.client_key)
    try:
        with urllib.request.urlopen(
            f"https://127.0.0.1:{server.rest}/v1/models/hpt", context=context, timeout=5
        ) as answer:
            return json.loads(answer.read())["model_version_status"][0]["state"] == "AVAILABLE"
    except OSError:
        return False


def start(setup, *, attested: bool) -> Server:  # type: ignore[no-untyped-def]
    server = Server(serve_flags(setup, attested=attested))
    server.wait_ready(lambda s: model_available(s, setup))
    return server


@pytest.fixture(scope="module")
def attested_server(setup) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    server = start(setup, attested=True)
    yield server
    server.stop()


def policy_for(setup, server: Server, name: str, *, mr_enclave: str | None = None) -> Path:  # type: ignore[no-untyped-def]
    if mr_enclave is None and "measured" not in setup:
        setup["measured"] = run("measure", *server.flags).stdout.strip()
    measured = mr_enclave or setup["measured"]
    path = setup["root"] / name
    path.write_text(
        f'tee = ["sim"]\n[[sim]]\nmr_enclave = ["{measured}"]\nmr_signer = "any"\n'
        'isv_prod_id = "any"\n'
    )
    return path


def verify_flags(setup, policy: Path) -> list[object]:  # type: ignore[no-untyped-def]
    certs = setup["certs"]
    return [
        "--verify-server",
        policy,
        "--insecure-trust-sim-root",
        setup["root"] / "sim",
        "--cert",
        certs.client_cert,
        "--key",
        certs.client_key,
    ]


@pytest.mark.parametrize("transport", ["--grpc", "--rest"])
def test_predict_verifies_the_attested_server_then_predicts(
    setup,
    attested_server: Server,
    transport: str,  # type: ignore[no-untyped-def]
) -> None:
    policy = policy_for(setup, attested_server, "policy.toml")
    port = attested_server.grpc if transport == "--grpc" else attested_server.rest
    result = run(
        "predict",
        transport,
        f"127.0.0.1:{port}",
        "-m",
        "hpt",
        "--json",
        '{"instances": [1.0, 2.0, 5.0]}',
        *verify_flags(setup, policy),
    )
    assert json.loads(result.stdout) == {"predictions": [2.5, 3.0, 4.5]}


def test_a_server_measured_otherwise_is_refused_naming_the_claim(
    setup,
    attested_server: Server,  # type: ignore[no-untyped-def]
) -> None:
    policy = policy_for(setup, attested_server, "other.toml", mr_enclave="ab" * 32)
    result = run(
        "predict",
        "--grpc",
        f"127.0.0.1:{attested_server.grpc}",
        "-m",
        "hpt",
        "--json",
        '{"instances": [1.0]}',
        *verify_flags(setup, policy),
        check=False,
    )
    assert result.returncode != 0
    assert "does not satisfy the policy" in result.stderr
    assert "mr_enclave" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_server_without_attestation_is_refused(setup, attested_server: Server) -> None:  # type: ignore[no-untyped-def]
    """The same model, key and owner's certificate, but no attested TLS: refused."""
    policy = policy_for(setup, attested_server, "policy.toml")
    plain = start(setup, attested=False)
    try:
        result = run(
            "client",
            "-url",
            f"127.0.0.1:{plain.grpc}",
            "--model_name",
            "hpt",
            "--input_name",
            "x",
            "--shape",
            "1",
            "-cnum",
            "1",
            "-loop",
            "1",
            "--verify-server",
            policy,
            "--insecure-trust-sim-root",
            setup["root"] / "sim",
            "-crt",
            setup["certs"].client_cert,
            "-key",
            setup["certs"].client_key,
            check=False,
        )
    finally:
        plain.stop()
    assert result.returncode != 0
    assert "no RA-TLS evidence" in result.stderr


def test_python_api_with_the_stock_stubs(setup, attested_server: Server) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from sealserve.client import tls_files
    from sealserve.client.attested import ServerCheck, attested_grpc_channel

    check = ServerCheck.from_files(
        str(policy_for(setup, attested_server, "policy.toml")),
        insecure_trust_sim_root=str(setup["root"] / "sim"),
    )
    certs = setup["certs"]
    client = tls_files(None, str(certs.client_cert), str(certs.client_key))
    with attested_grpc_channel(f"127.0.0.1:{attested_server.grpc}", check, client) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "hpt"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([1.0, 3.0], np.float32)))
        response = stub.Predict(request, timeout=30)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [2.5, 3.5]


def test_auditors_read_the_evidence_over_rest_and_grpc(setup, attested_server: Server) -> None:  # type: ignore[no-untyped-def]
    import grpc

    from sealserve.client import grpc_credentials, ssl_context, tls_files
    from sealserve.client.attested import (
        ServerCheck,
        attested_tls,
        fetch_server_certificate,
        verify_server_certificate,
    )

    check = ServerCheck.from_files(
        str(policy_for(setup, attested_server, "policy.toml")),
        insecure_trust_sim_root=str(setup["root"] / "sim"),
    )
    certs = setup["certs"]
    client = tls_files(None, str(certs.client_cert), str(certs.client_key))
    tls = attested_tls(f"127.0.0.1:{attested_server.rest}", 8501, check, client)
    context = ssl_context(tls)
    context.check_hostname = False  # urllib checks the dialled IP; the pin is the check here
    with urllib.request.urlopen(
        f"https://127.0.0.1:{attested_server.rest}/v1/attestation", context=context, timeout=30
    ) as answer:
        document = json.loads(answer.read())
    assert document["tee"] == "sim" and document["format"] == "tcg-dice"
    served = fetch_server_certificate(f"127.0.0.1:{attested_server.grpc}", 8500, client)
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = x509.load_der_x509_certificate(served).public_bytes(Encoding.PEM).decode()
    assert document["certificate"] == pem  # both ports serve the one attested certificate
    assert verify_server_certificate(served, check).tee == "sim"

    options = [("grpc.ssl_target_name_override", "sealserve-attested")]
    with grpc.secure_channel(
        f"127.0.0.1:{attested_server.grpc}", grpc_credentials(tls), options=options
    ) as channel:
        raw = channel.unary_unary("/sealserve.v1.Attestation/Get")(b"", timeout=30)
    assert json.loads(raw) == document
