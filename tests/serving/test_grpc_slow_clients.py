"""gRPC clients that hold calls open without doing their part: calls whose request message
never comes must not hold the server's handler threads (one per CPU by default), so every
other call is still answered."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.tensorflow_runtime import import_tensorflow
from tests.harness import RunningServer, server_options

tf = import_tensorflow()
HANDLER_THREADS = 2
ANSWER_SECONDS = 30  # a call that is not answered within this long was stalled


@pytest.fixture(scope="module")
def running(model_root: Path) -> Iterator[RunningServer]:
    options = server_options(
        [ModelConfig("half_plus_two", str(model_root / "half_plus_two"))],
        grpc_threads=HANDLER_THREADS,
        grpc_max_message_bytes=16 << 20,
    )
    server = RunningServer(options, StaticKeyProvider({}))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def channel(running: RunningServer) -> Iterator[grpc.Channel]:
    channel = running.channel(options=[("grpc.max_send_message_length", 16 << 20)])
    yield channel
    channel.close()


# every method with one request message the server serves
METHODS = [
    "/tensorflow.serving.PredictionService/Predict",
    "/tensorflow.serving.PredictionService/Classify",
    "/tensorflow.serving.PredictionService/Regress",
    "/tensorflow.serving.PredictionService/MultiInference",
    "/tensorflow.serving.PredictionService/GetModelMetadata",
    "/tensorflow.serving.ModelService/GetModelStatus",
    "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
]


def _every_kind_of_call(stubs: tuple) -> dict[str, object]:  # noqa: ANN001
    """One call of each kind a client relies on, answered (or raising)."""
    predict, models, health = stubs
    big = predict_pb2.PredictRequest()  # large: answered in a handler thread, not inline
    big.model_spec.name = "half_plus_two"
    big.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones(100_000, np.float32)))
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = "half_plus_two"
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "half_plus_two"
    return {
        "Predict": predict.Predict(big, timeout=ANSWER_SECONDS).outputs["y"].float_val[0],
        "GetModelMetadata": predict.GetModelMetadata(
            metadata, timeout=ANSWER_SECONDS
        ).model_spec.name,
        "GetModelStatus": models.GetModelStatus(status, timeout=ANSWER_SECONDS)
        .model_version_status[0]
        .state,
        "Check": health.Check(health_pb2.HealthCheckRequest(), timeout=ANSWER_SECONDS).status,
        "Watch": next(health.Watch(health_pb2.HealthCheckRequest(), timeout=ANSWER_SECONDS)).status,
    }


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.rsplit("/", 1)[1])
def test_calls_whose_message_never_comes_hold_no_handler_thread(
    running: RunningServer, channel: grpc.Channel, method: str
) -> None:
    """Before: each such call held a handler thread waiting for its message, so two of them
    stalled every call that needed one (here every call below timed out)."""
    never = threading.Event()

    def no_message() -> Iterator[bytes]:
        never.wait()
        yield from ()

    held = [channel.stream_stream(method)(no_message()) for _ in range(2 * HANDLER_THREADS + 1)]
    stubs = (
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
        health_pb2_grpc.HealthStub(channel),
    )
    try:
        answers = _every_kind_of_call(stubs)
    finally:
        for call in held:
            call.cancel()
        never.set()
    assert answers == {
        "Predict": 2.5,
        "GetModelMetadata": "half_plus_two",
        "GetModelStatus": get_model_status_pb2.ModelVersionStatus.AVAILABLE,
        "Check": health_pb2.HealthCheckResponse.SERVING,
        "Watch": health_pb2.HealthCheckResponse.SERVING,
    }


def test_a_call_closed_without_its_message_is_answered_as_grpc_does(
    channel: grpc.Channel,
) -> None:
    """Receiving the message before a handler thread takes the call keeps grpc's own answer
    to a client that half-closes without sending one, for every method."""
    for method in METHODS:
        with pytest.raises(grpc.RpcError) as refused:
            list(channel.stream_stream(method)(iter(()), timeout=ANSWER_SECONDS))
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED, method
        assert "requires exactly one request message" in refused.value.details(), method
