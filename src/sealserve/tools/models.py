"""Generated SavedModels for tests and the demo (never downloaded).

`half_plus_two` re-creates TF Serving's test model: variables a=0.5, b=2, c=3 and the
signatures `serving_default` (predict x → y = 0.5x + 2), `classify_x_to_y` (classify),
`regress_x_to_y` (y), `regress_x_to_y2` (0.5x + 3) and `regress_x2_to_y3` (0.5·x2 + 3)
(regress), the last four reading serialized `tf.Example`s with float features `x` and `x2`
(default 0).

`resnet50` has the interface of the Intel ResNet-50 (`resnet50-v15-fp32`): Keras's ResNet50
architecture with seeded random weights (nothing is downloaded), `serving_default` predict
`input` [None,224,224,3] float32 → `predict` [None,1001] float32 softmax. About 100 MB.

`digits` is a small CNN trained at generation time on scikit-learn's bundled 8×8 digits (a
few seconds on two cores, ≥ 0.95 held-out accuracy): `serving_default` predict `image`
[None,8,8,1] float32 in [0,1] → `scores` [None,10] softmax and `classes` [None] int64, and
`classify` (classify) reading `tf.Example`s with a float feature `image` of 64 values (row
major, [0,1]) → `classes` [None,10] strings "0".."9" and `scores` [None,10].

Generation is deterministic for a given `seed`: the same weights on every run on the same
machine. It seeds TensorFlow's and Keras's global generators (Python's and NumPy's are put
back as they were). TensorFlow is imported only when a model is made.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealserve.errors import InvalidArgument
from sealserve.fsio import atomic_output_dir
from sealserve.serving.signatures import CLASSIFY_METHOD, REGRESS_METHOD
from sealserve.serving.tensorflow_runtime import import_tensorflow

if TYPE_CHECKING:
    import numpy as np

DEFAULT_SEED = 0
DIGITS_LABELS = tuple(str(digit) for digit in range(10))


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
    method_names = {
        "classify_x_to_y": CLASSIFY_METHOD,
        "regress_x_to_y": REGRESS_METHOD,
        "regress_x_to_y2": REGRESS_METHOD,
        "regress_x2_to_y3": REGRESS_METHOD,
    }
    _save(module, signatures, directory, method_names)


def resnet50_keras_model(seed: int = DEFAULT_SEED) -> Any:
    """Keras's ResNet50 with 1001 classes (background + ImageNet's 1000, as the Intel model)
    and random weights drawn from `seed`."""
    import_tensorflow()
    import keras

    with _seeded(seed):
        return keras.applications.ResNet50(weights=None, classes=1001, input_shape=(224, 224, 3))


def make_resnet50(directory: Path, seed: int = DEFAULT_SEED) -> None:
    tf = import_tensorflow()
    model = resnet50_keras_model(seed)

    @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.float32, name="input")])
    def predict(images: Any) -> dict[str, Any]:
        return {"predict": model(images, training=False)}

    _save(_weights_only(tf, model), {"serving_default": predict}, directory)


def digits_dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as `(train_x, train_y, test_x, test_y)`: images float32
    [N,8,8,1] scaled from 0..16 to [0,1], labels int64. Every fifth sample (index % 5 == 4)
    is held out, 359 of 1797: a fixed split spread evenly over the data set, which is ordered
    (holding out its last fifth instead, the same model scores only 0.94 to 0.955)."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / np.float32(16.0))[..., np.newaxis]
    labels = digits.target.astype(np.int64)
    held_out = np.arange(len(labels)) % 5 == 4
    return images[~held_out], labels[~held_out], images[held_out], labels[held_out]


def make_digits(directory: Path, seed: int = DEFAULT_SEED) -> None:
    tf = import_tensorflow()
    import keras

    train_x, train_y, _, _ = digits_dataset()
    with _seeded(seed):
        model = keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
                keras.layers.MaxPooling2D(2),
                keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
                keras.layers.MaxPooling2D(2),
                keras.layers.Flatten(),
                keras.layers.Dropout(0.3),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
        model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
        model.fit(train_x, train_y, batch_size=64, epochs=15, shuffle=True, verbose=0)

    @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32, name="image")])
    def predict(image: Any) -> dict[str, Any]:
        scores = model(image, training=False)
        return {"scores": scores, "classes": tf.argmax(scores, axis=1, output_type=tf.int64)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify(inputs: Any) -> dict[str, Any]:
        features = tf.io.parse_example(inputs, {"image": tf.io.FixedLenFeature([64], tf.float32)})
        scores = model(tf.reshape(features["image"], [-1, 8, 8, 1]), training=False)
        labels = tf.constant(DIGITS_LABELS)[tf.newaxis, :]
        return {"classes": tf.tile(labels, [tf.shape(scores)[0], 1]), "scores": scores}

    signatures = {"serving_default": predict, "classify": classify}
    _save(_weights_only(tf, model), signatures, directory, {"classify": CLASSIFY_METHOD})


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed every generator Keras draws from; afterwards Python's and NumPy's global states
    are restored, so a generated model does not make the caller's randomness repeat."""
    import keras
    import numpy as np

    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        keras.utils.set_random_seed(seed)
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _weights_only(tf: Any, model: Any) -> Any:
    """A module that tracks only the model's variables: the signature functions capture the
    Keras model, but its object graph (layers, optimizer) stays out of the SavedModel: serving
    does not use it, and leaving it out shortens ResNet-50's export from 5.3 s to 3 s."""
    module = tf.Module()
    # the TensorFlow variables themselves, not Keras's wrappers: saved through a wrapper, a
    # variable is checkpointed under a copy of its own, which only the object graph ties
    # back to what the functions read, and a Session (TF Serving's loader) cannot follow
    module.keras_variables = [weight.value for weight in model.weights]
    return module


def _save(
    module: object,
    signatures: dict[str, object],
    directory: Path,
    method_names: Mapping[str, str] | None = None,
) -> None:
    """Write the SavedModel under a temporary name, so a failed export leaves nothing.

    `method_names` overrides signatures' method names: `tf.saved_model.save` marks every
    signature as predict, but TF Serving's classify and regress APIs want their own."""
    tf = import_tensorflow()

    with atomic_output_dir(directory) as tmp:
        tf.saved_model.save(module, str(tmp), signatures=signatures)
        if method_names:
            _set_method_names(tmp, method_names)


def _set_method_names(saved_model_dir: Path, method_names: Mapping[str, str]) -> None:
    """Rewrite SignatureDef method names in saved_model.pb, and the fingerprint that hashes
    it (fingerprint.pb holds checksums of saved_model.pb and of the signature defs)."""
    import_tensorflow()
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    path = saved_model_dir / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    (meta_graph,) = saved_model.meta_graphs
    for key, method_name in method_names.items():
        if key not in meta_graph.signature_def:  # the map would silently add an empty one
            raise ValueError(f"no signature {key!r} to mark as {method_name}")
        meta_graph.signature_def[key].method_name = method_name
    path.write_bytes(saved_model.SerializeToString(deterministic=True))
    fingerprint = saved_model_dir / "fingerprint.pb"
    if fingerprint.exists():
        fingerprint.write_bytes(fingerprinting.CreateFingerprintDef(str(saved_model_dir)))


MODEL_NAMES: dict[str, Callable[[Path], None]] = {
    "half_plus_two": make_half_plus_two,
    "resnet50": make_resnet50,
    "digits": make_digits,
}


def make_model(name: str, directory: Path) -> None:
    try:
        maker = MODEL_NAMES[name]
    except KeyError:
        raise InvalidArgument(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}") from None
    maker(directory)
