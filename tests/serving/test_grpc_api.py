"""TF Serving's gRPC API through the real `tensorflow-serving-api` stubs (reference §2)."""

from __future__ import annotations

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

from sealserve.serving.tensorflow_runtime import import_tensorflow

tf = import_tensorflow()


@pytest.fixture(scope="module")
def stubs(server):
    channel = server.channel()
    yield (
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
        channel,
    )
    channel.close()


def predict_request(
    name: str,
    x,
    *,
    version: int | None = None,
    label: str | None = None,
    signature: str = "",
    typed: bool = False,
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.model_spec.signature_name = signature
    if typed:  # the typed-values encoding, as hand-written clients send it
        request.inputs["x"].dtype = tf.float32.as_datatype_enum
        request.inputs["x"].tensor_shape.dim.add().size = len(x)
        request.inputs["x"].float_val.extend(x)
    else:  # what tf.make_tensor_proto sends: tensor_content
        request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.asarray(x, np.float32)))
    return request


@pytest.mark.parametrize("typed", [False, True])
@pytest.mark.parametrize("model", ["half_plus_two", "secret_h2"])
def test_predict_in_both_tensor_encodings(stubs, model, typed):
    predict, _, _ = stubs
    response = predict.Predict(predict_request(model, [1.0, 2.0, 5.0], typed=typed), timeout=30)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [2.5, 3.0, 4.5]
    assert response.model_spec.name == model
    assert response.model_spec.signature_name == "serving_default"
    assert response.model_spec.version.value >= 1


def test_version_and_label(stubs):
    predict, _, _ = stubs
    assert (
        predict.Predict(predict_request("half_plus_two", [1.0], version=1)).model_spec.version.value
        == 1
    )
    assert (
        predict.Predict(
            predict_request("half_plus_two", [1.0], label="canary")
        ).model_spec.version.value
        == 2
    )


def test_output_filter(stubs):
    predict, _, _ = stubs
    request = predict_request("half_plus_two", [1.0])
    request.output_filter.append("y")
    assert list(predict.Predict(request).outputs) == ["y"]
    request.output_filter[:] = ["nope"]
    with pytest.raises(grpc.RpcError) as raised:
        predict.Predict(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output tensor alias not found in signature: nope" in raised.value.details()


@pytest.mark.parametrize(
    ("mutate", "code", "message"),
    [
        (
            lambda r: setattr(r.model_spec, "name", "nope"),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Latest(nope)",
        ),
        (
            lambda r: r.model_spec.version.__setattr__("value", 42),
            grpc.StatusCode.NOT_FOUND,
            "Servable not found for request: Specific(half_plus_two, 42)",
        ),
        (
            lambda r: setattr(r.model_spec, "version_label", "gold"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: gold",
        ),
        (
            lambda r: setattr(r.model_spec, "signature_name", "s"),
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "s" not found.',
        ),
        (
            lambda r: setattr(r.model_spec, "name", ""),
            grpc.StatusCode.INVALID_ARGUMENT,
            "ModelSpec has no name specified.",
        ),
        (
            lambda r: r.inputs["extra"].CopyFrom(tf.make_tensor_proto([1.0])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "input size does not match signature: 2!=1",
        ),
        (
            lambda r: r.inputs["x"].CopyFrom(tf.make_tensor_proto(["a"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Expects arg[0] to be float but string is provided",
        ),
    ],
)
def test_errors_have_tf_servings_codes_and_messages(stubs, mutate, code, message):
    predict, _, _ = stubs
    request = predict_request("half_plus_two", [1.0])
    mutate(request)
    with pytest.raises(grpc.RpcError) as raised:
        predict.Predict(request, timeout=30)
    assert raised.value.code() == code
    assert message in raised.value.details()


def test_metadata(stubs):
    predict, _, _ = stubs
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "secret_h2"
    request.metadata_field.append("signature_def")
    response = predict.GetModelMetadata(request)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert (
        signatures.signature_def["serving_default"].inputs["x"].dtype == tf.float32.as_datatype_enum
    )
    assert response.model_spec.version.value == 1
    request.metadata_field[:] = ["other"]
    with pytest.raises(grpc.RpcError) as raised:
        predict.GetModelMetadata(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_model_status(stubs):
    _, model, _ = stubs
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "half_plus_two"
    response = model.GetModelStatus(request)
    assert [(s.version, s.state) for s in response.model_version_status] == [
        (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
    ]
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as raised:
        model.GetModelStatus(request)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert raised.value.details() == "Could not find any versions of model nope"


def test_health_service(stubs):
    _, _, channel = stubs
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tensorflow.serving.PredictionService"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_messages_over_the_limit_are_refused_then_service_continues(stubs, server):
    channel = server.channel(options=[("grpc.max_send_message_length", 64 << 20)])
    predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as raised:
        predict.Predict(predict_request("half_plus_two", np.zeros(2 << 20, np.float32)))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    channel.close()
    assert tf.make_ndarray(
        stubs[0].Predict(predict_request("half_plus_two", [2.0])).outputs["y"]
    ).tolist() == [3.0]


@pytest.mark.parametrize(
    ("text", "arguments"),
    [
        ("grpc.max_connection_age_ms=2000", (("grpc.max_connection_age_ms", 2000),)),
        (
            "grpc.a=x, grpc.b=-3,grpc.c=4294967296,",
            (("grpc.a", "x"), ("grpc.b", -3), ("grpc.c", "4294967296")),
        ),
        ("", ()),
    ],
)
def test_grpc_channel_arguments_are_read_as_tf_serving_reads_them(text, arguments):
    from sealserve import cli

    argv = ["serve", "--model_base_path=/m", f"--grpc_channel_arguments={text}"]
    assert cli.build_parser().parse_args(argv).grpc_channel_arguments == arguments


def test_grpc_channel_arguments_reach_the_server_over_its_own(model_root):
    """--grpc_channel_arguments=grpc.max_receive_message_length=1024 wins over the server's
    own limit (--grpc_max_message_bytes): a 2 KB request is refused by grpc itself."""
    from sealserve.serving.keys import StaticKeyProvider
    from sealserve.serving.model_config import ModelConfig
    from tests.harness import RunningServer, server_options

    options = server_options(
        [ModelConfig("half_plus_two", str(model_root / "half_plus_two"))],
        grpc_channel_arguments=(("grpc.max_receive_message_length", 1024),),
    )
    server = RunningServer(options, StaticKeyProvider({}))
    try:
        channel = server.channel()
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        assert predict.Predict(predict_request("half_plus_two", [1.0]), timeout=30).outputs
        with pytest.raises(grpc.RpcError) as refused:
            predict.Predict(predict_request("half_plus_two", [1.0] * 512), timeout=30)
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        channel.close()
    finally:
        server.stop()
