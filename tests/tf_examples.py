"""Serialized tf.Examples for the classify/regress signatures in tests."""

from __future__ import annotations

from sealserve.serving.tensorflow_runtime import import_tensorflow


def serialized_example(**features: float) -> bytes:
    """A tf.Example with one float per named feature, serialized."""
    tf = import_tensorflow()
    feature = {
        name: tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        for name, value in features.items()
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
