"""gRPC clients that hold calls open without doing their part. Calls whose request message
never comes must not hold the server's handler threads (one per CPU by default), so every
other call is still answered; answers a client does not take stay in the request budget
until they are dropped, at the send timeout or with the connection."""

from __future__ import annotations

import signal
import subprocess
import sys
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

from sealserve.serving import grpc_service, tensor_proto
from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.request_budget import BudgetOptions
from sealserve.serving.tensorflow_runtime import import_tensorflow
from tests.harness import RunningServer, server_options, until

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


def _every_kind_of_call(stubs: tuple) -> dict[str, object]:
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


# -- answers their clients do not take ---------------------------------------------------

PREDICT = "/tensorflow.serving.PredictionService/Predict"
SEND_TIMEOUT = 4.0
ANSWER_VALUES = 4_000_000  # a 16 MB answer: more than a connection's socket buffers take
# to a client stopped once its request has arrived: the larger, the longer the server takes
# to answer, so the client is stopped before it could read the answer whole
STOPPED_ANSWER_VALUES = 8_000_000


@pytest.fixture(scope="module")
def impatient(model_root: Path) -> Iterator[RunningServer]:
    """A server that drops answers not taken within 4 s."""
    options = server_options(
        [ModelConfig("half_plus_two", str(model_root / "half_plus_two"))],
        grpc_max_message_bytes=64 << 20,
        grpc_send_timeout_seconds=SEND_TIMEOUT,
        request_budget=BudgetOptions(max_request_bytes=64 << 20, max_in_flight_bytes=256 << 20),
    )
    server = RunningServer(options, StaticKeyProvider({}))
    yield server
    server.stop()


def _large_answer_request(values: int = ANSWER_VALUES) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones(values, np.float32)))
    return request


def _answer_bytes(values: int = ANSWER_VALUES) -> int:
    """What the server charges the answer to `_large_answer_request`."""
    return (
        grpc_service.RESPONSE_OVERHEAD_BYTES
        + grpc_service.TENSOR_OVERHEAD_BYTES
        + tensor_proto.encoded_bytes_estimate(np.ones(values, np.float32))
    )


def _served_afterwards(server: RunningServer) -> float:
    channel = server.channel()
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half_plus_two"
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.ones(3, np.float32)))
        return stub.Predict(request, timeout=ANSWER_SECONDS).outputs["y"].float_val[0]
    finally:
        channel.close()


def test_an_answer_its_client_grants_no_window_for_is_held_in_the_budget_then_dropped(
    impatient: RunningServer,
) -> None:
    """The slow-reader attack over HTTP/2: read the socket (so keepalive pings are answered)
    but never grant the flow-control window the answer needs. Before: the answer left the
    budget when its handler returned and stayed in grpc's buffers for as long as the client
    liked. Now it is counted until the call ends, and dropped at the send timeout."""
    budget = impatient.server.request_budget
    channel = impatient.channel(
        options=[
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.http2.bdp_probe", 0),  # the window stays at its initial 64 KiB
        ]
    )
    try:
        # a stream that is never read: grpc grants no window beyond the initial one
        unread = channel.unary_stream(
            PREDICT,
            request_serializer=predict_pb2.PredictRequest.SerializeToString,
            response_deserializer=predict_pb2.PredictResponse.FromString,
        )(_large_answer_request())
        # the handler has returned (its request and inputs released): only the answer
        assert until(lambda: budget.in_flight == _answer_bytes())
        assert until(lambda: budget.in_flight == 0)  # dropped at the send timeout
        with pytest.raises(grpc.RpcError) as dropped:
            next(unread)
        assert dropped.value.code() is grpc.StatusCode.CANCELLED
    finally:
        channel.close()
    assert _served_afterwards(impatient) == 2.5


STOPPED_CLIENT = """
import sys, grpc
from tensorflow_serving.apis import predict_pb2
channel = grpc.insecure_channel(sys.argv[1], options=[
    ("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)])
predict = channel.unary_unary(
    "/tensorflow.serving.PredictionService/Predict",
    response_deserializer=predict_pb2.PredictResponse.FromString)
try:
    predict(sys.stdin.buffer.read(), timeout=600)
    print("answered")
except grpc.RpcError as error:
    print(error.code().name)
"""


def test_an_answer_to_a_client_that_stopped_reading_is_dropped_with_its_connection(
    impatient: RunningServer,
) -> None:
    """A client that stops reading its socket altogether (here: a process stopped) cannot
    even be sent a cancellation: the connection answers no keepalive ping, so it is closed,
    and the answer with it."""
    budget = impatient.server.request_budget
    client = subprocess.Popen(
        [sys.executable, "-c", STOPPED_CLIENT, f"127.0.0.1:{impatient.grpc_port}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=False,
    )
    try:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(_large_answer_request(STOPPED_ANSWER_VALUES).SerializeToString())
        client.stdin.close()
        assert until(lambda: budget.in_flight > 0)  # the request has arrived whole
        client.send_signal(signal.SIGSTOP)
        # the handler is done; its answer unread
        assert until(lambda: budget.in_flight == _answer_bytes(STOPPED_ANSWER_VALUES))
        assert until(lambda: budget.in_flight == 0)  # the connection closed
        client.send_signal(signal.SIGCONT)
        assert client.stdout.read().decode().strip() in ("UNAVAILABLE", "CANCELLED")
    finally:
        client.send_signal(signal.SIGCONT)
        client.kill()
        client.wait()
    assert _served_afterwards(impatient) == 2.5


SILENT_CLIENT = """
import sys, threading, grpc
channel = grpc.insecure_channel(sys.argv[1])
never = threading.Event()
def no_message():
    never.wait()
    yield b""
call = channel.stream_stream("/grpc.health.v1.Health/Check")(no_message())
sys.stdin.read()  # until the test ends
"""


def test_a_connection_that_answers_no_keepalive_ping_is_closed(
    impatient: RunningServer,
) -> None:
    """A client gone silent (a process stopped, a peer cut off) with a call open: the server
    pings it after the send timeout without traffic and closes the connection when the ping is
    not answered within as long again, ending its calls. Before: they were kept for ever."""
    state = impatient.server._grpc._state  # grpc's own count of calls in progress
    client = subprocess.Popen(
        [sys.executable, "-c", SILENT_CLIENT, f"127.0.0.1:{impatient.grpc_port}"],
        stdin=subprocess.PIPE,
    )
    try:
        assert until(lambda: state.active_rpc_count == 1)
        client.send_signal(signal.SIGSTOP)
        assert until(lambda: state.active_rpc_count == 0)
    finally:
        client.send_signal(signal.SIGCONT)
        client.kill()
        client.wait()
