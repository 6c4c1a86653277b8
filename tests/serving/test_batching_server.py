"""Batching on a real server: REST and gRPC requests for one version meet in one queue,
are merged into fewer model runs, and every caller gets exactly its own rows."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from sealserve.serving.batching import BatchingOptions
from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.tensor_proto import from_numpy, to_numpy
from tests.serving.conftest import SECRET_KEY, server_options
from tests.serving.harness import RunningServer


def test_rest_and_grpc_requests_share_batches_and_get_their_own_rows(model_root):
    batching = BatchingOptions(
        max_batch_size=16,
        batch_timeout_micros=20_000,
        num_batch_threads=1,
        allowed_batch_sizes=(4, 8, 16),
    )
    options = server_options(
        [ModelConfig("secret_h2", str(model_root / "secret_h2"))],
        batching=batching,
        inference_threads=8,
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
            return to_numpy(stub.Predict(request, timeout=30).outputs["y"]).tolist()

        with ThreadPoolExecutor(24) as pool:
            rest_results = pool.map(rest, range(40))
            grpc_results = pool.map(grpc_call, range(40))
            rest_results, grpc_results = list(rest_results), list(grpc_results)
        for i, ys in enumerate(rest_results):
            assert ys == [0.5 * i + 2, 0.5 * (i + 0.5) + 2]
        for i, ys in enumerate(grpc_results):
            assert ys == [0.5 * i + 2]
        runs = server.server.dataplane.batcher.batches_run
        assert runs < 80  # merged: fewer model runs than the 80 requests
    finally:
        channel.close()
        server.stop()


def test_a_full_batch_queue_answers_503(model_root):
    batching = BatchingOptions(
        max_batch_size=1, max_enqueued_batches=1, num_batch_threads=1, batch_timeout_micros=0
    )
    options = server_options(
        [ModelConfig("secret_h2", str(model_root / "secret_h2"))],
        batching=batching,
        inference_threads=8,
    )
    server = RunningServer(options, StaticKeyProvider({"secret_h2": SECRET_KEY}))
    try:
        with ThreadPoolExecutor(32) as pool:
            statuses = list(
                pool.map(
                    lambda i: (
                        server.http(
                            "POST", "/v1/models/secret_h2:predict", {"instances": [1.0]}
                        ).status
                    ),
                    range(200),
                )
            )
        assert set(statuses) <= {200, 503}
        assert 200 in statuses
        assert 503 in statuses  # refused at once rather than piling up
    finally:
        server.stop()
