"""Quick Predict calls answered in grpc's poller thread (`grpc_inline`): which calls are, and
that they answer exactly as calls run in a handler thread do (values, errors, grpc's own
answer to a call without a message, the concurrent-RPC limit). Which thread ran a model is
recorded by wrapping `Servable.run`; nothing here measures time."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from sealserve.serving import grpc_inline, grpc_service
from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.servable import QUICK_RUN_SECONDS, Servable
from sealserve.serving.tensorflow_runtime import import_tensorflow
from tests.harness import RunningServer, server_options

tf = import_tensorflow()
HANDLER_THREADS = "sealserve-grpc"  # the prefix of the handler pool's threads (server.py)


def request(
    values: list[float] | np.ndarray, model: str = "half_plus_two"
) -> predict_pb2.PredictRequest:
    message = predict_pb2.PredictRequest()
    message.model_spec.name = model
    message.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray(values, np.float32)))
    return message


@pytest.fixture(scope="module")
def running(model_root: Path) -> Iterator[RunningServer]:
    options = server_options(
        [ModelConfig("half_plus_two", str(model_root / "half_plus_two"))],
        grpc_max_concurrent_rpcs=4,
    )
    server = RunningServer(options, StaticKeyProvider({}))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def predict(running: RunningServer) -> Iterator[prediction_service_pb2_grpc.PredictionServiceStub]:
    channel = running.channel()
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


@pytest.fixture
def run_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread of each model run from now on."""
    names: list[str] = []
    original = Servable.run

    def run(self: Servable, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        names.append(threading.current_thread().name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Servable, "run", run)
    return names


def answer(predict, message: predict_pb2.PredictRequest) -> list:  # noqa: ANN001
    return tf.make_ndarray(predict.Predict(message, timeout=30).outputs["y"]).tolist()


def warm(predict) -> None:  # noqa: ANN001
    """A signature is quick once its recent runs were quick (the first ones are not): after
    these, most calls are answered in the poller thread."""
    for _ in range(5):
        answer(predict, request([1.0, 2.0, 5.0]))


def test_internals_of_this_grpcio_are_there():
    # if grpcio changes them, calls only go back to the handler threads: this says so
    assert grpc_inline.available()


def test_quick_predicts_run_without_a_handler_thread(predict, run_threads, monkeypatch):
    # whether runs are quick is measured (`Servable.quick`); here they are, whatever the load
    monkeypatch.setattr(Servable, "quick", lambda self, key: True)
    for _ in range(20):
        assert answer(predict, request([1.0, 2.0, 5.0])) == [2.5, 3.0, 4.5]
    assert len(run_threads) == 20
    assert not [name for name in run_threads if name.startswith(HANDLER_THREADS)]


def test_large_inputs_and_slow_signatures_run_in_handler_threads(predict, run_threads, monkeypatch):
    warm(predict)
    big = np.arange(grpc_service.INLINE_REQUEST_BYTES // 4 + 1, dtype=np.float32)
    run_threads.clear()
    assert answer(predict, request(big)) == (big / 2 + 2).tolist()
    monkeypatch.setattr(Servable, "quick", lambda self, key: False)
    assert answer(predict, request([1.0])) == [2.5]
    assert len(run_threads) == 2
    assert all(name.startswith(HANDLER_THREADS) for name in run_threads)


def test_errors_answered_in_the_poller_thread_keep_their_status(predict):
    warm(predict)
    with pytest.raises(grpc.RpcError) as missing:
        predict.Predict(request([1.0], model="nope"), timeout=30)
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    wrong_dtype = request([1.0])
    wrong_dtype.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray([1], np.int32)))
    with pytest.raises(grpc.RpcError) as invalid:
        predict.Predict(wrong_dtype, timeout=30)
    assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_a_call_without_a_request_message_gets_grpcs_answer(running, predict):
    warm(predict)
    channel = running.channel()
    try:
        no_message = channel.stream_unary("/tensorflow.serving.PredictionService/Predict")
        with pytest.raises(grpc.RpcError) as error:
            no_message(iter(()), timeout=30)
    finally:
        channel.close()
    assert error.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "requires exactly one request message" in error.value.details()


def test_calls_answered_here_end_for_the_concurrency_limit(predict):
    """The server admits 4 calls at a time: calls answered in the poller thread must count
    as ended, or the fifth call on would be refused (RESOURCE_EXHAUSTED)."""
    warm(predict)
    for value in range(50):
        assert answer(predict, request([float(value)])) == [value / 2 + 2]


def test_concurrent_callers_each_get_their_own_answer(running):
    channel = running.channel()
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def caller(seed: int) -> bool:
        values = np.random.default_rng(seed).random(3, dtype=np.float32)
        expected = (values / 2 + 2).tolist()
        for _ in range(30):
            try:
                if answer(stub, request(values)) != expected:
                    return False
            except grpc.RpcError as error:  # the server's limit of 4 calls at a time
                if error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
        return True

    try:
        with ThreadPoolExecutor(8) as callers:
            assert all(callers.map(caller, range(8)))
    finally:
        channel.close()


class _Count(tf.Module):
    """A loop counted to its input: about 20 µs a run for 1, 32 s for ten million."""

    @tf.function(input_signature=[tf.TensorSpec([], tf.int64, name="n")])
    def count(self, n):  # noqa: ANN001, ANN201
        one = tf.constant(1, tf.int64)
        return {"y": tf.while_loop(lambda i: i < n, lambda i: i + one, [0 * one])[0]}


@pytest.fixture(scope="module")
def counting(tmp_path_factory: pytest.TempPathFactory, model_root: Path) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("count")
    module = _Count()
    tf.saved_model.save(module, str(root / "1"), signatures={"serving_default": module.count})
    options = server_options(
        [
            ModelConfig("count", str(root)),
            ModelConfig("half_plus_two", str(model_root / "half_plus_two")),
        ]
    )
    server = RunningServer(options, StaticKeyProvider({}))
    yield server
    server.stop()


def _runs_quickly(server: RunningServer, model: str, send: Callable[[], object]) -> bool:
    """Send `model` requests until its runs are as quick as the poller thread takes (by run
    time alone: `_fast_run`), 200 at most; whether they became so."""
    with server.manager.handle(model) as handle:
        for _ in range(200):
            send()
            if handle.servable._fast_run["serving_default"] < QUICK_RUN_SECONDS:
                return True
    return False


def test_a_signature_whose_work_an_input_decides_never_runs_in_the_poller_thread(
    counting: RunningServer, run_threads: list[str]
) -> None:
    """Before: the loop's runs were quick, so the poller thread ran the next one whatever its
    count: one request could stall every gRPC call of the server for as long as it chose
    (`bounded_ops`). Now it always runs in a handler thread; half_plus_two stays inline."""
    channel = counting.channel()
    try:
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        count = predict_pb2.PredictRequest()
        count.model_spec.name = "count"
        count.inputs["n"].CopyFrom(tf.make_tensor_proto(np.int64(3)))
        assert _runs_quickly(counting, "count", lambda: predict.Predict(count, timeout=30))
        assert _runs_quickly(counting, "half_plus_two", lambda: answer(predict, request([1.0])))
        run_threads.clear()
        assert tf.make_ndarray(predict.Predict(count, timeout=30).outputs["y"]) == 3
        assert answer(predict, request([1.0])) == [2.5]
    finally:
        channel.close()
    with counting.manager.handle("count") as handle:
        assert handle.servable.quick("serving_default") is False
    assert run_threads[0].startswith(HANDLER_THREADS)
    assert not run_threads[1].startswith(HANDLER_THREADS)
