"""Classify and Regress: tf.Example inputs in, TF Serving's results out, for both APIs.

Inputs are TF Serving's `Input` (a list of examples, optionally with a context whose features
every example inherits) or the REST form `{"examples": [...], "context": {...}}`, where a
feature value is a string, `{"b64": ...}`, an integer, a decimal, a bool or a list of one of
those (`json_tensor.cc` FillClassificationRequestFromJson). The signature must be a
classification (outputs `classes` DT_STRING and/or `scores` DT_FLOAT, [batch, classes]) or a
regression (output `outputs`, [batch] or [batch, 1]) signature reading serialized examples
from its input `inputs` (`classifier.cc`, `regressor.cc`). Pure conversion; thread safe.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from typing import Any

import numpy as np

from sealserve.errors import InvalidArgument
from sealserve.serving.signatures import CLASSIFY_METHOD, REGRESS_METHOD, SignatureInfo

INPUTS = "inputs"


def check_signature(signature: SignatureInfo, method: str, key: str) -> None:
    """TF Serving's checks that a signature can serve classify or regress."""
    kind = "classification" if method == CLASSIFY_METHOD else "regression"
    if signature.method_name != method:
        raise InvalidArgument(
            f"Expected {kind} signature method_name to be {method}. Was: {signature.method_name}"
        )
    info = signature.inputs.get(INPUTS)
    if len(signature.inputs) != 1 or info is None or info.dtype != "DT_STRING":
        raise InvalidArgument(
            f"Expected one input Tensor named {INPUTS} of type DT_STRING in signature {key}"
        )


def run_inputs(serialized: Sequence[bytes]) -> dict[str, np.ndarray]:
    array = np.empty(len(serialized), dtype=object)
    array[:] = list(serialized)
    return {INPUTS: array}


def classification(outputs: dict[str, np.ndarray]) -> list[list[tuple[str, float]]]:
    classes, scores = outputs.get("classes"), outputs.get("scores")
    if classes is None and scores is None:
        raise InvalidArgument(
            "Expected classification signature outputs to contain classes or scores"
        )
    shaped = [a for a in (classes, scores) if a is not None]
    for array in shaped:
        if array.ndim != 2:
            raise InvalidArgument(
                f"Expected Tensor shape: [batch_size num_classes] but got {list(array.shape)}"
            )
    if classes is not None and scores is not None and classes.shape != scores.shape:
        raise InvalidArgument(
            "Tensors class and score should match in shape, but had shapes: "
            f"{list(classes.shape)} and {list(scores.shape)}"
        )
    batch, width = shaped[0].shape
    results = []
    for row in range(batch):
        labels = [_label(classes[row, k]) if classes is not None else "" for k in range(width)]
        values = [float(scores[row, k]) if scores is not None else 0.0 for k in range(width)]
        results.append(list(zip(labels, values, strict=True)))
    return results


def regression(outputs: dict[str, np.ndarray]) -> list[float]:
    values = outputs.get("outputs")
    if values is None:
        raise InvalidArgument("No outputs found in regression signature outputs")
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise InvalidArgument(
            f"Expected output Tensor shape to be either [batch_size] or "
            f"[batch_size, 1] but got {list(values.shape)}"
        )
    return [float(v) for v in values]


def _label(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# -- tf.Example from the wire ------------------------------------------------------------


def examples_from_input(proto: Any) -> list[bytes]:
    """Serialized examples from a gRPC `Input`, each merged over the context (if any)."""
    kind = proto.WhichOneof("kind")
    if kind == "example_list":
        examples = list(proto.example_list.examples)
        context = None
    elif kind == "example_list_with_context":
        examples = list(proto.example_list_with_context.examples)
        context = proto.example_list_with_context.context
    else:
        raise InvalidArgument("Input is empty")
    if not examples:
        raise InvalidArgument("Input is empty")
    if context is None:
        return [e.SerializeToString() for e in examples]
    # Proto merge semantics: a feature in the example overrides the context's (TF Serving
    # serializes the context followed by the example, which parses as this merge).
    prefix = context.SerializeToString()
    return [prefix + e.SerializeToString() for e in examples]


def examples_from_json(body: Any) -> tuple[str, list[bytes]]:
    """(signature name, serialized examples) from a REST classify/regress body."""
    from tensorflow.core.example import example_pb2

    if not isinstance(body, dict):
        raise InvalidArgument("Request body must be a JSON object")
    signature = body.get("signature_name", "")
    if not isinstance(signature, str):
        raise InvalidArgument("'signature_name' key must be a string value.")
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples:
        raise InvalidArgument("'examples' key must be a non-empty JSON array of objects")
    context = example_pb2.Example()
    if "context" in body:
        _fill_example(body["context"], context, "context")
    prefix = context.SerializeToString() if "context" in body else b""
    serialized = []
    for index, value in enumerate(examples):
        example = example_pb2.Example()
        _fill_example(value, example, f"example {index}")
        serialized.append(prefix + example.SerializeToString())
    return signature, serialized


def _fill_example(value: Any, example: Any, where: str) -> None:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} must be a JSON object of features")
    for name, feature_value in value.items():
        _fill_feature(feature_value, example.features.feature[name], f"{where}, feature {name}")


def _fill_feature(value: Any, feature: Any, where: str) -> None:
    values = value if isinstance(value, list) else [value]
    kinds = {_feature_kind(v, where) for v in values}
    if len(kinds) > 1:
        raise InvalidArgument(f"{where}: feature list contains values of mixed types")
    kind = kinds.pop() if kinds else "float"
    if kind == "bytes":
        feature.bytes_list.value.extend(_bytes(v, where) for v in values)
    elif kind == "int":
        feature.int64_list.value.extend(int(v) for v in values)
    else:
        feature.float_list.value.extend(float(v) for v in values)


def _feature_kind(value: Any, where: str) -> str:
    if isinstance(value, str) or (isinstance(value, dict) and set(value) == {"b64"}):
        return "bytes"
    if isinstance(value, int):  # bool is an int too
        return "int"  # TF Serving writes booleans as int64 0/1
    if isinstance(value, float):
        return "float"
    raise InvalidArgument(f"{where}: unsupported value {str(value)[:80]}")


def _bytes(value: Any, where: str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise InvalidArgument(f"{where}: unable to base64 decode") from None


__all__ = [
    "CLASSIFY_METHOD",
    "REGRESS_METHOD",
    "check_signature",
    "classification",
    "examples_from_input",
    "examples_from_json",
    "regression",
    "run_inputs",
]
