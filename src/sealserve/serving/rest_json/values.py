"""JSON values as the signature's dtypes, shared by every REST verb: one base64 decoder
(absl::Base64Unescape's rules) for `{"b64": ...}` in :predict, :classify and :regress, TF's
type, precision and range rules and messages, and the body's common keys
(`signature_name`). Stateless; thread safe.
"""

from __future__ import annotations

import binascii
import math
import re
from typing import Any

from sealserve.errors import Code, InvalidArgument, SealserveError
from sealserve.serving.rest_json.numbers import FLT_MAX
from sealserve.serving.rest_json.text import int_as_double, is_rapidjson_int, json_type, render
from sealserve.serving.tensor_proto import data_type_string

INT_RANGES = {
    # TF Serving accepts any int32 (RapidJSON IsInt) for these and wraps in the cast; we
    # require the dtype's own range (see the module docstring).
    "DT_INT32": (-(1 << 31), (1 << 31) - 1),
    "DT_INT16": (-(1 << 15), (1 << 15) - 1),
    "DT_INT8": (-(1 << 7), (1 << 7) - 1),
    "DT_UINT8": (0, (1 << 8) - 1),
    "DT_INT64": (-(1 << 63), (1 << 63) - 1),
    "DT_UINT32": (0, (1 << 32) - 1),
    "DT_UINT64": (0, (1 << 64) - 1),
}
FLOAT_MAX_INT = {"DT_FLOAT": (1 << 24) - 1, "DT_DOUBLE": (1 << 53) - 1}  # IsLosslessDecimal


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidArgument(f"JSON Value: {render(body)} Is not object")
    return body


def signature_name(body: dict[str, Any]) -> str:
    name = body.get("signature_name", "")
    if not isinstance(name, str):
        raise InvalidArgument(
            f"JSON Value: {render(body)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name


def is_b64_object(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) == 1
        and isinstance(value.get("b64"), str)  # exactly the one key "b64", a string
    )


def is_element_object(value: Any) -> bool:
    return isinstance(value, dict) and not is_b64_object(value)


def utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate from a \uD8xx escape
        return text.encode("utf-8", "surrogatepass")


_B64_WHITESPACE = b" \t\n\v\f\r"
_B64_DATA = re.compile(rb"[A-Za-z0-9+/]*")


def decode_base64(text: str) -> bytes | None:
    """absl::Base64Unescape: whitespace skipped anywhere, padding ('=' or '.') optional but
    exact when present, a NUL ends the input; None when the text is not base64."""
    data = utf8(text).split(b"\x00", 1)[0]
    cut = len(data)
    for pad in (b"=", b"."):
        found = data.find(pad)
        if found != -1:
            cut = min(cut, found)
    body = data[:cut].translate(None, _B64_WHITESPACE)
    tail = data[cut:].translate(None, _B64_WHITESPACE)
    if _B64_DATA.fullmatch(body) is None or tail.strip(b"=.") != b"":
        return None
    state = len(body) % 4
    if state == 1:
        return None
    expected = (4 - state) % 4
    if len(tail) not in (0, expected):
        return None
    return binascii.a2b_base64(body + b"=" * expected)


def type_error(value: Any, dtype: str) -> InvalidArgument:
    return InvalidArgument(
        f"JSON Value: {render(value)} Type: {json_type(value)} "
        f"is not of expected type: {data_type_string(dtype)}"
    )


def _is_lossless(value: int | float, dtype: str) -> bool:
    """json_tensor.cc IsLosslessDecimal<float|double>."""
    if isinstance(value, int):
        if is_rapidjson_int(value):
            return abs(value) <= FLOAT_MAX_INT[dtype]
        value = int_as_double(value)
    if not math.isfinite(value):
        return True
    return dtype == "DT_DOUBLE" or -FLT_MAX <= value <= FLT_MAX


def leaf_value(value: Any, dtype: str) -> Any:
    """One JSON leaf as a Python value for `dtype`, or TF Serving's error for it."""
    if isinstance(value, dict):
        if dtype != "DT_STRING":
            raise type_error(value, dtype)
        if not is_b64_object(value):
            raise InvalidArgument(
                f"JSON Value: {render(value)} not formatted correctly for base64 data"
            )
        decoded = decode_base64(value["b64"])
        if decoded is None:
            raise InvalidArgument("Unable to base64 decode")
        return decoded
    if dtype in FLOAT_MAX_INT:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise type_error(value, dtype)
        if not _is_lossless(value, dtype):
            target = "float" if dtype == "DT_FLOAT" else "double"
            raise InvalidArgument(
                f"Cannot convert JSON value: {render(value)} to {target} without loss of precision."
            )
        return int_as_double(value) if isinstance(value, int) else value
    if dtype in INT_RANGES:
        low, high = INT_RANGES[dtype]
        if type(value) is not int or not low <= value <= high:
            raise type_error(value, dtype)
        return value
    if dtype == "DT_BOOL":
        if not isinstance(value, bool):
            raise type_error(value, dtype)
        return value
    if dtype == "DT_STRING":
        if not isinstance(value, str):
            raise type_error(value, dtype)
        return utf8(value)
    raise SealserveError(
        f"Conversion of JSON Value: {render(value)} to type: {data_type_string(dtype)}",
        code=Code.UNIMPLEMENTED,
    )
