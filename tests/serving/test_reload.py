"""Replacing the model list live: over gRPC (HandleReloadConfigRequest) and by editing the
--model_config_file; new models load, dropped ones unload, the rest keep serving."""

from __future__ import annotations

import logging
import time

import grpc
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.model_management import ModelManagementPolicy
from sealserve.serving.version_policy import VersionPolicy
from tests.harness import RunningServer, server_options
from tests.serving.conftest import SECRET_KEY


def config_text(models: dict[str, str], platforms: dict[str, str] | None = None) -> str:
    platforms = platforms or {}
    entries = "".join(
        f"config {{ name: '{n}' base_path: '{p}' "
        f"model_platform: '{platforms.get(n, 'tensorflow')}' }} "
        for n, p in models.items()
    )
    return f"model_config_list {{ {entries}}}"


def reload_request(
    models: dict[str, str], platforms: dict[str, str] | None = None
) -> model_management_pb2.ReloadConfigRequest:
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(config_text(models, platforms), request.config)
    return request


def predict_status(server, name):
    return server.http("POST", f"/v1/models/{name}:predict", {"instances": [1.0]}).status


@pytest.fixture
def paths(model_root):
    return {"a": str(model_root / "half_plus_two"), "b": str(model_root / "secret_h2")}


def reloadable_server(model_root, initial: ModelConfig, **options) -> RunningServer:  # noqa: ANN001, ANN003
    """A server whose reload RPC any client may call for base paths under the models' root
    (who may reload is test_model_management's)."""
    anyone = ModelManagementPolicy(insecure_any_client=True, base_path_root=str(model_root))
    return RunningServer(
        server_options([initial], model_management=anyone, **options),
        StaticKeyProvider({"b": SECRET_KEY}),
    )


@pytest.fixture
def polled(tmp_path, paths):
    """A server of model a whose --model_config_file (returned with it) is read every 0.1 s."""
    config = tmp_path / "models.config"
    config.write_text(config_text({"a": paths["a"]}))
    options = server_options(
        [ModelConfig("a", paths["a"])], model_config_file=str(config), model_config_poll_seconds=0.1
    )
    server = RunningServer(options, StaticKeyProvider({"b": SECRET_KEY}))
    yield config, server
    server.stop()


def wait_until(done, failure: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + 30
    while not done():
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)


def test_grpc_reload_adds_and_drops_models(paths, model_root):
    server = reloadable_server(model_root, ModelConfig("a", paths["a"]))
    try:
        stub = model_service_pb2_grpc.ModelServiceStub(server.channel())
        stub.HandleReloadConfigRequest(reload_request(paths), timeout=60)
        assert predict_status(server, "a") == 200 and predict_status(server, "b") == 200

        stub.HandleReloadConfigRequest(reload_request({"b": paths["b"]}), timeout=60)
        assert predict_status(server, "a") == 404
        assert predict_status(server, "b") == 200

        with pytest.raises(grpc.RpcError) as raised:
            stub.HandleReloadConfigRequest(
                reload_request({"c": str(model_root / "missing")}), timeout=60
            )
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        assert predict_status(server, "b") == 200  # a failed reload changes nothing
    finally:
        server.stop()


def test_editing_the_model_config_file_reloads_it(polled, paths, caplog):
    config, server = polled
    config.write_text(config_text({"b": paths["b"]}))
    wait_until(lambda: predict_status(server, "b") == 200, "b was never served")
    assert predict_status(server, "a") == 404
    config.write_text("this is not a text proto")  # a bad edit keeps what is served
    wait_until(lambda: "not applied" in caplog.text, "the bad edit was never read")
    assert predict_status(server, "b") == 200


def test_an_edit_made_while_the_server_started_is_applied(tmp_path, paths):
    """The file says a and b, the server started with a: as when the file is edited after
    the server read it but before it began to poll (a test that wrote the config as soon as
    the server said it was serving found the edit never applied, now and then)."""
    config = tmp_path / "models.config"
    config.write_text(config_text(paths))
    options = server_options(
        [ModelConfig("a", paths["a"])], model_config_file=str(config), model_config_poll_seconds=0.1
    )
    server = RunningServer(options, StaticKeyProvider({"b": SECRET_KEY}))
    try:
        wait_until(lambda: predict_status(server, "b") == 200, "the edit was never applied")
        assert predict_status(server, "a") == 200
    finally:
        server.stop()


def test_the_first_poll_of_an_unchanged_file_reloads_nothing(polled, caplog):
    caplog.set_level(logging.INFO, logger="sealserve")
    config, server = polled
    served = loaded_servable(server, "a")
    time.sleep(0.5)  # several polls of the file the server started from
    assert "reloaded" not in caplog.text
    assert loaded_servable(server, "a") is served


PLATFORM_CHANGE = (
    "Illegal to change a model's platform. For model a platform was tensorflow and new "
    "platform requested is openvino"
)


def loaded_servable(server, name):
    """The servable now serving `name` (to see that a refused reload loaded nothing new)."""
    with server.manager.handle(name) as handle:
        return handle.servable


def test_a_reload_rpc_changing_a_models_platform_is_refused(paths, model_root):
    """TF Serving's ServerCore: INVALID_ARGUMENT with its message, the old config in force
    (before: OK, and version 2 went on serving on TensorFlow, reported AVAILABLE)."""
    server = reloadable_server(model_root, ModelConfig("a", paths["a"]))
    try:
        stub = model_service_pb2_grpc.ModelServiceStub(server.channel())
        before = loaded_servable(server, "a")
        for platform in ("openvino", "openvino:bf16"):
            with pytest.raises(grpc.RpcError) as raised:
                stub.HandleReloadConfigRequest(
                    reload_request({"a": paths["a"], "b": paths["b"]}, {"a": platform}),
                    timeout=60,
                )
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert raised.value.details() == PLATFORM_CHANGE.replace("openvino", platform)
        # nothing applied: b was not added, a still runs on TensorFlow, not loaded again
        assert predict_status(server, "b") == 404
        assert predict_status(server, "a") == 200
        assert loaded_servable(server, "a") is before
        assert before.runtime_labels == {}  # every signature on TensorFlow

        # a reload changing something else (b added, a's platform spelled otherwise) works
        stub.HandleReloadConfigRequest(
            reload_request({"a": paths["a"], "b": paths["b"]}, {"a": "TensorFlow"}), timeout=60
        )
        assert predict_status(server, "b") == 200
        assert loaded_servable(server, "a") is before
    finally:
        server.stop()


def test_a_polled_config_file_changing_a_models_platform_is_not_applied(polled, paths, caplog):
    config, server = polled
    before = loaded_servable(server, "a")
    config.write_text(config_text({"a": paths["a"], "b": paths["b"]}, {"a": "openvino"}))
    # the server has read the edit
    wait_until(lambda: PLATFORM_CHANGE in caplog.text, "the platform change was never refused")
    refusal = next(r for r in caplog.records if PLATFORM_CHANGE in r.getMessage())
    assert refusal.levelname == "ERROR" and "not applied" in refusal.getMessage()
    assert refusal.exc_info is None  # one clear line, no traceback
    assert predict_status(server, "b") == 404  # the old config kept
    assert loaded_servable(server, "a") is before

    # the next edit that keeps a's platform is applied
    config.write_text(config_text({"a": paths["a"], "b": paths["b"]}))
    wait_until(lambda: predict_status(server, "b") == 200, "b was never served")
    assert loaded_servable(server, "a") is before


LABEL_REFUSED = (
    "Request to assign label to version 2 of model a, which is not currently available for "
    "inference"
)


def labelled_reload(path: str, versions: list[int], labels: dict[str, int]):  # noqa: ANN201
    request = model_management_pb2.ReloadConfigRequest()
    policy = "".join(f"versions: {v} " for v in versions)
    label_text = "".join(f"version_labels {{ key: '{k}' value: {v} }} " for k, v in labels.items())
    text_format.Parse(
        f"model_config_list {{ config {{ name: 'a' base_path: '{path}' "
        f"model_platform: 'tensorflow' model_version_policy {{ specific {{ {policy}}} }} "
        f"{label_text}}} }}",
        request.config,
    )
    return request


@pytest.mark.parametrize("allow_unavailable", [False, True])
def test_a_reload_labelling_a_version_that_is_not_available_is_refused(
    paths, model_root, allow_unavailable
):
    """TF Serving's ServerCore: a label may point only at an AVAILABLE version
    (FAILED_PRECONDITION, the old config kept); --allow_version_labels_for_unavailable_models
    admits a new label on a version still to load, never moving an existing label to one."""
    from sealserve.serving.manager import ManagerOptions

    manager = ManagerOptions(
        poll_seconds=0.2,
        max_load_retries=0,
        allow_version_labels_for_unavailable_models=allow_unavailable,
    )
    initial = ModelConfig(
        "a", paths["a"], VersionPolicy(kind="specific", versions=frozenset({1})), {"stable": 1}
    )
    server = reloadable_server(model_root, initial, manager=manager)
    try:
        stub = model_service_pb2_grpc.ModelServiceStub(server.channel())

        def reload(versions: list[int], labels: dict[str, int]) -> None:
            stub.HandleReloadConfigRequest(
                labelled_reload(paths["a"], versions, labels), timeout=60
            )

        # moving "stable" to version 2 in the reload that loads it: refused either way
        with pytest.raises(grpc.RpcError) as moved:
            reload([1, 2], {"stable": 2})
        assert moved.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert moved.value.details() == LABEL_REFUSED
        assert predict_by_label(server, "stable") == 1  # the old config in force
        assert predict_by_version(server, 2) == 404  # and nothing of the new one applied

        # a new label on the version this reload loads: only with the flag
        if allow_unavailable:
            reload([1, 2], {"stable": 1, "canary": 2})
        else:
            with pytest.raises(grpc.RpcError) as new_label:
                reload([1, 2], {"stable": 1, "canary": 2})
            assert new_label.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert new_label.value.details() == LABEL_REFUSED
            reload([1, 2], {"stable": 1})  # load version 2 first ...
            reload([1, 2], {"stable": 1, "canary": 2})  # ... then label it
        assert predict_by_label(server, "canary") == 2

        # once version 2 is available, any label may move to it
        reload([1, 2], {"stable": 2, "canary": 2})
        assert predict_by_label(server, "stable") == 2
    finally:
        server.stop()


def predict_by_label(server, label: str) -> int:  # noqa: ANN001
    """The version that answers a Predict for `label` (the answer's model_spec)."""
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from sealserve.serving.tensorflow_runtime import import_tensorflow

    tf = import_tensorflow()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "a"
    request.model_spec.version_label = label
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0]], dtype=tf.float32))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel())
    return stub.Predict(request, timeout=30).model_spec.version.value


def predict_by_version(server, version: int) -> int:  # noqa: ANN001
    return server.http(
        "POST", f"/v1/models/a/versions/{version}:predict", {"instances": [[1.0]]}
    ).status


@pytest.mark.parametrize("flag, allowed", [([], False), (["=true"], True), (["=false"], False)])
def test_the_tf_serving_flag_reaches_the_manager(tmp_path, flag, allowed):
    from sealserve import cli
    from sealserve.serving.keys import StaticKeyProvider as Keys

    argv = ["serve", f"--model_base_path={tmp_path}"]
    argv += [f"--allow_version_labels_for_unavailable_models{f}" for f in flag]
    options = cli._server_options(cli.build_parser().parse_args(argv), Keys({}))
    assert options.manager.allow_version_labels_for_unavailable_models is allowed
