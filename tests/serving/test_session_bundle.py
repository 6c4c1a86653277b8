"""SavedModels run in a Session, as TF Serving runs them: the same answers as TensorFlow's
own signature call, placeholder shapes checked, the caller's thread for quick signatures, and a
fallback to `tf.function` for a SavedModel whose variables a Session cannot restore."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from sealserve.errors import InvalidArgument
from sealserve.serving import servable as servable_module
from sealserve.serving.batching import BatchingOptions
from sealserve.serving.inference import run_inputs
from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.loader import LoadOptions, VersionLoader
from sealserve.serving.servable import QUICK_RUN_SECONDS, Servable
from sealserve.serving.server import MAX_BATCH_WAITERS, grpc_threads
from sealserve.serving.session_bundle import SessionBundle
from sealserve.serving.tensorflow_runtime import import_tensorflow
from tests.tf_examples import serialized_example

tf = import_tensorflow()


def _assert_same_as_tf_function(directory: Path, key: str, inputs: dict[str, np.ndarray]) -> None:
    function = tf.saved_model.load(str(directory)).signatures[key]
    expected = {alias: t.numpy() for alias, t in function(**inputs).items()}
    run = SessionBundle(str(directory), ["serve"]).runner(key)
    for quick in (False, True):  # the inter-op pool, and the caller's thread
        got = run(inputs, quick)
        assert sorted(got) == sorted(expected)
        for alias, value in expected.items():
            np.testing.assert_allclose(got[alias], value, rtol=1e-6)
            assert got[alias].dtype == value.dtype


def test_half_plus_two_predicts_as_tensorflow(half_plus_two):
    x = np.asarray([[1.0], [2.0], [5.0]], np.float32)
    _assert_same_as_tf_function(half_plus_two, "serving_default", {"x": x})
    _assert_same_as_tf_function(half_plus_two, "regress_x2_to_y3", {"inputs": x})
    run = SessionBundle(str(half_plus_two), ["serve"]).runner("serving_default")
    assert run({"x": x}, True)["y"].tolist() == [[2.5], [3.0], [4.5]]


def test_a_feed_replacing_an_op_output_takes_any_shape_as_in_tf_serving(half_plus_two):
    """`x` is an Identity's output declared [?,1]: TF Serving feeds [3] and the graph
    answers (its documented example); shapes the graph's ops reject are TensorFlow's
    error."""
    run = SessionBundle(str(half_plus_two), ["serve"]).runner("serving_default")
    assert run({"x": np.asarray([1.0, 2.0, 5.0], np.float32)}, False)["y"].tolist() == [
        2.5,
        3.0,
        4.5,
    ]


@pytest.mark.parametrize("key", ["classify_x_to_y", "regress_x_to_y", "regress_x_to_y2"])
def test_tf_example_signatures_answer_as_tensorflow(half_plus_two, key):
    examples = [serialized_example(x=1.0, x2=3.0), serialized_example(x=4.0, x2=-1.0)]
    _assert_same_as_tf_function(half_plus_two, key, run_inputs(examples))


def test_keras_cnn_answers_as_tensorflow(digits_model):
    images = np.random.default_rng(0).random((3, 8, 8, 1)).astype(np.float32)
    _assert_same_as_tf_function(digits_model, "serving_default", {"image": images})


def test_generated_resnet50_restores_every_variable_in_a_session(resnet50_model):
    """What TF Serving's own loader needs: no variable left to TF2's object graph."""
    bundle = SessionBundle(str(resnet50_model), ["serve"])
    images = np.random.default_rng(0).random((1, 224, 224, 3)).astype(np.float32)
    scores = bundle.runner("serving_default")({"input": images}, False)["predict"]
    assert scores.shape == (1, 1001)
    assert scores.sum() == pytest.approx(1.0, rel=1e-4)


def test_a_feed_into_a_placeholder_must_fit_its_shape(digits_model):
    """TensorFlow's own rule for placeholders (oneDNN's convolution aborts the process on a
    tensor of another rank: this must never reach it)."""
    run = SessionBundle(str(digits_model), ["serve"]).runner("serving_default")
    with pytest.raises(
        InvalidArgument, match=r"Cannot feed value of shape \(2, 8, 8\) .*\(None, 8, 8, 1\)"
    ):
        run({"image": np.ones((2, 8, 8), np.float32)}, False)


@pytest.fixture(scope="module")
def keras_wrapped_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SavedModel that tracks Keras 3's variable wrappers, not TensorFlow's variables: its
    checkpoint holds copies that only TF2's object graph ties back to the functions."""
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.layers[0].set_weights([np.asarray([[2.0], [3.0]], np.float32), np.ones(1, np.float32)])

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def predict(x):
        return {"y": model(x)}

    module = tf.Module()
    module.keras_variables = list(model.weights)
    directory = tmp_path_factory.mktemp("models") / "wrapped" / "1"
    tf.saved_model.save(module, str(directory), signatures={"serving_default": predict})
    return directory


def test_unrestorable_variables_are_refused_by_the_session(keras_wrapped_model):
    with pytest.raises(ValueError, match="variables not restored in a Session"):
        SessionBundle(str(keras_wrapped_model), ["serve"])


def test_the_loader_falls_back_to_tf_function_and_says_so(keras_wrapped_model, caplog):
    loader = VersionLoader("wrapped", 1, keras_wrapped_model, StaticKeyProvider({}), LoadOptions())
    with caplog.at_level(logging.WARNING):
        servable = loader.load()
    assert "runs through tf.function" in caplog.text
    x = np.asarray([[1.0, 1.0], [0.0, 2.0]], np.float32)
    assert servable.run("serving_default", {"x": x})["y"].tolist() == [[6.0], [7.0]]


class RunClock:
    """The servable's clock, made to say that every run takes `run_seconds`: whether a
    signature counts as quick is then a matter of the rule, not of this machine's speed."""

    def __init__(self, run_seconds: float) -> None:
        self.now, self.run_seconds, self.started = 0.0, run_seconds, False

    def perf_counter(self) -> float:
        # called once as a run starts and once as it ends
        self.now += self.run_seconds if self.started else 0.0
        self.started = not self.started
        return self.now


def test_a_signature_becomes_quick_after_quick_runs_only(half_plus_two, monkeypatch):
    servable = VersionLoader(
        "half_plus_two", 1, half_plus_two, StaticKeyProvider({}), LoadOptions()
    ).load()
    monkeypatch.setattr(servable_module, "time", RunClock(QUICK_RUN_SECONDS / 10))
    assert not servable.quick("serving_default")  # never run: not known to be quick
    for _ in range(3):
        servable.run("serving_default", {"x": np.asarray([1.0], np.float32)})
    assert servable.quick("serving_default")

    monkeypatch.setattr(servable_module, "time", RunClock(QUICK_RUN_SECONDS * 5))
    slow_servable = Servable(
        "slow",
        1,
        {"serving_default": lambda inputs, quick: {"y": inputs["x"]}},
        servable.signature_defs,
        bounded=frozenset({"serving_default"}),  # only its run time may keep it from quick
    )
    slow_servable.run("serving_default", {"x": np.asarray([1.0], np.float32)})
    assert not slow_servable.quick("serving_default")


def test_grpc_handler_threads_default_to_cpus_plus_two_batches_of_waiters(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert grpc_threads(None) == 4
    assert grpc_threads(BatchingOptions(max_batch_size=8)) == 4 + 16
    assert grpc_threads(BatchingOptions()) == 4 + MAX_BATCH_WAITERS
