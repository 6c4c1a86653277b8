"""#12 §3: HandleReloadConfigRequest only for the administrator's client certificate, only for
base paths under the configured root, and refusals that say nothing about the file system."""

from __future__ import annotations

import dataclasses
import hashlib

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from google.protobuf import text_format
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from sealserve.errors import InvalidArgument, PermissionDenied
from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.model_management import ModelManagementPolicy, parse_fingerprint
from sealserve.serving.tls import load_ssl_config
from sealserve.tools.certs import make_twoway
from tests.harness import RunningServer, server_options
from tests.serving.conftest import SECRET_KEY


def reload_request(models: dict[str, str]) -> model_management_pb2.ReloadConfigRequest:
    entries = "".join(
        f"config {{ name: '{n}' base_path: '{p}' model_platform: 'tensorflow' }} "
        for n, p in models.items()
    )
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(f"model_config_list {{ {entries}}}", request.config)
    return request


def fingerprint(path) -> str:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return certificate.fingerprint(hashes.SHA256()).hex()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("admin-pki")
    requesters = make_twoway("localhost", "requester", root / "requesters", sans=["127.0.0.1"])
    admins = make_twoway("localhost", "admin", root / "admins", sans=["127.0.0.1"])
    return requesters, admins


@pytest.fixture(scope="module")
def mtls_server(model_root, pki):
    requesters, admins = pki
    config = load_ssl_config(requesters.ssl_config, None)
    # the handshake admits both CAs; only the admin's pinned certificate may reload
    config = dataclasses.replace(config, custom_ca=config.custom_ca + admins.ca_cert.read_text())
    a = str(model_root / "half_plus_two")
    policy = ModelManagementPolicy(
        admin_fingerprints=frozenset({fingerprint(admins.client_cert)}),
        base_path_root=str(model_root),
        started_with={"a": a},
    )
    options = server_options([ModelConfig("a", a)], ssl=config, model_management=policy)
    running = RunningServer(options, StaticKeyProvider({"b": SECRET_KEY}))
    yield running
    running.stop()


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    return raised.value


@pytest.fixture
def requester_stub(mtls_server, pki):
    requesters, _ = pki
    return model_service_pb2_grpc.ModelServiceStub(
        mtls_server.channel(
            grpc.ssl_channel_credentials(
                root_certificates=requesters.ca_cert.read_bytes(),
                private_key=requesters.client_key.read_bytes(),
                certificate_chain=requesters.client_cert.read_bytes(),
            ),
            options=[("grpc.ssl_target_name_override", "localhost")],
        )
    )


@pytest.fixture
def admin_stub(mtls_server, pki):
    requesters, admins = pki
    return model_service_pb2_grpc.ModelServiceStub(
        mtls_server.channel(
            grpc.ssl_channel_credentials(
                root_certificates=requesters.ca_cert.read_bytes(),
                private_key=admins.client_key.read_bytes(),
                certificate_chain=admins.client_cert.read_bytes(),
            ),
            options=[("grpc.ssl_target_name_override", "localhost")],
        )
    )


def test_an_ordinary_client_certificate_cannot_unload_the_models(mtls_server, requester_stub):
    error = refused(
        lambda: requester_stub.HandleReloadConfigRequest(reload_request({}), timeout=60)
    )
    assert "only an administrator certificate" in error.details()
    # a malformed config tells a non-admin nothing either: refused before it is parsed
    bad = reload_request({"x": ""})
    refused(lambda: requester_stub.HandleReloadConfigRequest(bad, timeout=60))
    assert mtls_server.manager.model_names() == ["a"]


def test_reload_is_refused_by_default(model_root):
    a = str(model_root / "half_plus_two")
    server = RunningServer(server_options([ModelConfig("a", a)]), StaticKeyProvider({}))
    try:
        call = model_service_pb2_grpc.ModelServiceStub(server.channel()).HandleReloadConfigRequest
        refused(lambda: call(reload_request({}), timeout=60))
        refused(lambda: call(reload_request({"a": a}), timeout=60))
        assert server.manager.model_names() == ["a"]
    finally:
        server.stop()


def test_probing_base_paths_reveals_nothing(mtls_server, requester_stub, admin_stub, model_root):
    """Existing and missing directories outside the root, `..` escapes and relative paths
    are refused with one message, to requesters and to the admin alike."""
    probes = ["/etc", "/nonexistent-dir", f"{model_root}/../..", "/", "models", f"{model_root}x"]
    details = set()
    for path in probes:
        for who in (requester_stub, admin_stub):
            error = refused(
                lambda who=who, path=path: who.HandleReloadConfigRequest(
                    reload_request({"c": path}), timeout=60
                )
            )
            details.add(error.details())
    assert len(details) == 2  # one for requesters, one for the admin: no path named
    assert not any("/etc" in d or "nonexistent" in d or "exist" in d for d in details)
    assert mtls_server.manager.model_names() == ["a"]


def test_the_admin_reloads_models_under_the_root(mtls_server, admin_stub, model_root):
    a, b = str(model_root / "half_plus_two"), str(model_root / "secret_h2")
    admin_stub.HandleReloadConfigRequest(reload_request({"a": a, "b": b}), timeout=60)
    assert sorted(mtls_server.manager.model_names()) == ["a", "b"]
    admin_stub.HandleReloadConfigRequest(reload_request({"a": a}), timeout=60)
    assert mtls_server.manager.model_names() == ["a"]


# -- the policy on its own ----------------------------------------------------------------

ADMIN_DER = b"the admin's certificate"  # the pin path never parses the certificate
PIN = hashlib.sha256(ADMIN_DER).hexdigest()


@pytest.mark.parametrize(
    ("client", "paths", "allowed"),
    [
        (ADMIN_DER, [("m", "/models/m")], True),
        (ADMIN_DER, [], True),
        (ADMIN_DER, [("start", "/elsewhere/start")], True),  # as measured at start-up
        (ADMIN_DER, [("other", "/elsewhere/start")], False),
        (ADMIN_DER, [("m", "/models/../etc")], False),
        (ADMIN_DER, [("m", "/models/./m/../../etc")], False),
        (ADMIN_DER, [("m", "/modelsx/m")], False),
        (ADMIN_DER, [("m", "models/m")], False),
        (ADMIN_DER, [("m", "/models/m"), ("n", "/tmp")], False),
        (b"another certificate", [("m", "/models/m")], False),
        (None, [], False),
    ],
)
def test_policy_decisions(client, paths, allowed):
    policy = ModelManagementPolicy(
        admin_fingerprints=frozenset({PIN}),
        base_path_root="/models",
        started_with={"start": "/elsewhere/start"},
    )
    if allowed:
        policy.authorize(client, paths)
    else:
        with pytest.raises(PermissionDenied):
            policy.authorize(client, paths)


def test_without_a_root_no_base_path_is_allowed():
    policy = ModelManagementPolicy(admin_fingerprints=frozenset({PIN}))
    with pytest.raises(PermissionDenied, match="not under the model management root"):
        policy.authorize(ADMIN_DER, [("m", "/models/m")])
    policy.authorize(ADMIN_DER, [])  # an empty config names no path


def test_fingerprints_in_openssl_form():
    colons = ":".join(["AB"] * 32)
    assert parse_fingerprint(colons) == "ab" * 32
    for bad in ("", "ab" * 31, "zz" * 32):
        with pytest.raises(InvalidArgument, match="64 hex digits"):
            parse_fingerprint(bad)


def test_an_admin_ca_admits_its_certificates_only(model_root, pki):
    """--admin_client_ca: any certificate of the admins' CA may reload, a requester's may not,
    though both pass the handshake."""
    requesters, admins = pki
    config = load_ssl_config(requesters.ssl_config, None)
    config = dataclasses.replace(config, custom_ca=config.custom_ca + admins.ca_cert.read_text())
    admin_ca = x509.load_pem_x509_certificate(admins.ca_cert.read_bytes())
    a = str(model_root / "half_plus_two")
    policy = ModelManagementPolicy(
        admin_authorities=(admin_ca,), base_path_root=str(model_root), started_with={"a": a}
    )
    server = RunningServer(
        server_options([ModelConfig("a", a)], ssl=config, model_management=policy),
        StaticKeyProvider({}),
    )
    try:

        def stub(certs):
            credentials = grpc.ssl_channel_credentials(
                root_certificates=requesters.ca_cert.read_bytes(),
                private_key=certs.client_key.read_bytes(),
                certificate_chain=certs.client_cert.read_bytes(),
            )
            channel = server.channel(
                credentials, options=[("grpc.ssl_target_name_override", "localhost")]
            )
            return model_service_pb2_grpc.ModelServiceStub(channel)

        refused(lambda: stub(requesters).HandleReloadConfigRequest(reload_request({}), timeout=60))
        assert server.manager.model_names() == ["a"]
        stub(admins).HandleReloadConfigRequest(reload_request({}), timeout=60)
        assert server.manager.model_names() == []
    finally:
        server.stop()
