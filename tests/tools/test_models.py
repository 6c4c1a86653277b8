"""Generated models answer as TF Serving's own test models do (reference §5)."""

from __future__ import annotations

import numpy as np
import pytest

from sealserve.errors import AlreadyExists, InvalidArgument
from sealserve.serving.tensorflow_runtime import import_tensorflow
from sealserve.tools.models import (
    DEFAULT_SEED,
    MODEL_NAMES,
    digits_dataset,
    make_model,
    resnet50_keras_model,
)
from tests.tf_examples import serialized_example


def test_half_plus_two_answers_like_tf_servings(half_plus_two):
    tf = import_tensorflow()
    model = tf.saved_model.load(str(half_plus_two))
    assert set(model.signatures) == {
        "serving_default",
        "classify_x_to_y",
        "regress_x_to_y",
        "regress_x_to_y2",
        "regress_x2_to_y3",
    }
    predict = model.signatures["serving_default"]
    assert predict(x=tf.constant([[1.0], [2.0], [5.0]]))["y"].numpy().ravel().tolist() == [
        2.5,
        3.0,
        4.5,
    ]
    regress = model.signatures["regress_x_to_y"]
    assert regress(inputs=tf.constant([serialized_example(x=80.0)]))[
        "outputs"
    ].numpy().ravel().tolist() == [42.0]
    classify = model.signatures["classify_x_to_y"]
    assert classify(inputs=tf.constant([serialized_example(x=20.0)]))[
        "scores"
    ].numpy().ravel().tolist() == [12.0]
    y2 = model.signatures["regress_x_to_y2"](inputs=tf.constant([serialized_example(x=2.0)]))[
        "outputs"
    ]
    assert y2.numpy().ravel().tolist() == [4.0]
    y3 = model.signatures["regress_x2_to_y3"](inputs=tf.constant([[4.0]]))
    assert y3["outputs"].numpy().ravel().tolist() == [5.0]


def test_half_plus_two_has_tf_servings_metadata(half_plus_two):
    """The signatures of TF Serving's testdata `half_plus_two_model_metadata.json`, but
    `tf_example`'s shape, which TF Serving's generator now declares as [?]."""
    sigs = saved_signatures(half_plus_two)
    assert sigs["serving_default"] == (
        "tensorflow/serving/predict",
        {"x": ("DT_FLOAT", [-1, 1])},
        {"y": ("DT_FLOAT", [-1, 1])},
    )
    assert sigs["regress_x2_to_y3"] == (
        "tensorflow/serving/regress",
        {"inputs": ("DT_FLOAT", [-1, 1])},
        {"outputs": ("DT_FLOAT", [-1, 1])},
    )
    assert sigs["classify_x_to_y"] == (
        "tensorflow/serving/classify",
        {"inputs": ("DT_STRING", [-1])},
        {"scores": ("DT_FLOAT", [-1, 1])},
    )


def test_half_plus_three_and_the_tf2_variant(tmp_path):
    tf = import_tensorflow()
    make_model("half_plus_three", tmp_path / "h3")
    three = tf.saved_model.load(str(tmp_path / "h3")).signatures
    assert set(three) == {"serving_default", "tensorflow/serving/regress"}
    assert three["serving_default"](x=tf.constant([[1.0]]))["y"].numpy().tolist() == [[3.5]]
    make_model("half_plus_two_tf2", tmp_path / "tf2")
    tf2 = tf.saved_model.load(str(tmp_path / "tf2")).signatures
    assert tf2["serving_default"](x=tf.constant([1.0]))["y"].numpy().tolist() == [2.5]
    assert "classify_x2_to_y3" in tf2


def test_make_refuses_an_existing_directory_and_unknown_names(half_plus_two, tmp_path):
    with pytest.raises(AlreadyExists):
        make_model("half_plus_two", half_plus_two)
    with pytest.raises(InvalidArgument, match="unknown model"):
        make_model("no_such_model", tmp_path / "x")


# -- signatures as saved (saved_model.pb) and as TensorFlow loads them -------------------------


def saved_signatures(directory) -> dict[str, tuple[str, dict, dict]]:
    """{key: (method_name, {input: (dtype, dims)}, {output: (dtype, dims)})} read from the
    saved_model.pb of a single-MetaGraph SavedModel tagged `serve`."""
    import_tensorflow()
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel.FromString((directory / "saved_model.pb").read_bytes())
    (meta_graph,) = saved_model.meta_graphs
    assert list(meta_graph.meta_info_def.tags) == ["serve"]

    def tensors(infos) -> dict:
        return {
            alias: (types_pb2.DataType.Name(info.dtype), [d.size for d in info.tensor_shape.dim])
            for alias, info in infos.items()
        }

    return {
        key: (sig.method_name, tensors(sig.inputs), tensors(sig.outputs))
        for key, sig in meta_graph.signature_def.items()
        if key != "__saved_model_init_op"  # TensorFlow's own, in every SavedModel
    }


def spec(shape, dtype, name):
    return import_tensorflow().TensorSpec(shape, dtype, name=name)


def test_half_plus_two_signatures_carry_tf_servings_method_names(half_plus_two):
    methods = {key: sig[0] for key, sig in saved_signatures(half_plus_two).items()}
    assert methods == {
        "serving_default": "tensorflow/serving/predict",
        "classify_x_to_y": "tensorflow/serving/classify",
        "regress_x_to_y": "tensorflow/serving/regress",
        "regress_x_to_y2": "tensorflow/serving/regress",
        "regress_x2_to_y3": "tensorflow/serving/regress",
    }


def test_the_cli_offers_the_generated_models():
    assert {
        "half_plus_two",
        "half_plus_three",
        "half_plus_two_tf2",
        "string_echo",
        "resnet50",
        "digits",
    } <= set(MODEL_NAMES)


# -- resnet50 ----------------------------------------------------------------------------------


def test_resnet50_has_the_interface_of_intels_resnet50(resnet50_model):
    tf = import_tensorflow()
    assert saved_signatures(resnet50_model) == {
        "serving_default": (
            "tensorflow/serving/predict",
            {"input": ("DT_FLOAT", [-1, 224, 224, 3])},
            {"predict": ("DT_FLOAT", [-1, 1001])},
        )
    }
    model = tf.saved_model.load(str(resnet50_model))
    predict = model.signatures["serving_default"]
    assert predict.structured_input_signature == (
        (),
        {"input": spec([None, 224, 224, 3], tf.float32, "input")},
    )
    assert predict.structured_outputs == {"predict": spec([None, 1001], tf.float32, "predict")}

    images = np.random.default_rng(0).random((2, 224, 224, 3), dtype=np.float32)
    scores = predict(input=tf.constant(images))["predict"].numpy()
    assert scores.shape == (2, 1001)
    assert (scores >= 0).all()
    np.testing.assert_allclose(scores.sum(axis=1), [1.0, 1.0], rtol=1e-5)


def test_resnet50_weights_are_drawn_from_the_seed(resnet50_model):
    tf = import_tensorflow()
    saved = tf.train.load_checkpoint(str(resnet50_model / "variables" / "variables"))
    regenerated = resnet50_keras_model(DEFAULT_SEED).weights
    keys = [key for key in saved.get_variable_to_shape_map() if key.startswith("keras_variables/")]
    assert len(keys) == len(regenerated) == 320
    for i, weight in enumerate(regenerated):
        saved_value = saved.get_tensor(f"keras_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE")
        np.testing.assert_array_equal(saved_value, weight.numpy(), err_msg=weight.path)

    first_kernel = resnet50_keras_model(DEFAULT_SEED + 1).weights[0]
    assert not np.array_equal(first_kernel.numpy(), regenerated[0].numpy())


# -- digits ------------------------------------------------------------------------------------


def test_digits_dataset_is_a_fixed_split_of_the_bundled_digits():
    train_x, train_y, test_x, test_y = digits_dataset()
    assert train_x.shape == (1438, 8, 8, 1) and test_x.shape == (359, 8, 8, 1)
    assert train_x.dtype == test_x.dtype == np.float32
    assert train_y.dtype == test_y.dtype == np.int64
    assert min(train_x.min(), test_x.min()) == 0.0 and max(train_x.max(), test_x.max()) == 1.0
    assert set(test_y.tolist()) == set(range(10))
    for first, second in zip(digits_dataset(), (train_x, train_y, test_x, test_y), strict=True):
        np.testing.assert_array_equal(first, second)


def test_digits_has_a_two_output_predict_and_a_classify_signature(digits_model):
    tf = import_tensorflow()
    assert saved_signatures(digits_model) == {
        "serving_default": (
            "tensorflow/serving/predict",
            {"image": ("DT_FLOAT", [-1, 8, 8, 1])},
            {"scores": ("DT_FLOAT", [-1, 10]), "classes": ("DT_INT64", [-1])},
        ),
        "classify": (
            "tensorflow/serving/classify",
            {"inputs": ("DT_STRING", [-1])},
            {"classes": ("DT_STRING", [-1, 10]), "scores": ("DT_FLOAT", [-1, 10])},
        ),
    }
    signatures = tf.saved_model.load(str(digits_model)).signatures
    predict = signatures["serving_default"]
    assert predict.structured_input_signature == (
        (),
        {"image": spec([None, 8, 8, 1], tf.float32, "image")},
    )
    assert predict.structured_outputs == {
        "scores": spec([None, 10], tf.float32, "scores"),
        "classes": spec([None], tf.int64, "classes"),
    }
    classify = signatures["classify"]
    assert classify.structured_input_signature == (
        (),
        {"inputs": spec([None], tf.string, "inputs")},
    )
    assert classify.structured_outputs == {
        "classes": spec([None, 10], tf.string, "classes"),
        "scores": spec([None, 10], tf.float32, "scores"),
    }


def test_digits_recognises_held_out_digits(digits_model):
    tf = import_tensorflow()
    _, _, test_x, test_y = digits_dataset()
    predict = tf.saved_model.load(str(digits_model)).signatures["serving_default"]
    outputs = predict(image=tf.constant(test_x))
    scores, classes = outputs["scores"].numpy(), outputs["classes"].numpy()
    np.testing.assert_allclose(scores.sum(axis=1), np.ones(len(test_x)), rtol=1e-5)
    np.testing.assert_array_equal(classes, scores.argmax(axis=1))
    accuracy = (classes == test_y).mean()
    assert accuracy >= 0.95, accuracy


def test_digits_classify_agrees_with_predict(digits_model):
    tf = import_tensorflow()
    _, _, test_x, _ = digits_dataset()
    images = test_x[:16]
    examples = [
        tf.train.Example(
            features=tf.train.Features(
                feature={"image": tf.train.Feature(float_list=tf.train.FloatList(value=image))}
            )
        ).SerializeToString()
        for image in images.reshape(len(images), 64)
    ]
    signatures = tf.saved_model.load(str(digits_model)).signatures
    classified = signatures["classify"](inputs=tf.constant(examples))
    predicted = signatures["serving_default"](image=tf.constant(images))
    labels = [str(digit).encode() for digit in range(10)]
    assert classified["classes"].numpy().tolist() == [labels] * len(images)
    np.testing.assert_allclose(
        classified["scores"].numpy(), predicted["scores"].numpy(), rtol=1e-6, atol=1e-7
    )
