"""JSON text as RapidJSON writes it: strings, doubles, and JSON values echoed in error
messages (pretty-printed as TF Serving does, cut after `RENDER_LIMIT` characters).
Stateless; thread safe.
"""

from __future__ import annotations

import math
import re
from typing import Any

from sealserve.serving.rest_json.numbers import RAPIDJSON_FLOAT_MAX, format_decimal, to_float32

INDENT = "    "  # RapidJSON PrettyWriter: four spaces per open level
# What writing a response may hold at once, at most, per value (a Python number and its
# tokens: 210 bytes measured for uint8 columns) and per byte of a string value (escaped, up
# to 6 characters a byte, or base64, and copied): tests/serving/test_rest_json_costs.py
# measures them with tracemalloc.
WRITE_VALUE_BYTES = 256
WRITE_STRING_BYTES = 32
_RENDER_LIMIT = 4096  # characters of a JSON value echoed in an error message
# ---------------------------------------------------------------------------------------------
# JSON text as RapidJSON writes it (strings, values echoed in error messages).

_ESCAPES = {chr(c): f"\\u{c:04X}" for c in range(0x20)}
_ESCAPES.update({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"})
_ESCAPES.update({'"': '\\"', "\\": "\\\\"})
_ESCAPE_RE = re.compile('[\\x00-\\x1f"\\\\]')


def quote(text: str) -> str:
    """A JSON string as RapidJSON's Writer escapes it (uppercase \\u00XX; '/' and non-ASCII
    left as they are)."""
    if _ESCAPE_RE.search(text) is None:
        return '"' + text + '"'
    return '"' + _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group()], text) + '"'


def raw_text(data: bytes) -> str:
    # DT_STRING bytes are written as they are, valid UTF-8 or not (RapidJSON does not check);
    # surrogateescape carries invalid bytes through str back to the same bytes.
    return data.decode("utf-8", "surrogateescape")


def _shortest_digits(value: float) -> tuple[str, int]:
    """(digits, exponent) with value == int(digits) * 10**exponent, shortest round trip."""
    mantissa, _, exp = repr(value).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    exponent = (int(exp) if exp else 0) - len(frac)
    stripped = digits.rstrip("0")
    return stripped, exponent + len(digits) - len(stripped)


def _rapidjson_double(value: float) -> str:
    """A double nested in a value, as RapidJSON's Writer::Double (Grisu2 + Prettify) writes it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    sign = "-" if value < 0 else ""
    digits, k = _shortest_digits(abs(value))
    length = len(digits)
    kk = length + k  # 10^(kk-1) <= value < 10^kk
    if k >= 0 and kk <= 21:
        text = digits + "0" * k + ".0"
    elif 0 < kk <= 21:
        text = digits[:kk] + "." + digits[kk:]
    elif -6 < kk <= 0:
        text = "0." + "0" * -kk + digits
    elif length == 1:
        text = digits + "e" + str(kk - 1)
    else:
        text = digits[0] + "." + digits[1:] + "e" + str(kk - 1)
    return sign + text


def int_as_double(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def is_rapidjson_int(value: int) -> bool:
    return -(1 << 63) <= value < (1 << 64)  # Int64 or Uint64; larger literals are doubles


class _Budget:
    __slots__ = ("left", "parts")

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.parts: list[str] = []

    def emit(self, text: str) -> None:
        self.parts.append(text)
        self.left -= len(text)


def _pretty(value: Any, level: int, out: _Budget) -> None:
    """RapidJSON PrettyWriter output of a value (objects and arrays on indented lines)."""
    if out.left <= 0:
        return
    if isinstance(value, list):
        if not value:
            out.emit("[]")
            return
        out.emit("[")
        for i, item in enumerate(value):
            out.emit(("," if i else "") + "\n" + INDENT * (level + 1))
            _pretty(item, level + 1, out)
            if out.left <= 0:
                return
        out.emit("\n" + INDENT * level + "]")
    elif isinstance(value, dict):
        if not value:
            out.emit("{}")
            return
        out.emit("{")
        for i, (key, item) in enumerate(value.items()):
            out.emit(("," if i else "") + "\n" + INDENT * (level + 1) + quote(key) + ": ")
            _pretty(item, level + 1, out)
            if out.left <= 0:
                return
        out.emit("\n" + INDENT * level + "}")
    elif isinstance(value, bool):
        out.emit("true" if value else "false")
    elif value is None:
        out.emit("null")
    elif isinstance(value, int):
        out.emit(str(value) if is_rapidjson_int(value) else _rapidjson_double(float(value)))
    elif isinstance(value, float):
        out.emit(_rapidjson_double(value))
    elif isinstance(value, str):
        out.emit(quote(value))
    else:
        out.emit(repr(value))


def render(value: Any) -> str:
    """TF Serving's JsonValueToString: how a JSON value appears in an error message.

    A top-level number is written with WriteDecimal, as a float when it fits one (RapidJSON's
    IsFloat), else as a double; containers are pretty-printed. Cut after _RENDER_LIMIT
    characters (TF Serving echoes the whole value, however large).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        if is_rapidjson_int(value):
            return str(value)
        value = int_as_double(value)
    if isinstance(value, float):
        if -RAPIDJSON_FLOAT_MAX <= value <= RAPIDJSON_FLOAT_MAX:
            return format_decimal(to_float32(value), True)
        return format_decimal(value, False)
    budget = _Budget(_RENDER_LIMIT)
    _pretty(value, 0, budget)
    text = "".join(budget.parts)
    if len(text) > _RENDER_LIMIT:
        text = text[:_RENDER_LIMIT] + "..."
    return text


def json_type(value: Any) -> str:
    """RapidJSON's type names (json_tensor.cc JsonTypeString)."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"
