"""Generated SavedModels for tests and the demo (never downloaded).

`half_plus_two` and `half_plus_three` are TF Serving's test models, built as TF Serving's
`saved_model_half_plus_two.py` builds them (a TF1 graph and `SavedModelBuilder`): variables
a=0.5, b=2 (3), c=3 and the signatures `serving_default` (predict `x` [?,1] → `y` = 0.5x + b),
`classify_x_to_y` (classify, `scores` = y), `regress_x_to_y` (y), `regress_x_to_y2`
(0.5x + 3), reading serialized `tf.Example`s with float features `x` and `x2` (default 0), and
`regress_x2_to_y3` (0.5·x2 + 3, fed `x2` [?,1] floats directly); `half_plus_two_tf2` is the
same generator's TF2 variant. `string_echo` takes strings (text and `{"b64": ...}` forms).

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
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealserve.errors import InvalidArgument
from sealserve.fsio import atomic_output_dir
from sealserve.serving.signatures import CLASSIFY_METHOD, PREDICT_METHOD, REGRESS_METHOD
from sealserve.serving.tensorflow_runtime import import_tensorflow

if TYPE_CHECKING:
    import numpy as np

DEFAULT_SEED = 0
DIGITS_LABELS = tuple(str(digit) for digit in range(10))


def make_half_plus_two(directory: Path) -> None:
    """TF Serving's `saved_model_half_plus_two_cpu`: y = 0.5x + 2 (b = 2)."""
    _make_half_plus(directory, b=2.0)


def make_half_plus_three(directory: Path) -> None:
    """TF Serving's `saved_model_half_plus_three` (checked in without its generator): the
    same graph with b = 3, and its two signatures, `serving_default` (x → y = 0.5x + 3) and
    `tensorflow/serving/regress` (tf.Examples → y)."""
    _make_half_plus(directory, b=3.0, only=("serving_default", "tensorflow/serving/regress"))


def _make_half_plus(directory: Path, b: float, only: tuple[str, ...] = ()) -> None:
    """The graph and signatures of TF Serving's `saved_model_half_plus_two.py`
    (`_generate_saved_model_for_half_plus_two`, device cpu), built the same way: a TF1 graph
    saved by `SavedModelBuilder`, so that the model is TF Serving's own down to the tensor
    names and shapes its metadata shows (`half_plus_two_model_metadata.json`).

    `x` is `tf.identity` of a parsed `tf.Example` feature: its signature shape is [?,1], but
    a request feeds any shape into it (TF Serving checks no shapes), which is why
    `{"instances": [1.0, 2.0, 5.0]}` answers `[2.5, 3.0, 4.5]`. The generator's asset file
    is written too (`assets/foo.txt`, read by the main op at load)."""
    tf = import_tensorflow()
    from tensorflow.python.util import deprecation

    v1 = tf.compat.v1

    def feature_spec() -> dict[str, Any]:
        return {
            "x": v1.FixedLenFeature([1], dtype=tf.float32),
            "x2": v1.FixedLenFeature([1], dtype=tf.float32, default_value=[0.0]),
        }

    def info(tensor: Any) -> Any:
        return v1.saved_model.utils.build_tensor_info(tensor)

    def signature(inputs: dict[str, Any], outputs: dict[str, Any], method: str) -> Any:
        return v1.saved_model.signature_def_utils.build_signature_def(
            {k: info(t) for k, t in inputs.items()},
            {k: info(t) for k, t in outputs.items()},
            method,
        )

    # the TF1 builder warns that it is deprecated: it is what TF Serving's generator uses
    with deprecation.silence(), tempfile.TemporaryDirectory(prefix="sealserve-assets-") as assets:
        asset_path = Path(assets) / "foo.txt"
        asset_path.write_text("asset-file-contents")
        graph = tf.Graph()
        with (
            graph.as_default(),
            v1.Session(graph=graph) as session,
            atomic_output_dir(directory) as tmp,
        ):
            a = v1.Variable(0.5, name="a")
            b_var = v1.Variable(b, name="b")
            c = v1.Variable(3.0, name="c")
            serialized = v1.placeholder(tf.string, name="tf_example", shape=[None])
            example = v1.parse_example(serialized, feature_spec())
            x = tf.identity(example["x"], name="x")
            y = tf.identity(tf.add(tf.multiply(a, x), b_var), name="y")
            y2 = tf.identity(tf.add(tf.multiply(a, x), c), name="y2")
            x2 = tf.identity(example["x2"], name="x2")
            # separate constants for x2, as the generator (keeps optimizers from fusing)
            a2 = v1.Variable(0.5, name="a2")
            c2 = v1.Variable(3.0, name="c2")
            y3 = tf.identity(tf.add(tf.multiply(a2, x2), c2), name="y3")

            asset_tensor = tf.constant(str(asset_path))
            v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, asset_tensor)
            filename = v1.Variable(
                "foo.txt", name="filename_tensor", trainable=False, collections=[]
            )
            assign_filename = filename.assign("foo.txt")

            signatures = {
                "regress_x_to_y": signature({"inputs": serialized}, {"outputs": y}, REGRESS_METHOD),
                "regress_x_to_y2": signature(
                    {"inputs": serialized}, {"outputs": y2}, REGRESS_METHOD
                ),
                "regress_x2_to_y3": signature({"inputs": x2}, {"outputs": y3}, REGRESS_METHOD),
                "classify_x_to_y": signature(
                    {"inputs": serialized}, {"scores": y}, CLASSIFY_METHOD
                ),
                "serving_default": signature({"x": x}, {"y": y}, PREDICT_METHOD),
                "tensorflow/serving/regress": signature(
                    {"inputs": serialized}, {"outputs": y}, REGRESS_METHOD
                ),
            }
            signatures = (
                {k: v for k, v in signatures.items() if k in only}
                if only
                else {k: v for k, v in signatures.items() if k != "tensorflow/serving/regress"}
            )
            session.run(v1.global_variables_initializer())
            export = tmp / "export"
            builder = v1.saved_model.builder.SavedModelBuilder(str(export))
            builder.add_meta_graph_and_variables(
                session,
                [v1.saved_model.tag_constants.SERVING],
                signature_def_map=signatures,
                assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
                main_op=tf.group(assign_filename),
            )
            builder.save()
            for child in export.iterdir():
                child.rename(tmp / child.name)
            export.rmdir()


def make_half_plus_two_tf2(directory: Path) -> None:
    """TF Serving's `saved_model_half_plus_two_tf2_cpu`, as its generator's `HalfPlusTwoModel`
    builds it with `tf.saved_model.save`: `serving_default` takes `x` of shape [1]; the
    regress and classify signatures read tf.Examples (`regress_x_to_y`, `regress_x_to_y2`,
    `classify_x_to_y`) or floats of shape [1] (`regress_x2_to_y3`, `classify_x2_to_y3`).
    Like the generator, it leaves every method name `tensorflow/serving/predict`."""
    tf = import_tensorflow()
    spec = {
        "x": tf.io.FixedLenFeature([1], dtype=tf.float32),
        "x2": tf.io.FixedLenFeature([1], dtype=tf.float32, default_value=[0.0]),
    }
    examples = tf.TensorSpec([None], dtype=tf.string, name="inputs")

    class HalfPlusTwoModel(tf.Module):  # type: ignore[name-defined]
        def __init__(self, asset: Path) -> None:
            super().__init__()
            self.a = tf.Variable(0.5, name="a")
            self.b = tf.Variable(2.0, name="b")
            self.c = tf.Variable(3.0, name="c")
            self.asset = tf.saved_model.Asset(str(asset))

        def compute(self, x: Any, inc: Any) -> Any:
            return tf.add(tf.multiply(self.a, x), inc)

        @tf.function(input_signature=[tf.TensorSpec(shape=[1], dtype=tf.float32)])
        def predict(self, x: Any) -> dict[str, Any]:
            return {"y": self.compute(x, self.b)}

        @tf.function(input_signature=[examples])
        def regress_xy(self, serialized: Any) -> dict[str, Any]:
            return {"outputs": self.compute(tf.io.parse_example(serialized, spec)["x"], self.b)}

        @tf.function(input_signature=[examples])
        def regress_xy2(self, serialized: Any) -> dict[str, Any]:
            return {"outputs": self.compute(tf.io.parse_example(serialized, spec)["x"], self.c)}

        @tf.function(input_signature=[tf.TensorSpec([1], dtype=tf.float32, name="inputs")])
        def regress_x2y3(self, x2: Any) -> dict[str, Any]:
            return {"outputs": self.compute(x2, self.c)}

        @tf.function(input_signature=[examples])
        def classify_xy(self, serialized: Any) -> dict[str, Any]:
            return {"scores": self.compute(tf.io.parse_example(serialized, spec)["x"], self.b)}

        @tf.function(input_signature=[tf.TensorSpec([1], dtype=tf.float32, name="inputs")])
        def classify_x2y3(self, x2: Any) -> dict[str, Any]:
            return {"scores": self.compute(x2, self.c)}

    with tempfile.TemporaryDirectory(prefix="sealserve-assets-") as assets:
        asset_path = Path(assets) / "foo.txt"
        asset_path.write_text("asset-file-contents")
        model = HalfPlusTwoModel(asset_path)
        signatures = {
            "regress_x_to_y": model.regress_xy,
            "regress_x_to_y2": model.regress_xy2,
            "regress_x2_to_y3": model.regress_x2y3,
            "classify_x_to_y": model.classify_xy,
            "classify_x2_to_y3": model.classify_x2y3,
            "serving_default": model.predict,
        }
        _save(model, signatures, directory)


def make_string_echo(directory: Path) -> None:
    """A model with a string input, for the JSON string and `{"b64": ...}` forms:
    `serving_default` takes `text` DT_STRING [?] and answers `length` DT_INT32 (bytes per
    string), `upper` DT_STRING (ASCII upper case, written as text) and `upper_bytes`
    DT_STRING (the same, written as `{"b64": ...}`: TF Serving's `_bytes` alias suffix)."""
    tf = import_tensorflow()

    class StringEcho(tf.Module):  # type: ignore[name-defined]
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def predict(self, text: Any) -> dict[str, Any]:
            upper = tf.strings.upper(text)
            return {"length": tf.strings.length(text), "upper": upper, "upper_bytes": upper}

    module = StringEcho()
    _save(module, {"serving_default": module.predict}, directory)


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
    "half_plus_three": make_half_plus_three,
    "half_plus_two_tf2": make_half_plus_two_tf2,
    "string_echo": make_string_echo,
    "resnet50": make_resnet50,
    "digits": make_digits,
}


def make_model(name: str, directory: Path) -> None:
    try:
        maker = MODEL_NAMES[name]
    except KeyError:
        raise InvalidArgument(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}") from None
    maker(directory)
