"""The OpenVINO runtime: conversion of encrypted models in memory, the accuracy gate, the
TensorFlow fallback, and OpenVINO-served models behind the real REST and gRPC APIs."""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import logging
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest

from sealserve.errors import InvalidArgument
from sealserve.model_tree import encrypt_tree
from sealserve.serving.batching import BatchingOptions
from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.loader import WARMUP_FILE, LoadOptions, VersionLoader
from sealserve.serving.manager import State
from sealserve.serving.metrics import MonitoringConfig
from sealserve.serving.model_config import ModelConfig, parse_model_config_text
from sealserve.serving.runtimes import RuntimeSpec, parse_runtime
from sealserve.serving.runtimes.accuracy import Agreement, relative_error
from sealserve.serving.runtimes.openvino import bf16_supported
from sealserve.serving.tensorflow_runtime import import_tensorflow
from sealserve.tools.models import digits_dataset
from tests.harness import RunningServer, server_options
from tests.serving.conftest import SECRET_KEY

WARMUP_ROWS = 32  # held-out digits in the warm-up file of the encrypted digits tree


# -- the runtime choice (pure) -----------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", RuntimeSpec()),
        ("tensorflow", RuntimeSpec()),
        ("openvino", RuntimeSpec(platform="openvino")),
        ("OpenVINO:bf16", RuntimeSpec(platform="openvino", precision="bf16")),
        (
            "openvino:bf16,strict,throughput,min_top1_agreement=0.99,max_relative_error=0.05",
            RuntimeSpec("openvino", "bf16", True, "throughput", 0.05, 0.99),
        ),
    ],
)
def test_runtime_specs_parse(text, expected):
    assert parse_runtime(text) == expected


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("onnxruntime", "unsupported model platform"),
        ("tensorflow:bf16", "takes no options"),
        ("openvino:int4", "unknown openvino option"),
        ("openvino:max_relative_error=lots", "must be a number from 0 to 1"),
        ("openvino:min_top1_agreement=2", "must be a number from 0 to 1"),
    ],
)
def test_bad_runtime_specs_are_refused_in_one_line(text, complaint):
    with pytest.raises(InvalidArgument, match=complaint) as caught:
        parse_runtime(text)
    assert "\n" not in str(caught.value)


def test_model_platform_of_the_model_config_picks_the_runtime():
    models = parse_model_config_text(
        'model_config_list { config { name: "a" base_path: "/m/a" model_platform: "openvino" } '
        'config { name: "b" base_path: "/m/b" model_platform: "openvino:bf16,strict" } '
        'config { name: "c" base_path: "/m/c" } }',
        "models.config",
    )
    assert [m.runtime for m in models] == [
        RuntimeSpec(platform="openvino"),
        RuntimeSpec(platform="openvino", precision="bf16", strict=True),
        RuntimeSpec(),
    ]
    with pytest.raises(InvalidArgument, match="models.config: model a: unsupported model platform"):
        parse_model_config_text(
            'model_config_list { config { name: "a" base_path: "/m" model_platform: "pytorch" } }',
            "models.config",
        )


def test_default_bounds_follow_the_precision():
    assert RuntimeSpec(platform="openvino").bounds == (1e-4, 1.0)
    assert RuntimeSpec(platform="openvino", precision="bf16").bounds == (0.1, 0.9)
    assert RuntimeSpec(platform="openvino", max_relative_error=0.5).bounds == (0.5, 1.0)


# -- the accuracy figures (pure) ---------------------------------------------------------


def test_relative_error_is_against_the_outputs_scale():
    expected = np.array([[10.0, 0.0, -5.0]], np.float32)
    assert relative_error(expected, expected) == 0.0
    assert relative_error(expected, expected + [[0.0, 0.1, 0.0]]) == pytest.approx(0.01)
    assert relative_error(expected, expected * np.nan) == float("inf")
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.zeros(3), np.ones(3)) == float("inf")


def test_agreement_counts_top1_rows_and_integer_outputs():
    agreement = Agreement()
    scores = np.array([[0.1, 0.9], [0.6, 0.4], [0.3, 0.7]], np.float32)
    swapped = scores.copy()
    swapped[1] = [0.4, 0.6]
    agreement.add(
        {"scores": scores, "classes": np.array([1, 0, 1])},
        {"scores": swapped, "classes": np.array([1, 1, 1])},
    )
    assert agreement.top1_rows == 6 and agreement.top1_agreeing == 4
    assert agreement.max_relative_error == pytest.approx(0.2 / 0.9)
    assert agreement.worst_output == "scores"
    with pytest.raises(ValueError, match="shape"):
        agreement.add({"scores": scores}, {"scores": scores[:2]})


# -- loading ---------------------------------------------------------------------------


def _warmup_file(path: Path, images: np.ndarray) -> None:
    tf = import_tensorflow()
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for batch in np.array_split(images, 4):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "digits"
            request.inputs["image"].CopyFrom(tf.make_tensor_proto(batch))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())


@pytest.fixture(scope="session")
def openvino_models(tmp_path_factory, digits_model, half_plus_two) -> Path:
    """Encrypted trees: digits (with held-out digits as warm-up requests), half_plus_two."""
    root = tmp_path_factory.mktemp("openvino_models")
    plain = root / "plain-digits"
    shutil.copytree(digits_model, plain)
    _warmup_file(plain / WARMUP_FILE, digits_dataset()[2][:WARMUP_ROWS])
    encrypt_tree(plain, str(root / "digits" / "1"), SECRET_KEY)
    shutil.rmtree(plain)
    encrypt_tree(half_plus_two, str(root / "half_plus_two" / "1"), SECRET_KEY)
    return root


def load(root: Path, name: str, runtime: str):
    keys = StaticKeyProvider({name: SECRET_KEY})
    loader = VersionLoader(
        name, 1, root / name / "1", keys, LoadOptions(), runtime=parse_runtime(runtime)
    )
    return loader.load()


@pytest.fixture(scope="session")
def digits_fp32(openvino_models):
    return load(openvino_models, "digits", "openvino")


@pytest.fixture(scope="session")
def digits_tensorflow(openvino_models):
    return load(openvino_models, "digits", "tensorflow")


def test_fp32_answers_as_tensorflow_within_1e4_on_held_out_digits(digits_fp32, digits_tensorflow):
    _, _, images, labels = digits_dataset()
    assert digits_fp32.runtime_labels == {"serving_default": "OpenVINO"}
    ours = digits_fp32.run("serving_default", {"image": images})
    theirs = digits_tensorflow.run("serving_default", {"image": images})
    assert ours["scores"].dtype == np.float32 and ours["classes"].dtype == np.int64
    assert relative_error(theirs["scores"], ours["scores"]) <= 1e-4
    np.testing.assert_array_equal(ours["classes"], theirs["classes"])
    assert (ours["classes"] == labels).mean() > 0.95


@pytest.mark.parametrize("rows", [1, 3, 17])
def test_the_batch_dimension_stays_dynamic(digits_fp32, rows):
    images = digits_dataset()[2][:rows]
    assert digits_fp32.run("serving_default", {"image": images})["scores"].shape == (rows, 10)


def test_wrong_shapes_are_invalid_arguments_and_the_model_keeps_serving(digits_fp32):
    with pytest.raises(InvalidArgument, match=r"input 'image' has shape \[2,8,8\]"):
        digits_fp32.run("serving_default", {"image": np.zeros((2, 8, 8), np.float32)})
    # what OpenVINO itself refuses is said in its own words, in one line
    empty = np.frombuffer(b"", np.float32).reshape(0, 8, 8, 1)  # as gRPC's inputs
    with pytest.raises(InvalidArgument) as refused:
        digits_fp32.run("serving_default", {"image": empty})
    assert str(refused.value) == "OpenVINO cannot run this input: Batch size is zero."
    assert digits_fp32.run("serving_default", {"image": np.zeros((1, 8, 8, 1), np.float32)})


def test_concurrent_runs_each_get_their_own_answer(digits_fp32, digits_tensorflow):
    images = digits_dataset()[2][:64]
    expected = digits_tensorflow.run("serving_default", {"image": images})["classes"]

    def classify(i: int) -> int:
        return int(digits_fp32.run("serving_default", {"image": images[i : i + 1]})["classes"][0])

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(classify, range(64))) == list(expected)


def test_read_only_and_shared_inputs_of_changing_sizes_get_their_own_answers(
    digits_fp32, digits_tensorflow
):
    """gRPC's inputs are read-only views of the request's bytes (copied into tensors each
    infer request owns and resizes), REST's and batches' are writable arrays (shared with
    OpenVINO): alternating both, with batch sizes growing and shrinking, every answer is
    TensorFlow's, and no caller's array is written to."""
    images = digits_dataset()[2][:40]
    for rows in (17, 1, 3, 40, 2):
        batch = np.ascontiguousarray(images[:rows][::-1])
        writable = batch.copy()
        read_only = np.frombuffer(batch.tobytes(), batch.dtype).reshape(batch.shape)
        expected = digits_tensorflow.run("serving_default", {"image": batch})["scores"]
        for inputs in (read_only, writable, read_only):
            got = digits_fp32.run("serving_default", {"image": inputs})["scores"]
            assert relative_error(expected, got) <= 1e-4
        np.testing.assert_array_equal(writable, batch)


def test_bf16_agreement_with_tensorflow_on_the_digits_classifier(
    openvino_models, digits_tensorflow
):
    """The figure users pay for bf16 speed: top-1 agreement with fp32 TensorFlow."""
    bf16 = load(openvino_models, "digits", "openvino:bf16")
    _, _, images, labels = digits_dataset()
    ours = bf16.run("serving_default", {"image": images})
    theirs = digits_tensorflow.run("serving_default", {"image": images})
    agreement = Agreement()
    agreement.add({"scores": theirs["scores"]}, {"scores": ours["scores"]})
    print(f"\ndigits classifier, OpenVINO bf16 against TensorFlow fp32: {agreement.summary()}")
    assert agreement.top1_agreement >= 0.99
    if bf16_supported():
        assert 0 < agreement.max_relative_error < 0.05  # bf16 really was used
    else:  # a CPU without bf16 runs the model in fp32 (with a warning)
        assert agreement.max_relative_error <= 1e-4
    assert (ours["classes"] == labels).mean() > 0.95


def test_the_accuracy_gate_refuses_a_model_outside_its_bounds(openvino_models):
    with pytest.raises(InvalidArgument) as refused:
        load(openvino_models, "digits", "openvino:bf16,max_relative_error=0.000001")
    message = str(refused.value)
    assert "signature serving_default on OpenVINO bf16 misses the accuracy bounds" in message
    assert "max relative error" in message and "top-1 agreement" in message
    assert f"over {4 + 2} runs" in message  # the warm-up requests and the generated inputs


def test_a_model_whose_rows_depend_on_each_other_passes_the_gate(tmp_path):
    """The gate's generated batch is answered by TensorFlow row by row (its kernels keep
    scratch memory sized for the largest batch they ran); a model whose rows depend on each
    other (here: centred on the batch's mean) differs from those rows, and is compared with
    TensorFlow's answer for the whole batch instead of being refused."""
    tf = import_tensorflow()

    class Centred(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x):
            return {"centred": x - tf.reduce_mean(x, axis=0, keepdims=True)}

    module = Centred()
    plain = tmp_path / "plain"
    tf.saved_model.save(module, str(plain), signatures={"serving_default": module.serve})
    encrypt_tree(plain, str(tmp_path / "centred" / "1"), SECRET_KEY)
    servable = load(tmp_path, "centred", "openvino")
    assert servable.runtime_labels == {"serving_default": "OpenVINO"}
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = servable.run("serving_default", {"x": x})["centred"]
    np.testing.assert_allclose(got, x - x.mean(axis=0), rtol=1e-6)


def test_unconvertible_signatures_fall_back_to_tensorflow_with_one_warning(openvino_models, caplog):
    with caplog.at_level(logging.WARNING):
        servable = load(openvino_models, "half_plus_two", "openvino")
    warnings = [r.getMessage() for r in caplog.records if "OpenVINO cannot convert" in r.message]
    assert len(warnings) == 1 and "op ParseExampleV2" in warnings[0]
    assert "classify_x_to_y" in warnings[0] and "regress_x2_to_y3" in warnings[0]
    # TF Serving's half_plus_two feeds `x` into the output of its tf.Example parser: the
    # conversion takes the whole graph, so every signature holds ParseExampleV2
    assert servable.runtime_labels == {}
    x = np.array([1.0, 2.0, 5.0], np.float32)
    assert servable.run("serving_default", {"x": x})["y"].tolist() == [2.5, 3.0, 4.5]
    from tests.tf_examples import serialized_example

    examples = np.array([serialized_example(x=2.0)], object)
    assert servable.run("regress_x_to_y", {"inputs": examples})["outputs"].tolist() == [[3.0]]


def test_a_strict_openvino_model_with_unconvertible_signatures_is_refused(openvino_models):
    with pytest.raises(InvalidArgument, match="op ParseExampleV2.*runtime is strict"):
        load(openvino_models, "half_plus_two", "openvino:strict")


@pytest.mark.parametrize(
    ("name", "converted"), [("digits", {"serving_default"}), ("half_plus_two", set())]
)
def test_the_serving_process_never_loads_a_converted_model_into_tensorflow(
    openvino_models, monkeypatch, name, converted
):
    """A converted signature is loaded into TensorFlow, converted and checked in a
    conversion process of its own, which has exited once the load is done: this process
    holds only the compiled model, and none of what TensorFlow keeps for having loaded a
    SavedModel (its functions, graphs, variables, kernels). Signatures that fall back run on
    a Session of their own (half_plus_two: all of them); the decrypted ram:// files are
    gone either way."""
    tf = import_tensorflow()
    loaded_here: list[str] = []
    written: list[str] = []
    real_load, real_makedirs = tf.saved_model.load, tf.io.gfile.makedirs

    def load_and_count(root, *args, **kwargs):
        loaded_here.append(root)
        return real_load(root, *args, **kwargs)

    def makedirs_and_count(path):
        written.append(path)
        return real_makedirs(path)

    monkeypatch.setattr(tf.saved_model, "load", load_and_count)
    monkeypatch.setattr(tf.io.gfile, "makedirs", makedirs_and_count)
    servable = load(openvino_models, name, "openvino")

    assert set(servable.runtime_labels) == converted
    assert loaded_here == []  # neither tf.saved_model.load nor its objects, here
    assert live_children() == []  # the conversion process has exited, and was reaped
    root = written[0].split("/", 3)[:3]
    assert root[0] == "ram:" and not tf.io.gfile.exists("/".join(root))
    first = next(iter(servable.signatures))
    assert servable.signature(first)  # still serves


def live_children() -> list[int]:
    """This process's child processes (zombies included), from /proc."""
    children = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            children += [int(pid) for pid in (task / "children").read_text().split()]
    return children


# -- served ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openvino_server(openvino_models):
    models = [
        ModelConfig("digits", str(openvino_models / "digits"), runtime=parse_runtime("openvino")),
        ModelConfig("digits_tf", str(openvino_models / "digits")),
        ModelConfig(
            "refused",
            str(openvino_models / "digits"),
            runtime=parse_runtime("openvino:bf16,max_relative_error=0.000001"),
        ),
    ]
    keys = StaticKeyProvider({m.name: SECRET_KEY for m in models})
    options = server_options(
        models,
        monitoring=MonitoringConfig(enable=True),
        batching=BatchingOptions(max_batch_size=32, batch_timeout_micros=2000),
        allow_unavailable_models=True,  # "refused" fails its load on purpose
    )
    running = RunningServer(options, keys)
    yield running
    running.stop()


def test_served_rest_and_grpc_answers_and_metadata_match_tensorflow(openvino_server):
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    tf = import_tensorflow()
    images = digits_dataset()[2][:5]
    body = {"instances": images.tolist()}
    answers = {
        name: openvino_server.http("POST", f"/v1/models/{name}:predict", body).json()
        for name in ("digits", "digits_tf")
    }
    ours, theirs = answers["digits"]["predictions"], answers["digits_tf"]["predictions"]
    assert [p["classes"] for p in ours] == [p["classes"] for p in theirs]
    np.testing.assert_allclose(
        [p["scores"] for p in ours], [p["scores"] for p in theirs], rtol=1e-4, atol=1e-6
    )

    stub = prediction_service_pb2_grpc.PredictionServiceStub(openvino_server.channel())
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
    response = stub.Predict(request, timeout=30)
    assert tf.make_ndarray(response.outputs["classes"]).tolist() == [p["classes"] for p in theirs]

    metadata = {}
    for name in ("digits", "digits_tf"):
        ask = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        ask.model_spec.name = name
        metadata[name] = stub.GetModelMetadata(ask, timeout=30).metadata["signature_def"].value
    assert metadata["digits"] == metadata["digits_tf"]


def test_a_model_missing_its_accuracy_bound_ends_with_the_figures(openvino_server):
    (status,) = openvino_server.manager.status("refused")
    assert status.state == State.END
    assert "misses the accuracy bounds" in str(status.error)
    assert "top-1 agreement" in str(status.error)
    answer = openvino_server.http("GET", "/v1/models/refused")
    assert answer.status == 200 and "misses the accuracy bounds" in answer.body.decode()


def test_runtime_latency_is_labelled_with_the_runtime(openvino_server):
    body = {"instances": digits_dataset()[2][:2].tolist()}
    for name in ("digits", "digits_tf"):
        assert openvino_server.http("POST", f"/v1/models/{name}:predict", body).status == 200
    page = openvino_server.http("GET", "/monitoring/prometheus/metrics").body.decode()
    assert 'runtime_latency_count{model_name="digits",API="Predict",runtime="OpenVINO"}' in page
    assert 'runtime_latency_count{model_name="digits_tf",API="Predict",runtime="TF"}' in page


def test_batched_concurrent_requests_get_their_own_rows(openvino_server):
    images = digits_dataset()[2][:24]
    expected = openvino_server.http(
        "POST", "/v1/models/digits_tf:predict", {"instances": images.tolist()}
    ).json()["predictions"]

    def one(i: int) -> int:
        answer = openvino_server.http(
            "POST", "/v1/models/digits:predict", {"instances": images[i : i + 1].tolist()}
        )
        return answer.json()["predictions"][0]["classes"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, range(24))) == [p["classes"] for p in expected]


def test_nothing_of_an_unloaded_openvino_version_survives(openvino_models):
    """Unloading an OpenVINO version (with a signature that fell back to TensorFlow) frees
    its servable, its runners and their infer-request pools (which hold the compiled
    models), the fallback Session; no ram:// file or conversion process is left."""
    from sealserve.serving.manager import ManagerOptions, ModelManager, loader_factory
    from tests.serving.test_handles import ram_files

    manager = ModelManager(
        [ModelConfig("digits", str(openvino_models / "digits"), runtime=parse_runtime("openvino"))],
        loader_factory(StaticKeyProvider({"digits": SECRET_KEY}), LoadOptions()),
        ManagerOptions(poll_seconds=0, max_load_retries=0),
    )
    try:
        manager.start()
        with manager.handle("digits") as handle:
            servable = handle.servable
            assert servable.runtime_labels == {"serving_default": "OpenVINO"}
            assert servable.run("serving_default", {"image": digits_dataset()[2][:2]})
            runners = list(servable._runners.values())
            pools = [
                cell.cell_contents
                for runner in runners
                for cell in runner.__closure__ or ()
                if hasattr(cell.cell_contents, "take")
            ]
            refs = [weakref.ref(x) for x in (servable, *runners, *pools)]
            del servable, runners, pools
        assert len(refs) >= 4  # the servable, two runners, a pool
        assert ram_files() == [] and live_children() == []
        manager.reload([])
        gc.collect()
        assert [ref() for ref in refs] == [None] * len(refs)
        assert ram_files() == [] and live_children() == []
    finally:
        manager.stop()
