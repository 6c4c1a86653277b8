"""benchmarks/grpc_floor.py, the model-less PredictionService the OpenVINO benchmark measures
the transport against: a stock TF Serving client gets an answer of the model's output shape
over mutual TLS, and only with a client certificate; and how openvino_runtime.py turns its
rate into the limit a served model could reach."""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from sealserve.serving.tensor_proto import from_numpy, to_numpy
from sealserve.tools.certs import make_twoway
from tests.harness import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def floor(tmp_path_factory: pytest.TempPathFactory) -> Any:
    certs = make_twoway("localhost", "client.local", tmp_path_factory.mktemp("floor") / "certs")
    port = free_port()
    argv = [sys.executable, str(ROOT / "benchmarks" / "grpc_floor.py"), str(port)]
    proc = subprocess.Popen([*argv, str(certs.root), "predict", "1,1001"])
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        assert proc.poll() is None, "grpc_floor.py exited"
        yield certs, port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _channel(certs: Any, port: int, with_client_cert: bool) -> grpc.Channel:
    assert certs.ca_cert and certs.client_key and certs.client_cert
    credentials = grpc.ssl_channel_credentials(
        certs.ca_cert.read_bytes(),
        certs.client_key.read_bytes() if with_client_cert else None,
        certs.client_cert.read_bytes() if with_client_cert else None,
    )
    return grpc.secure_channel(
        f"127.0.0.1:{port}", credentials, [("grpc.ssl_target_name_override", "localhost")]
    )


def _request() -> Any:
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "resnet"
    request.inputs["input"].CopyFrom(from_numpy(np.ones((1, 224, 224, 3), np.float32)))
    return request


@pytest.mark.integration  # a server process
def test_a_stock_client_gets_an_answer_of_the_models_shape(floor: Any) -> None:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    certs, port = floor
    with _channel(certs, port, with_client_cert=True) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(_request(), timeout=30)
    assert response.model_spec.name == "resnet"
    assert to_numpy(response.outputs["predict"]).shape == (1, 1001)


@pytest.mark.integration
def test_it_needs_a_client_certificate_as_the_servers_it_stands_for(floor: Any) -> None:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    certs, port = floor
    with _channel(certs, port, with_client_cert=False) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as failed:
            stub.Predict(_request(), timeout=30)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as the scripts import each other
    return importlib.import_module("openvino_runtime"), importlib.import_module("serving")


def _rate(serving: Any, name: str, rate: float) -> Any:
    measurement = serving.Measurement(name, "images/s")
    measurement.add(
        {
            "completed": int(rate * 10),
            "duration": 10.0,
            "errors": 0,
            "first_error": "",
            "latencies_ms": [1.0],
        }
    )
    return measurement


def test_one_client_is_judged_against_the_paused_in_process_runs(bench: Any) -> None:
    openvino_runtime, serving = bench
    served, local = _rate(serving, "served", 90), _rate(serving, "local", 120)
    floor, paused = _rate(serving, "floor", 600), _rate(serving, "paused", 100)
    row = openvino_runtime.limit_row(served, local, floor, paused, "OpenVINO bf16", 1)
    assert row.reference_value == pytest.approx(100)
    assert row.ratio == pytest.approx(0.9)
    assert row.passed is None  # informative: the target stays the one against in-process


def test_more_clients_add_the_cpu_costs_of_grpc_and_the_run(bench: Any) -> None:
    openvino_runtime, serving = bench
    served, local = _rate(serving, "served", 90), _rate(serving, "local", 120)
    floor = _rate(serving, "floor", 600)
    row = openvino_runtime.limit_row(served, local, floor, None, "OpenVINO bf16", 4)
    assert row.reference_value == pytest.approx(100)  # 1 / (1/120 + 1/600)
    assert row.ratio == pytest.approx(0.9)


def test_a_paused_function_waits_before_each_call(bench: Any) -> None:
    openvino_runtime, _ = bench
    calls: list[dict[str, Any]] = []
    paused = openvino_runtime.after_pause(lambda **inputs: calls.append(inputs) or "ran", 0.0)
    assert paused(x=1) == "ran"
    assert calls == [{"x": 1}]
