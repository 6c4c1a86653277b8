"""TF Serving's own test models, generated as its generators build them, answer TF Serving's
documented REST and gRPC examples as TF Serving does: bodies compared byte for byte where TF
Serving documents them (`g3doc/api_rest.md`, `g3doc/docker.md`, reference §5), and requests
validated as `predict_util.cc` / `json_tensor.cc` validate them (issue #14 §2)."""

from __future__ import annotations

import base64
import shutil

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.tensorflow_runtime import import_tensorflow
from sealserve.tools.models import make_model
from tests.harness import RunningServer, server_options

tf = import_tensorflow()


@pytest.fixture(scope="module")
def tfs(tmp_path_factory, half_plus_two):
    """TF Serving's models under their testdata names, at version 123."""
    root = tmp_path_factory.mktemp("tfs")
    shutil.copytree(half_plus_two, root / "half_plus_two" / "123")
    make_model("half_plus_three", root / "saved_model_half_plus_three" / "123")
    make_model("string_echo", root / "string_echo" / "1")
    models = [
        ModelConfig(name, str(root / name))
        for name in ("half_plus_two", "saved_model_half_plus_three", "string_echo")
    ]
    running = RunningServer(server_options(models), StaticKeyProvider({}))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(tfs):
    channel = tfs.channel()
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


# -- REST, byte for byte ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (  # docker.md, the README's first example
            "/v1/models/half_plus_two:predict",
            '{"instances": [1.0, 2.0, 5.0]}',
            b'{\n    "predictions": [2.5, 3.0, 4.5\n    ]\n}',
        ),
        (  # api_rest.md, "Make REST API calls to ModelServer"
            "/v1/models/saved_model_half_plus_three:predict",
            '{"instances": [1.0,2.0,5.0]}',
            b'{\n    "predictions": [3.5, 4.0, 5.5\n    ]\n}',
        ),
        (
            "/v1/models/saved_model_half_plus_three:regress",
            '{"signature_name": "tensorflow/serving/regress", '
            '"examples": [{"x": 1.0}, {"x": 2.0}]}',
            b'{\n    "results": [3.5, 4.0]\n}',
        ),
        (
            "/v1/models/half_plus_two:predict",
            '{"inputs": [3.0, 4.0]}',
            b'{\n    "outputs": [\n        3.5,\n        4.0\n    ]\n}',
        ),
        (
            "/v1/models/half_plus_two:regress",
            '{"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}',
            b'{\n    "results": [42.0]\n}',
        ),
        (
            "/v1/models/half_plus_two:classify",
            '{"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}, {"x": 4.0}]}',
            b'{\n    "results": [\n        [["", 12.0]],\n        [["", 4.0]]\n    ]\n}',
        ),
        (
            "/v1/models/half:predict",
            '{"instances": [1.0,5.0]}',
            b'{\n    "error": "Servable not found for request: Latest(half)"\n}',
        ),
    ],
)
def test_documented_rest_examples_answer_byte_for_byte(tfs, path, body, expected):
    result = tfs.http("POST", path, body)
    assert result.body == expected
    assert result.content_type == "application/json"


def test_documented_model_status(tfs):
    result = tfs.http("GET", "/v1/models/saved_model_half_plus_three")
    assert result.status == 200
    assert result.json() == {
        "model_version_status": [
            {
                "version": "123",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }


def test_metadata_is_tf_servings_for_its_half_plus_two(tfs):
    """testdata/half_plus_two_model_metadata.json, but for `tf_example`, which TF Serving's
    generator now declares [?] where the checked-in model has no shape."""
    doc = tfs.http("GET", "/v1/models/half_plus_two/metadata").json()
    assert doc["model_spec"] == {"name": "half_plus_two", "signature_name": "", "version": "123"}
    signatures = doc["metadata"]["signature_def"]["signature_def"]
    column = {"dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}], "unknown_rank": False}
    assert signatures["serving_default"] == {
        "inputs": {"x": {"dtype": "DT_FLOAT", "tensor_shape": column, "name": "x:0"}},
        "outputs": {"y": {"dtype": "DT_FLOAT", "tensor_shape": column, "name": "y:0"}},
        "method_name": "tensorflow/serving/predict",
        "defaults": {},
    }
    assert signatures["regress_x2_to_y3"]["inputs"]["inputs"]["name"] == "x2:0"
    assert signatures["regress_x_to_y2"]["outputs"]["outputs"]["name"] == "y2:0"
    assert signatures["classify_x_to_y"]["method_name"] == "tensorflow/serving/classify"


def test_row_and_columnar_formats_of_a_column_input(tfs):
    rows = tfs.http("POST", "/v1/models/half_plus_two:predict", {"instances": [[1.0], [2.0]]})
    assert rows.json() == {"predictions": [[2.5], [3.0]]}
    columns = tfs.http("POST", "/v1/models/half_plus_two:predict", {"inputs": [[1.0], [2.0]]})
    assert columns.json() == {"outputs": [[2.5], [3.0]]}
    # what the graph does with other shapes is the graph's business, as in TF Serving
    matrix = tfs.http("POST", "/v1/models/half_plus_two:predict", {"inputs": [[1.0, 2.0]]})
    assert matrix.json() == {"outputs": [[2.5, 3.0]]}


def test_strings_and_base64_in_and_out(tfs):
    body = {"instances": ["héllo", {"b64": base64.b64encode(b"\x00bin").decode()}]}
    result = tfs.http("POST", "/v1/models/string_echo:predict", body)
    assert result.status == 200, result.body
    predictions = result.json()["predictions"]
    assert predictions[0] == {
        "length": 6,
        "upper": "HéLLO",  # ASCII upper case only, as tf.strings.upper
        "upper_bytes": {"b64": base64.b64encode("HéLLO".encode()).decode()},
    }
    assert predictions[1]["length"] == 4
    assert predictions[1]["upper_bytes"] == {"b64": base64.b64encode(b"\x00BIN").decode()}


@pytest.mark.parametrize("b64", ["aGk=", "aGk", " aG k= ", "aGk."])
def test_every_verb_accepts_the_same_base64(tfs, b64):
    """One decoder for :predict and :classify/:regress (absl::Base64Unescape's rules:
    padding optional, whitespace skipped)."""
    predict = tfs.http("POST", "/v1/models/string_echo:predict", {"instances": [{"b64": b64}]})
    assert predict.status == 200, predict.body
    assert predict.json()["predictions"][0]["upper"] == "HI"
    # the same value as a feature: decoded, so the parser sees bytes where it wants a float
    regress = tfs.http(
        "POST",
        "/v1/models/half_plus_two:regress",
        {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0, "note": {"b64": b64}}]},
    )
    assert regress.json() == {"results": [2.5]}


@pytest.mark.parametrize("verb", ["predict", "regress"])
def test_every_verb_refuses_the_same_bad_base64(tfs, verb):
    body = (
        {"instances": [{"b64": "a"}]}
        if verb == "predict"
        else {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0, "n": {"b64": "a"}}]}
    )
    model = "string_echo" if verb == "predict" else "half_plus_two"
    result = tfs.http("POST", f"/v1/models/{model}:{verb}", body)
    assert result.status == 400
    assert "Unable to base64 decode" in result.json()["error"]


# -- validation as TF Serving's ------------------------------------------------------------


def test_what_the_graph_rejects_is_tensorflows_error(tfs):
    """A string fed where the graph multiplies floats: INVALID_ARGUMENT with TensorFlow's
    message (the run's status), HTTP 400."""
    result = tfs.http(
        "POST",
        "/v1/models/half_plus_two:classify",
        {"signature_name": "classify_x_to_y", "examples": [{"x": "not a float"}]},
    )
    assert result.status == 400
    assert result.json()["error"] == (
        "Name: <unknown>, Key: x, Index: 0.  Data types don't match. Data type: string but "
        "expected type: float\n\t [[{{node ParseExample/ParseExampleV2}}]]"
    )


def test_rest_names_the_signature_as_tf_serving(tfs):
    result = tfs.http(
        "POST", "/v1/models/half_plus_two:predict", {"signature_name": "s", "instances": [1.0]}
    )
    assert (result.status, result.json()) == (
        400,
        {"error": 'Serving signature name: "s" not found in signature def'},
    )


def test_row_format_instances_must_agree_on_batch(tfs):
    """Row format across several inputs: each instance is one object with every input."""
    result = tfs.http("POST", "/v1/models/string_echo:predict", {"instances": [{"text": "a"}, 1]})
    assert result.status == 400
    assert "Expecting object but got list at item 1 of input list" in result.json()["error"]


# -- gRPC ------------------------------------------------------------------------------------


def _predict(name, inputs, signature=""):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(value)
    return request


def test_grpc_predict_of_the_documented_instances(stub):
    x = tf.make_tensor_proto(np.asarray([1.0, 2.0, 5.0], np.float32))
    response = stub.Predict(_predict("half_plus_two", {"x": x}), timeout=30)
    assert list(response.outputs["y"].float_val) == [2.5, 3.0, 4.5]
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"


def test_grpc_classify_and_regress(stub):
    example = tf.train.Example(
        features=tf.train.Features(
            feature={"x": tf.train.Feature(float_list=tf.train.FloatList(value=[20.0]))}
        )
    )
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "half_plus_two"
    classify.model_spec.signature_name = "classify_x_to_y"
    classify.input.example_list.examples.add().CopyFrom(example)
    result = stub.Classify(classify, timeout=30).result
    assert [(c.label, c.score) for c in result.classifications[0].classes] == [("", 12.0)]
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name = "half_plus_two"
    regress.model_spec.signature_name = "regress_x_to_y2"
    regress.input.example_list.examples.add().CopyFrom(example)
    assert [r.value for r in stub.Regress(regress, timeout=30).result.regressions] == [13.0]


def test_grpc_metadata(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "saved_model_half_plus_three"
    response = stub.GetModelMetadata(request, timeout=30)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    assert set(signature_map.signature_def) == {"serving_default", "tensorflow/serving/regress"}


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            {"x": np.float32([1.0]), "z": np.float32([1.0])},
            "input size does not match signature: 2!=1 len({x,z}) != len({x}). "
            "Sent extra: {z}. Missing but required: {}.",
        ),
        (
            {"z": np.float32([1.0])},
            "input tensor alias not found in signature: z. Inputs expected to be in the set {x}.",
        ),
        ({"x": np.int32([1])}, "Expects arg[0] to be float but int32 is provided"),
    ],
)
def test_grpc_input_validation_is_tf_servings(stub, inputs, message):
    request = _predict(
        "half_plus_two", {alias: tf.make_tensor_proto(v) for alias, v in inputs.items()}
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == message


def test_grpc_graph_errors_keep_tensorflows_code_and_message(stub):
    bad = tf.make_tensor_proto(np.asarray([b"not an example"], dtype=object))
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(_predict("half_plus_two", {"inputs": bad}, "regress_x_to_y"), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Could not parse example input" in info.value.details()
