"""Probes for load balancers and Kubernetes: REST liveness and readiness, and the gRPC
health service following readiness as versions come and go."""

from __future__ import annotations

import threading
import time

import pytest
from google.protobuf import text_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from sealserve.serving.grpc_service import SERVICES
from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.model_management import ModelManagementPolicy
from sealserve.serving.rest import LIVE_PATH, READY_PATH
from tests.harness import RunningServer, server_options

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def grpc_health(server: RunningServer) -> dict[str, int]:
    with server.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return {
            service: stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            for service in ("", *SERVICES)
        }


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def reload(server: RunningServer, text: str) -> None:
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(text, request.config)
    with server.channel() as channel:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            request, timeout=60
        )


def test_live_and_ready_when_every_model_serves(server):
    live = server.http("GET", LIVE_PATH)
    assert (live.status, live.json()) == (200, {"live": True})
    ready = server.http("GET", READY_PATH)
    assert (ready.status, ready.json()) == (200, {"ready": True})
    assert set(grpc_health(server).values()) == {SERVING}
    assert server.http("HEAD", READY_PATH).status == 200  # probes may use HEAD


def test_probe_paths_leave_the_model_api_alone(server):
    # still TF Serving's routes and errors around them
    assert server.http("GET", "/v1/models/half_plus_two").status == 200
    assert server.http("POST", LIVE_PATH, b"{}").status == 400  # Malformed request
    assert server.http("GET", "/v1/health").status == 400


@pytest.fixture
def broken(model_root):
    """One good model and one whose only version cannot be decrypted (wrong key)."""
    models = [
        ModelConfig("good", str(model_root / "half_plus_two")),
        ModelConfig("broken", str(model_root / "secret_h2")),
    ]
    options = server_options(models, allow_unavailable_models=True)  # up, but not ready
    running = RunningServer(options, StaticKeyProvider({"broken": bytes(16)}))
    yield running
    running.stop()


def test_not_ready_while_a_model_has_no_available_version(broken):
    assert broken.http("GET", LIVE_PATH).status == 200  # alive all the same
    ready = broken.http("GET", READY_PATH)
    assert ready.status == 503
    body = ready.json()
    assert body["ready"] is False and list(body["not_ready"]) == ["broken"]
    (version,) = body["not_ready"]["broken"]["model_version_status"]
    assert version["version"] == "1" and version["state"] == "END"
    assert version["status"]["error_code"] == "DATA_LOSS"
    assert set(grpc_health(broken).values()) == {NOT_SERVING}
    # the good model serves regardless: readiness is about routing, not about refusing
    ok = broken.http("POST", "/v1/models/good:predict", {"instances": [1.0]})
    assert ok.status == 200


def test_grpc_health_and_readiness_follow_reloads(model_root):
    path = model_root / "half_plus_two"
    # reloads from any client: this test is about health, not who may reload
    anyone = ModelManagementPolicy(insecure_any_client=True, started_with={"a": str(path)})
    options = server_options([ModelConfig("a", str(path))], model_management=anyone)
    server = RunningServer(options, StaticKeyProvider({}))
    try:
        assert set(grpc_health(server).values()) == {SERVING}
        # a policy naming a version that does not exist: every version of `a` unloads
        reload(
            server,
            f"model_config_list {{ config {{ name: 'a' base_path: '{path}' "
            "model_platform: 'tensorflow' model_version_policy { specific { versions: 42 } } } }",
        )
        wait_for(lambda: set(grpc_health(server).values()) == {NOT_SERVING})
        assert server.http("GET", READY_PATH).status == 503
        reload(
            server,
            f"model_config_list {{ config {{ name: 'a' base_path: '{path}' "
            "model_platform: 'tensorflow' } }",
        )
        wait_for(lambda: set(grpc_health(server).values()) == {SERVING})
        assert server.http("GET", READY_PATH).status == 200
    finally:
        server.stop()


def test_shutdown_turns_readiness_off_first(model_root):
    options = server_options(
        [ModelConfig("a", str(model_root / "half_plus_two"))], shutdown_grace_seconds=0.5
    )
    server = RunningServer(options, StaticKeyProvider({}))
    stopper = threading.Thread(target=server.stop)
    with server.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == SERVING
        stopper.start()
        assert next(watch).status == NOT_SERVING  # told before the server goes away
    stopper.join(timeout=60)
