"""Which signatures may run inline (`bounded_ops`): read from real SavedModels, each saved
here by TensorFlow, whose work an input's value decides (or not)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sealserve.serving.bounded_ops import bounded_signatures
from sealserve.serving.loader import meta_graph_of
from sealserve.serving.tensorflow_runtime import import_tensorflow

pytestmark = pytest.mark.integration
tf = import_tensorflow()


def _saved(tmp_path: Path, body: Callable, spec: object) -> frozenset[str]:
    """The bounded signatures of a SavedModel whose serving_default runs `body`."""
    module = tf.Module()
    module.run = tf.function(body, input_signature=[spec])
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.run})
    files = {"saved_model.pb": (tmp_path / "saved_model.pb").read_bytes()}
    return bounded_signatures(meta_graph_of(files, ["serve"])) - {"__saved_model_init_op"}


def _count(n):  # noqa: ANN001, ANN202
    return {"y": tf.while_loop(lambda i: i < n, lambda i: i + 1, [tf.constant(0, tf.int64)])[0]}


@tf.function
def _inner_count(n):  # noqa: ANN001, ANN202
    return _count(n)["y"]


SCALAR = tf.TensorSpec([], tf.int64)
VECTOR = tf.TensorSpec([None], tf.float32)
UNBOUNDED = {
    "a loop counted to an input": (_count, SCALAR),
    "the loop in a function it calls": (lambda n: {"y": _inner_count(n)}, SCALAR),
    "a fill to an input's size": (lambda n: {"y": tf.reduce_sum(tf.fill([n], 1.0))}, SCALAR),
    "a branch on an input": (lambda x: {"y": tf.cond(x[0] > 0, lambda: x * 2, lambda: x)}, VECTOR),
    "Python": (lambda x: {"y": tf.py_function(lambda v: v * 2, [x], tf.float32)}, VECTOR),
    "an input tiled": (lambda x: {"y": tf.tile(x, tf.cast(x[:1], tf.int32))}, VECTOR),
}  # fmt: skip


@pytest.mark.parametrize("case", UNBOUNDED)
def test_a_signature_whose_work_an_input_decides_is_not_bounded(tmp_path, case):
    body, spec = UNBOUNDED[case]
    assert _saved(tmp_path, body, spec) == frozenset()


def test_arithmetic_contractions_and_reductions_are_bounded(tmp_path):
    weights = tf.constant([[1.0, 2.0], [3.0, 4.0]])

    def dense(x):  # noqa: ANN001, ANN202
        hidden = tf.nn.relu(tf.matmul(tf.reshape(x, [-1, 2]), weights) + 1.0)
        return {"y": tf.reduce_mean(tf.nn.softmax(hidden), axis=1)}

    assert _saved(tmp_path, dense, VECTOR) == {"serving_default"}


def test_the_graph_is_cut_at_the_fed_inputs(half_plus_two):
    """TF Serving's half_plus_two computes `x` from tf.Examples for its classify and regress
    signatures; its predict signature feeds `x` itself, so what computes `x` never runs."""
    files = {"saved_model.pb": (half_plus_two / "saved_model.pb").read_bytes()}
    meta_graph = meta_graph_of(files, ["serve"])
    assert "serving_default" in bounded_signatures(meta_graph)
    assert bounded_signatures(meta_graph) == set(meta_graph.signature_def)
