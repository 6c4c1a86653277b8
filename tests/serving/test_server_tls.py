"""TLS on both ports of a real server, from the certificates `sealserve certs` makes, with the
ssl config itself encrypted as in the seed's enclave."""

from __future__ import annotations

import socket
import ssl
import urllib.error

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.tensorflow_runtime import import_tensorflow
from sealserve.serving.tls import load_ssl_config
from sealserve.tools.certs import make_oneway, make_twoway
from tests.harness import RunningServer, server_options
from tests.serving.conftest import SECRET_KEY

tf = import_tensorflow()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    root = tmp_path_factory.mktemp("certs")
    return make_twoway(
        "localhost",
        "client.local",
        root / "twoway",
        sans=["127.0.0.1"],
        encrypt_ssl_cfg_key=SECRET_KEY,
    )


@pytest.fixture(scope="module")
def mtls_server(model_root, certs):
    # ssl.cfg is a protected file: it opens with the model key, in memory
    config = load_ssl_config(certs.ssl_config, SECRET_KEY)
    assert config.client_verify
    options = server_options([ModelConfig("secret_h2", str(model_root / "secret_h2"))], ssl=config)
    running = RunningServer(options, StaticKeyProvider({"secret_h2": SECRET_KEY}))
    yield running
    running.stop()


def client_context(certs, with_client_cert: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca_cert))
    if with_client_cert:
        context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    return context


def grpc_credentials(certs, with_client_cert: bool = True) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=certs.ca_cert.read_bytes(),
        private_key=certs.client_key.read_bytes() if with_client_cert else None,
        certificate_chain=certs.client_cert.read_bytes() if with_client_cert else None,
    )


def grpc_predict(channel: grpc.Channel) -> list[float]:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "secret_h2"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray([1.0, 2.0, 5.0], np.float32)))
    response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
        request, timeout=30
    )
    return tf.make_ndarray(response.outputs["y"]).tolist()


def test_mutual_tls_on_rest(mtls_server, certs):
    result = mtls_server.http(
        "POST", "/v1/models/secret_h2:predict", {"instances": [1.0]}, context=client_context(certs)
    )
    assert result.json() == {"predictions": [2.5]}


def test_mutual_tls_on_grpc(mtls_server, certs):
    with mtls_server.channel(grpc_credentials(certs), f"localhost:{mtls_server.grpc_port}") as ch:
        assert grpc_predict(ch) == [2.5, 3.0, 4.5]


def test_rest_refuses_clients_without_a_certificate_and_plain_http(mtls_server, certs):
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        mtls_server.http(
            "POST",
            "/v1/models/secret_h2:predict",
            {"instances": [1.0]},
            context=client_context(certs, with_client_cert=False),
        )
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        mtls_server.http("POST", "/v1/models/secret_h2:predict", {"instances": [1.0]})


@pytest.mark.parametrize(
    ("version", "alert"),
    [
        # TLS 1.3 has an alert for it (RFC 8446 §6.2); a TLS 1.3 client learns of it at
        # its first read, its own handshake having ended before the server checked
        (ssl.TLSVersion.TLSv1_3, "TLSV13_ALERT_CERTIFICATE_REQUIRED"),
        # TLS 1.2 has none more precise than handshake_failure, which OpenSSL sends
        (ssl.TLSVersion.TLSv1_2, "SSLV3_ALERT_HANDSHAKE_FAILURE"),
    ],
)
def test_rest_tells_a_client_without_a_certificate_in_its_tls_alert(
    mtls_server, certs, version, alert
):
    """A raw TLS client that sends no certificate reads the server's alert (before the fix
    the REST port closed the connection without one: 'EOF occurred in violation of
    protocol')."""
    context = client_context(certs, with_client_cert=False)
    context.minimum_version = context.maximum_version = version
    with (
        pytest.raises(ssl.SSLError) as refused,
        socket.create_connection(("127.0.0.1", mtls_server.rest_port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET /v1/models/secret_h2 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        tls.recv(1)
    assert refused.value.reason == alert, refused.value


def test_grpc_refuses_clients_without_a_certificate_and_plaintext(mtls_server, certs):
    target = f"localhost:{mtls_server.grpc_port}"
    with (
        mtls_server.channel(grpc_credentials(certs, False), target) as channel,
        pytest.raises(grpc.RpcError) as raised,
    ):
        grpc_predict(channel)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    with mtls_server.channel(None, target) as channel, pytest.raises(grpc.RpcError):
        grpc_predict(channel)


def test_client_certificates_from_another_ca_are_refused(mtls_server, tmp_path):
    other = make_twoway("localhost", "intruder.local", tmp_path / "other")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(tmp_path / "other" / "ca_cert.pem").read_bytes(),
        private_key=other.client_key.read_bytes(),
        certificate_chain=other.client_cert.read_bytes(),
    )
    with (
        mtls_server.channel(credentials, f"localhost:{mtls_server.grpc_port}") as channel,
        pytest.raises(grpc.RpcError),
    ):
        grpc_predict(channel)


def test_one_way_tls_like_the_seeds_client(model_root, tmp_path):
    made = make_oneway("localhost", tmp_path / "oneway", sans=["127.0.0.1"])
    options = server_options(
        [ModelConfig("secret_h2", str(model_root / "secret_h2"))],
        ssl=load_ssl_config(made.ssl_config, None),
    )
    server = RunningServer(options, StaticKeyProvider({"secret_h2": SECRET_KEY}))
    try:
        # the seed's client: -crt server/cert.pem alone
        credentials = grpc.ssl_channel_credentials(root_certificates=made.server_cert.read_bytes())
        with server.channel(credentials, f"localhost:{server.grpc_port}") as channel:
            assert grpc_predict(channel) == [2.5, 3.0, 4.5]
        context = ssl.create_default_context(cafile=str(made.server_cert))
        assert server.http(
            "POST", "/v1/models/secret_h2:predict", {"instances": [2.0]}, context=context
        ).json() == {"predictions": [3.0]}
    finally:
        server.stop()
