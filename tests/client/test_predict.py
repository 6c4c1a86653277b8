"""`sealserve predict` against real servers on loopback: the seed's curl line over REST and
gRPC, plaintext / one-way / mutual TLS, versions and labels, .npy inputs, one-line errors."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from sealserve.client.predict import add_arguments, request_document, run
from sealserve.errors import Code, InvalidArgument, SealserveError
from tests.client import TINY_MODEL, tiny_expected

pytest_plugins = ["tests.client"]

SEED_BODY = '{"instances": [1.0, 2.0, 5.0]}'


def predict(*argv: str) -> str:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = io.StringIO()
    assert run(parser.parse_args(list(argv)), out=out) == 0
    return out.getvalue()


def rest(server) -> list[str]:
    return ["--rest", f"127.0.0.1:{server.rest_port}"]


def grpc(server) -> list[str]:
    return ["--grpc", f"127.0.0.1:{server.grpc_port}"]


def test_the_seeds_curl_line_over_rest_and_grpc_prints_the_same(client_plain_server):
    over_rest = predict(*rest(client_plain_server), "-m", "half_plus_two", "--json", SEED_BODY)
    assert json.loads(over_rest) == {"predictions": [2.5, 3.0, 4.5]}
    over_grpc = predict(*grpc(client_plain_server), "-m", "half_plus_two", "--json", SEED_BODY)
    assert over_grpc == over_rest  # gRPC outputs written as TF Serving's REST API writes them
    url = f"http://127.0.0.1:{client_plain_server.rest_port}/v1/models/half_plus_two:predict"
    assert predict("--rest", url, "--json", SEED_BODY) == over_rest


def test_shorthands_columnar_inputs_and_signatures(client_plain_server):
    for where in (rest(client_plain_server), grpc(client_plain_server)):
        model = [*where, "-m", "half_plus_two"]
        assert json.loads(predict(*model, "--json", "[1.0, 2.0]")) == {"predictions": [2.5, 3.0]}
        assert json.loads(predict(*model, "--json", '{"x": [2.0]}')) == {"outputs": [3.0]}
        assert json.loads(
            predict(
                *model, "--json", '{"inputs": {"x": [1.0]}}', "--signature_name", "serving_default"
            )
        ) == {"outputs": [2.5]}


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_versions_and_labels(client_plain_server, protocol):
    where = rest(client_plain_server) if protocol == "rest" else grpc(client_plain_server)
    for choice in (["--model_version", "2"], ["--version_label", "canary"]):
        out = predict(*where, "-m", "half_plus_two", *choice, "--json", "[4.0]")
        assert json.loads(out) == {"predictions": [4.0]}
    with pytest.raises(SealserveError) as raised:
        predict(*where, "-m", "half_plus_two", "--model_version", "9", "--json", "[4.0]")
    assert raised.value.code == Code.NOT_FOUND


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_npy_inputs(client_plain_server, protocol, tmp_path):
    images = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3))  # float64: sent as float32
    np.save(tmp_path / "images.npy", images)
    where = rest(client_plain_server) if protocol == "rest" else grpc(client_plain_server)
    out = json.loads(predict(*where, "-m", TINY_MODEL, "--npy", f"input={tmp_path}/images.npy"))
    np.testing.assert_allclose(out["outputs"], tiny_expected(images), rtol=1e-4, atol=1e-6)


def test_npy_input_errors(client_plain_server, tmp_path):
    np.save(tmp_path / "z.npy", np.ones((1, 8, 8, 3), np.complex64))
    model = [*grpc(client_plain_server), "-m", TINY_MODEL]
    with pytest.raises(InvalidArgument, match="complex64 array cannot be sent as DT_FLOAT"):
        predict(*model, "--npy", f"input={tmp_path}/z.npy")
    with pytest.raises(InvalidArgument, match="not in the signature, whose inputs are input"):
        predict(*model, "--npy", f"image={tmp_path}/z.npy")
    (tmp_path / "bad.npy").write_text("not numpy")
    with pytest.raises(InvalidArgument, match="not a numpy .npy file"):
        predict(*model, "--npy", f"input={tmp_path}/bad.npy")
    with pytest.raises(InvalidArgument, match="expected NAME=FILE"):
        predict(*grpc(client_plain_server), "-m", TINY_MODEL, "--npy", "input")


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
@pytest.mark.parametrize("mode", ["one-way", "mutual"])
def test_tls(request, mode, protocol):
    tls = request.getfixturevalue(
        "client_oneway_server" if mode == "one-way" else "client_mtls_server"
    )
    certs = tls.certs
    if mode == "one-way":
        flags = ["--ca", str(certs.server_cert)]
    else:
        flags = [
            "--ca",
            str(certs.ca_cert),
            "--cert",
            str(certs.client_cert),
            "--key",
            str(certs.client_key),
        ]
    where = ["--rest", tls.rest_address] if protocol == "rest" else ["--grpc", tls.grpc_target]
    out = predict(*where, *flags, "-m", "half_plus_two", "--json", SEED_BODY)
    assert json.loads(out) == {"predictions": [2.5, 3.0, 4.5]}


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_mutual_tls_refuses_a_client_without_certificate(client_mtls_server, protocol):
    where = (
        ["--rest", client_mtls_server.rest_address]
        if protocol == "rest"
        else ["--grpc", client_mtls_server.grpc_target]
    )
    with pytest.raises(SealserveError) as raised:
        predict(
            *where,
            "--ca",
            str(client_mtls_server.certs.ca_cert),
            "-m",
            "half_plus_two",
            "--json",
            SEED_BODY,
        )
    # the handshake fails without a word; the client says why, in one line
    assert raised.value.code == Code.UNAUTHENTICATED
    assert str(raised.value) == (
        "the server requires a client certificate (mutual TLS): give --cert and --key"
    )


@pytest.mark.parametrize(
    ("protocol", "message"),
    [
        ("rest", "HTTP 404: Servable not found for request: Latest(nope)"),
        ("grpc", "NOT_FOUND: Servable not found for request: Latest(nope)"),
    ],
)
def test_server_errors_are_one_line_with_the_servers_code(client_plain_server, protocol, message):
    where = rest(client_plain_server) if protocol == "rest" else grpc(client_plain_server)
    with pytest.raises(SealserveError) as raised:
        predict(*where, "-m", "nope", "--json", SEED_BODY)
    assert str(raised.value) == message
    assert raised.value.code == Code.NOT_FOUND


def test_bad_input_is_refused_before_sending(client_plain_server, tmp_path, monkeypatch):
    where = grpc(client_plain_server)
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        predict(*where, "-m", "half_plus_two", "--json", "[1.0,")
    with pytest.raises(InvalidArgument, match="--json or with --npy"):
        predict(*where, "-m", "half_plus_two")
    with pytest.raises(SealserveError, match="has no signature 'nope'"):
        predict(*where, "-m", "half_plus_two", "--signature_name", "nope", "--json", "[1.0]")
    with pytest.raises(SealserveError, match="Missing named input: x"):
        predict(*where, "-m", "half_plus_two", "--json", '{"y": [1.0]}')
    body = tmp_path / "body.json"
    body.write_text(SEED_BODY)
    assert json.loads(predict(*where, "-m", "half_plus_two", "--json", f"@{body}")) == {
        "predictions": [2.5, 3.0, 4.5]
    }
    monkeypatch.setattr("sys.stdin", io.StringIO("[7.0]"))
    assert json.loads(predict(*where, "-m", "half_plus_two", "--json", "-")) == {
        "predictions": [5.5]
    }


def test_request_document_rules():
    assert request_document("[1]", None) == ({"instances": [1]}, True)
    assert request_document('{"instances": [1]}', None) == ({"instances": [1]}, False)
    assert request_document('{"x": 1}', "s") == ({"inputs": {"x": 1}, "signature_name": "s"}, True)
    with pytest.raises(InvalidArgument, match="names signature 'a' but --signature_name says"):
        request_document('{"instances": [1], "signature_name": "a"}', "b")
    with pytest.raises(InvalidArgument, match="must be a request body"):
        request_document("3", None)


CLIENT_PROCESS = """
import sys
from sealserve.cli import main
code = main(sys.argv[1:])
print("runtime" if "tensorflow.python" in sys.modules else "protos only", file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("command", ["predict", "client"])
def test_the_clients_never_start_tensorflows_runtime(client_plain_server, command):
    """`sealserve predict` and `sealserve client` need TF Serving's protos only: they answer
    without the seconds and the ~600 MiB of TensorFlow's runtime."""
    target = f"127.0.0.1:{client_plain_server.grpc_port}"
    argv = {
        "predict": ["--grpc", target, "-m", "half_plus_two", "--json", SEED_BODY],
        "client": ["-url", target, "-cnum", "1", "-loop", "2", "--model_name", "half_plus_two"]
        + ["--input_name", "x", "--shape", "3"],
    }[command]
    done = subprocess.run(
        [sys.executable, "-c", CLIENT_PROCESS, command, *argv],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == "protos only"
