"""Generated models answer as TF Serving's own test models do (reference §5)."""

from __future__ import annotations

import pytest

from sealserve.errors import AlreadyExists, InvalidArgument
from sealserve.serving.tensorflow_runtime import import_tensorflow
from sealserve.tools.models import make_model


def example(**features: float) -> bytes:
    tf = import_tensorflow()
    feature = {
        k: tf.train.Feature(float_list=tf.train.FloatList(value=[v])) for k, v in features.items()
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


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
    assert predict(x=tf.constant([1.0, 2.0, 5.0]))["y"].numpy().tolist() == [2.5, 3.0, 4.5]
    regress = model.signatures["regress_x_to_y"]
    assert regress(inputs=tf.constant([example(x=80.0)]))["outputs"].numpy().ravel().tolist() == [
        42.0
    ]
    classify = model.signatures["classify_x_to_y"]
    assert classify(inputs=tf.constant([example(x=20.0)]))["scores"].numpy().ravel().tolist() == [
        12.0
    ]
    y2 = model.signatures["regress_x_to_y2"](inputs=tf.constant([example(x=2.0)]))["outputs"]
    assert y2.numpy().ravel().tolist() == [4.0]
    y3 = model.signatures["regress_x2_to_y3"](inputs=tf.constant([example(x=0.0, x2=4.0)]))
    assert y3["outputs"].numpy().ravel().tolist() == [5.0]


def test_make_refuses_an_existing_directory_and_unknown_names(half_plus_two, tmp_path):
    with pytest.raises(AlreadyExists):
        make_model("half_plus_two", half_plus_two)
    with pytest.raises(InvalidArgument, match="unknown model"):
        make_model("no_such_model", tmp_path / "x")
