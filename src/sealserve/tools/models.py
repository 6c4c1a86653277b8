"""Generated SavedModels for tests and the demo (never downloaded).

`half_plus_two` re-creates TF Serving's test model: variables a=0.5, b=2, c=3 and the
signatures `serving_default` (predict x → y = 0.5x + 2), `classify_x_to_y`,
`regress_x_to_y` (y), `regress_x_to_y2` (0.5x + 3) and `regress_x2_to_y3` (0.5·x2 + 3), the
last four reading serialized `tf.Example`s with float features `x` and `x2` (default 0).
TensorFlow is imported only when a model is made.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sealserve.errors import InvalidArgument
from sealserve.fsio import atomic_output_dir
from sealserve.serving.tensorflow_runtime import import_tensorflow


def make_half_plus_two(directory: Path) -> None:
    tf = import_tensorflow()

    class HalfPlusTwo(tf.Module):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.a = tf.Variable(0.5, name="a")
            self.b = tf.Variable(2.0, name="b")
            self.c = tf.Variable(3.0, name="c")

        def _parse(self, examples: Any) -> dict[str, Any]:
            return tf.io.parse_example(
                examples,
                {
                    "x": tf.io.FixedLenFeature([1], tf.float32),
                    "x2": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
                },
            )

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def predict(self, x: Any) -> dict[str, Any]:
            return {"y": self.a * x + self.b}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify_x_to_y(self, inputs: Any) -> dict[str, Any]:
            return {"scores": self.a * self._parse(inputs)["x"] + self.b}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress_x_to_y(self, inputs: Any) -> dict[str, Any]:
            return {"outputs": self.a * self._parse(inputs)["x"] + self.b}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress_x_to_y2(self, inputs: Any) -> dict[str, Any]:
            return {"outputs": self.a * self._parse(inputs)["x"] + self.c}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress_x2_to_y3(self, inputs: Any) -> dict[str, Any]:
            return {"outputs": self.a * self._parse(inputs)["x2"] + self.c}

    module = HalfPlusTwo()
    signatures = {
        "serving_default": module.predict,
        "classify_x_to_y": module.classify_x_to_y,
        "regress_x_to_y": module.regress_x_to_y,
        "regress_x_to_y2": module.regress_x_to_y2,
        "regress_x2_to_y3": module.regress_x2_to_y3,
    }
    _save(module, signatures, directory)


def _save(module: object, signatures: dict[str, object], directory: Path) -> None:
    """Write the SavedModel under a temporary name, so a failed export leaves nothing."""
    tf = import_tensorflow()

    with atomic_output_dir(directory) as tmp:
        tf.saved_model.save(module, str(tmp), signatures=signatures)


MODEL_NAMES: dict[str, Callable[[Path], None]] = {
    "half_plus_two": make_half_plus_two,
}


def make_model(name: str, directory: Path) -> None:
    try:
        maker = MODEL_NAMES[name]
    except KeyError:
        raise InvalidArgument(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}") from None
    maker(directory)
