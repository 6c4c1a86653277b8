"""The :classify and :regress bodies: `{"signature_name"?, "context"?, "examples": [...]}` to
serialized tf.Examples, and the results written as TF Serving writes them.

Follows `json_tensor.cc` (FillClassifyRegressRequestFromJson, AddValueToFeature,
MakeJsonFromClassificationResult / MakeJsonFromRegressionResult): a string or `{"b64": ...}`
(decoded by `values.decode_base64`, the one decoder of every REST verb) is a bytes_list value,
an integer or a bool an int64_list value, a decimal a float_list value; a feature holds one
kind. The context's features are merged under each example's (proto merge: the example's own
feature wins). Stateless; thread safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sealserve.errors import InvalidArgument
from sealserve.serving.rest_json.numbers import format_decimal
from sealserve.serving.rest_json.text import (
    INDENT,
    WRITE_STRING_BYTES,
    WRITE_VALUE_BYTES,
    json_type,
    quote,
    render,
)
from sealserve.serving.rest_json.values import (
    decode_base64,
    is_b64_object,
    require_object,
    signature_name,
    utf8,
)

_BYTES, _FLOAT, _INT64 = "bytes", "float", "int64"


def examples_from_json(body: Any) -> tuple[str, list[bytes]]:
    """(signature name, serialized examples) from a parsed :classify / :regress body."""
    from tensorflow.core.example import example_pb2

    document = require_object(body)
    name = signature_name(document)
    prefix = b""
    if "context" in document:
        context = example_pb2.Example()
        _fill_example(document["context"], context)
        prefix = context.SerializeToString()
    examples = document.get("examples")
    if "examples" not in document:
        raise InvalidArgument(
            f"JSON Value: {render(document)} When method is classify, key 'examples' is "
            "expected and was not found"
        )
    if not isinstance(examples, list):
        raise InvalidArgument(
            f"JSON Value: {render(document)} Expecting 'examples' value to be an list/array"
        )
    if not examples:
        raise InvalidArgument(f"JSON Value: {render(document)} 'examples' value is an empty array")
    serialized = []
    for value in examples:
        example = example_pb2.Example()
        _fill_example(value, example)
        serialized.append(prefix + example.SerializeToString())
    return name, serialized


def _fill_example(value: Any, example: Any) -> None:
    if not isinstance(value, dict):
        raise InvalidArgument(f"Example must be JSON object but got JSON {json_type(value)}")
    for name, content in value.items():
        feature = example.features.feature[name]
        kind: str | None = None
        for item in content if isinstance(content, list) else (content,):
            kind = _add_value(item, name, feature, kind)


def _add_value(value: Any, name: str, feature: Any, kind: str | None) -> str:
    """Add one JSON value to `feature` (of `kind` so far); returns the feature's kind."""
    item: int | float | bytes
    if isinstance(value, bool):
        wanted, item = _INT64, int(value)
    elif isinstance(value, int):
        if not -(1 << 63) <= value < (1 << 63):
            if 0 <= value < (1 << 64):
                raise InvalidArgument(
                    f"Feature: {name} has uint64_t element. Only int64_t is supported."
                )
            wanted, item = _FLOAT, float(value)  # RapidJSON reads larger literals as doubles
        else:
            wanted, item = _INT64, value
    elif isinstance(value, float):
        wanted, item = _FLOAT, value
    elif isinstance(value, str):
        wanted, item = _BYTES, utf8(value)
    elif is_b64_object(value):
        wanted = _BYTES
        decoded = decode_base64(value["b64"])
        if decoded is None:
            raise InvalidArgument("Unable to base64 decode")
        item = decoded
    else:
        raise InvalidArgument(
            f"Feature: {name} has element with unexpected JSON type: {json_type(value)}"
        )
    if kind is not None and kind != wanted:
        raise InvalidArgument(f"Unexpected element type in feature: {name} expecting type: {kind}")
    if wanted == _BYTES:
        feature.bytes_list.value.append(item)
    elif wanted == _INT64:
        feature.int64_list.value.append(item)
    else:
        feature.float_list.value.append(item)
    return wanted


def classify_response_cost(rows: Sequence[Sequence[tuple[str, float]]]) -> int:
    """An upper bound of the memory `format_classify_response(rows)` holds at once."""
    return sum(
        2 * WRITE_VALUE_BYTES + WRITE_STRING_BYTES * len(label) for row in rows for label, _ in row
    )


def regress_response_cost(values: Sequence[float]) -> int:
    """An upper bound of the memory `format_regress_response(values)` holds at once."""
    return WRITE_VALUE_BYTES * len(values)


def format_classify_response(rows: Sequence[Sequence[tuple[str, float]]]) -> bytes:
    """`{"results": [[[label, score], ...], ...]}` as TF Serving's PrettyWriter writes it:
    one example per line, its classes on that line."""
    lines = [
        "["
        + ", ".join(f"[{quote(label)}, {format_decimal(score, True)}]" for label, score in row)
        + "]"
        for row in rows
    ]
    inner = f",\n{INDENT}{INDENT}".join(lines)
    return f'{{\n{INDENT}"results": [\n{INDENT}{INDENT}{inner}\n{INDENT}]\n}}'.encode()


def format_regress_response(values: Sequence[float]) -> bytes:
    """`{"results": [v, ...]}` as TF Serving writes it (one line, float32 decimals)."""
    numbers = ", ".join(format_decimal(v, True) for v in values)
    return f'{{\n{INDENT}"results": [{numbers}]\n}}'.encode()


def format_error(message: str) -> bytes:
    """TF Serving's error body (MakeJsonFromStatus): `{"error": message}`, pretty-printed."""
    return f'{{\n{INDENT}"error": {quote(message)}\n}}'.encode()
