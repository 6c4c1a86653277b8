"""The direct graph call answers exactly as TensorFlow's public signature call, on every
signature of the generated models, and checks shapes as that call does."""

from __future__ import annotations

import numpy as np
import pytest

from sealserve.errors import InvalidArgument
from sealserve.serving.graph_call import GraphCall
from sealserve.serving.inference import run_inputs
from sealserve.serving.tensorflow_runtime import import_tensorflow
from tests.tf_examples import serialized_example

tf = import_tensorflow()


def _assert_same_as_public(function, inputs: dict[str, np.ndarray]) -> None:
    direct = GraphCall.build(function)
    assert direct is not None, "TensorFlow's internals changed: the fast path is off"
    expected = {alias: t.numpy() for alias, t in function(**inputs).items()}
    got = direct(inputs)
    assert sorted(got) == sorted(expected)
    for alias, value in expected.items():
        np.testing.assert_array_equal(got[alias], value)
        assert got[alias].dtype == value.dtype


@pytest.fixture(scope="module")
def half_plus_two_signatures(half_plus_two_tf2):
    return tf.saved_model.load(str(half_plus_two_tf2)).signatures


def test_predict_signature_matches_public_call(half_plus_two_signatures):
    x = np.asarray([5.0], np.float32)
    _assert_same_as_public(half_plus_two_signatures["serving_default"], {"x": x})
    assert GraphCall.build(half_plus_two_signatures["serving_default"])({"x": x})["y"].tolist() == [
        4.5
    ]


@pytest.mark.parametrize("key", ["classify_x_to_y", "regress_x_to_y", "regress_x_to_y2"])
def test_string_input_signatures_match_public_call(half_plus_two_signatures, key):
    examples = [serialized_example(x=1.0, x2=3.0), serialized_example(x=4.0, x2=-1.0)]
    _assert_same_as_public(half_plus_two_signatures[key], run_inputs(examples))


def test_cnn_with_fixed_dimensions_matches_public_call(digits_model):
    signatures = tf.saved_model.load(str(digits_model)).signatures
    function = signatures["serving_default"]
    (alias, spec), *_ = function.structured_input_signature[1].items()
    shape = [3 if d is None else d for d in spec.shape.as_list()]
    images = np.random.default_rng(0).random(shape).astype(spec.dtype.as_numpy_dtype)
    _assert_same_as_public(function, {alias: images})


def test_shape_not_matching_the_signature_is_invalid_argument(half_plus_two_signatures):
    direct = GraphCall.build(half_plus_two_signatures["serving_default"])
    with pytest.raises(InvalidArgument, match=r"input 'x' has shape \[2,2\]; .* takes \[1\]"):
        direct({"x": np.ones((2, 2), np.float32)})


def test_a_kernel_error_is_tensorflows_own_error(half_plus_two_signatures):
    function = half_plus_two_signatures["classify_x_to_y"]
    direct = GraphCall.build(function)
    with pytest.raises(tf.errors.InvalidArgumentError):  # not a tf.Example
        direct({"inputs": np.asarray([b"not a serialized example"], dtype=object)})


def test_a_function_of_unknown_structure_falls_back_to_the_public_call():
    class Positional(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return [x * 2.0]  # a list, not a signature's dict of outputs

    function = Positional().__call__.get_concrete_function()
    assert GraphCall.build(function) is None
