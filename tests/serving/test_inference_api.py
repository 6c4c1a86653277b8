"""Classify, Regress and MultiInference on TF Serving's half_plus_two and the digits model,
over REST and gRPC, with TF Serving's answers (reference §5)."""

from __future__ import annotations

import grpc
import pytest
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from sealserve.serving.tensorflow_runtime import import_tensorflow

tf = import_tensorflow()


def example(**features: float):
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                k: tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
                for k, v in features.items()
            }
        )
    )


@pytest.fixture(scope="module")
def stub(server):
    channel = server.channel()
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def test_rest_regress_and_classify_match_tf_serving(server):
    regress = server.http(
        "POST",
        "/v1/models/half_plus_two:regress",
        {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]},
    )
    assert regress.json() == {"results": [42.0]}
    classify = server.http(
        "POST",
        "/v1/models/half_plus_two:classify",
        {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]},
    )
    assert classify.json() == {"results": [[["", 12.0]]]}


def test_rest_context_features_reach_every_example(server):
    result = server.http(
        "POST",
        "/v1/models/half_plus_two:regress",
        {
            "signature_name": "regress_x_to_y2",
            "context": {"x": 4.0},
            "examples": [{"x2": 1.0}, {"x": 10.0}],
        },
    )
    assert result.json() == {"results": [5.0, 8.0]}  # the example's own x wins


@pytest.mark.parametrize(
    ("verb", "body", "status", "message"),
    [
        ("regress", {"examples": [{"x": 1.0}]}, 400, "Expected regression signature method_name"),
        (
            "classify",
            {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]},
            400,
            "Expected classification signature method_name",
        ),
        ("regress", {"signature_name": "regress_x_to_y", "examples": []}, 400, "'examples'"),
        (
            "regress",
            {"signature_name": "regress_x_to_y", "examples": [{"x": [1.0, "a"]}]},
            400,
            "Unexpected element type in feature: x expecting type: float",
        ),
    ],
)
def test_rest_classify_regress_errors(server, verb, body, status, message):
    result = server.http("POST", f"/v1/models/half_plus_two:{verb}", body)
    assert result.status == status
    assert message in result.json()["error"]


def test_grpc_regress_and_classify(stub):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "secret_h2"
    request.model_spec.signature_name = "regress_x_to_y2"
    request.input.example_list.examples.append(example(x=2.0))
    response = stub.Regress(request, timeout=30)
    assert [r.value for r in response.result.regressions] == [4.0]
    assert response.model_spec.signature_name == "regress_x_to_y2"

    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "classify_x_to_y"
    request.input.example_list.examples.append(example(x=20.0))
    response = stub.Classify(request, timeout=30)
    classes = response.result.classifications[0].classes
    assert [(c.label, c.score) for c in classes] == [("", 12.0)]


def test_grpc_multi_inference(stub):
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (
        ("regress_x_to_y", "tensorflow/serving/regress"),
        ("classify_x_to_y", "tensorflow/serving/classify"),
    ):
        task = request.tasks.add()
        task.model_spec.name = "half_plus_two"
        task.model_spec.signature_name = signature
        task.method_name = method
    request.input.example_list.examples.append(example(x=80.0))
    results = stub.MultiInference(request, timeout=30).results
    assert results[0].regression_result.regressions[0].value == 42.0
    assert results[1].classification_result.classifications[0].classes[0].score == 42.0


def test_grpc_classify_with_the_wrong_signature_kind(stub):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "half_plus_two"
    request.input.example_list.examples.append(example(x=1.0))
    with pytest.raises(grpc.RpcError) as raised:
        stub.Classify(request, timeout=30)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expected classification signature method_name" in raised.value.details()
