"""Batching on a real server: REST and gRPC requests for one version meet in one queue,
are merged into one model run, and every caller gets exactly its own rows; a full queue
refuses at once. Batches run only when full (timeouts no test waits for), so what is asserted
does not depend on how fast the threads happen to run."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from sealserve.serving.batching import BatchingOptions
from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.metrics import MonitoringConfig
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.servable import Servable
from sealserve.serving.tensor_proto import from_numpy, to_numpy
from tests.harness import RunningServer, server_options
from tests.serving.conftest import SECRET_KEY

METRICS = "/monitoring/prometheus/metrics"


@pytest.fixture(autouse=True)
def never_quick(monkeypatch):
    """These tests are about the batch queue, so every request goes through it: a request of
    a quick signature that finds its queue idle is run at once instead (the data plane's
    shortcut), and whether half_plus_two's runs count as quick depends on this machine."""
    monkeypatch.setattr(Servable, "quick", lambda self, key: False)


def test_rest_and_grpc_requests_share_batches_and_get_their_own_rows(model_root):
    """A batch runs only when full (its timeout is longer than any test): 4 REST requests of
    2 rows and 8 gRPC requests of 1 row fill exactly one batch of 16, so they can only have
    been answered from one model run, whatever the order they arrived in."""
    batching = BatchingOptions(
        max_batch_size=16,
        batch_timeout_micros=600_000_000,
        num_batch_threads=1,
        allowed_batch_sizes=(4, 8, 16),
    )
    options = server_options(
        [ModelConfig("secret_h2", str(model_root / "secret_h2"))],
        batching=batching,
        inference_threads=16,
    )
    server = RunningServer(options, StaticKeyProvider({"secret_h2": SECRET_KEY}))
    channel = server.channel()
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:

        def rest(i: int) -> list[float]:
            xs = [float(i), float(i) + 0.5]
            return server.http("POST", "/v1/models/secret_h2:predict", {"instances": xs}).json()[
                "predictions"
            ]

        def grpc_call(i: int) -> list[float]:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "secret_h2"
            from_numpy(np.asarray([float(i)], np.float32), out=request.inputs["x"])
            return to_numpy(stub.Predict(request, timeout=60).outputs["y"]).tolist()

        with ThreadPoolExecutor(12) as pool:
            rest_results = pool.map(rest, range(4))
            grpc_results = pool.map(grpc_call, range(10, 18))
            rest_results, grpc_results = list(rest_results), list(grpc_results)
        for i, ys in enumerate(rest_results):
            assert ys == [0.5 * i + 2, 0.5 * (i + 0.5) + 2]
        for i, ys in enumerate(grpc_results, start=10):
            assert ys == [0.5 * i + 2]
        assert server.server.dataplane.batcher.batches_run == 1  # one queue, one run
    finally:
        channel.close()
        server.stop()


def queue_depth(server: RunningServer) -> float | None:
    """The batcher's queue depth of secret_h2, read from the server's metrics."""
    for line in server.http("GET", METRICS).body.decode().splitlines():
        if line.startswith('sealserve_batch_queue_depth{model_name="secret_h2"}'):
            return float(line.split()[-1])
    return None


def test_a_full_batch_queue_answers_503_at_once(model_root):
    """A queue holding `max_enqueued_batches` batches refuses the next request at once with
    503 rather than letting it wait; what was queued is answered once its batch fills."""
    batching = BatchingOptions(
        max_batch_size=2,
        max_enqueued_batches=1,
        num_batch_threads=1,
        batch_timeout_micros=600_000_000,  # a batch runs only when full
    )
    options = server_options(
        [ModelConfig("secret_h2", str(model_root / "secret_h2"))],
        batching=batching,
        inference_threads=8,
        monitoring=MonitoringConfig(enable=True, path=METRICS),
    )
    server = RunningServer(options, StaticKeyProvider({"secret_h2": SECRET_KEY}))

    def predict(xs: list[float]) -> int:
        return server.http("POST", "/v1/models/secret_h2:predict", {"instances": xs}).status

    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(predict, [1.0])  # half a batch: it waits in the queue
            deadline = time.monotonic() + 60
            while queue_depth(server) != 1:
                assert time.monotonic() < deadline, "the first request never queued"
                time.sleep(0.01)
            assert predict([2.0, 3.0]) == 503  # a second batch: more than the queue holds
            assert not first.done()
            last = pool.submit(predict, [4.0])  # fills the first batch: both are answered
            assert (first.result(60), last.result(60)) == (200, 200)
    finally:
        server.stop()


def test_grpc_runs_a_quick_signature_at_once_with_batching_checks(model_root, monkeypatch):
    """Over gRPC, a quick signature's request is not queued (a handler thread waiting for a
    batch costs more than merging quick runs saves): it is answered although its batch could
    never fill or time out, no batch is run, and it is still refused as a batched request
    is when it holds more rows than a batch."""
    monkeypatch.setattr(Servable, "quick", lambda self, key: True)
    batching = BatchingOptions(
        max_batch_size=2, batch_timeout_micros=600_000_000, num_batch_threads=1
    )
    options = server_options(
        [ModelConfig("secret_h2", str(model_root / "secret_h2"))], batching=batching
    )
    server = RunningServer(options, StaticKeyProvider({"secret_h2": SECRET_KEY}))
    channel = server.channel()
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    def request(xs: list[float]) -> predict_pb2.PredictRequest:
        message = predict_pb2.PredictRequest()
        message.model_spec.name = "secret_h2"
        from_numpy(np.asarray(xs, np.float32), out=message.inputs["x"])
        return message

    try:
        answer = stub.Predict(request([1.0]), timeout=60)
        assert to_numpy(answer.outputs["y"]).tolist() == [2.5]
        assert server.server.dataplane.batcher.batches_run == 0
        with pytest.raises(grpc.RpcError) as refused:
            stub.Predict(request([1.0, 2.0, 3.0]), timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "Task size 3 is larger than maximum input batch size 2"
    finally:
        channel.close()
        server.stop()
