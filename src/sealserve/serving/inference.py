"""Classify and Regress: tf.Example inputs in, TF Serving's results out, for both APIs.

Inputs are serialized examples: from gRPC's `Input` here (a list of examples, optionally with
a context whose features every example inherits), from REST's JSON in `rest_json.examples`.
The signature must be a classification (outputs `classes` DT_STRING and/or `scores`
DT_FLOAT, [batch, classes]) or a regression (output `outputs`, [batch] or [batch, 1])
signature reading serialized examples from its input `inputs` (`classifier.cc`,
`regressor.cc`). Pure conversion; thread safe.
"""

from __future__ import annotations

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


__all__ = [
    "CLASSIFY_METHOD",
    "REGRESS_METHOD",
    "check_signature",
    "classification",
    "examples_from_input",
    "regression",
    "run_inputs",
]
