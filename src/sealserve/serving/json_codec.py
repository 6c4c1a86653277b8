"""TF Serving's REST JSON <-> numpy: request parsing and Predict response formatting.

Owns the JSON side of the REST API. The behaviour follows TF Serving's
`tensorflow_serving/util/json_tensor.cc` (RapidJSON + absl) so that stock clients see the same
tensors, the same response text and the same error messages:

- `loads` parses a body (NaN / Infinity / -Infinity tokens accepted, as with RapidJSON's
  kParseNanAndInfFlag) and maps syntax errors to RapidJSON's wording,
  `JSON Parse error: <reason> at offset: <byte offset>`. Unlike TF Serving (CVE-2025-0649) it
  refuses documents nested deeper than `max_depth`, found by a linear, non-recursive pre-scan.
- `parse_predict_request` turns a parsed body into numpy inputs with the signature's dtypes:
  row (`instances`) and columnar (`inputs`) formats, `{"b64": ...}` strings, TF's shape,
  type, precision and range rules and messages. Well-formed tensors go through a vectorised
  path; anything the vectorised checks do not prove valid is re-walked element by element in
  TF's order, so the first error reported is the one TF Serving reports.
- `format_predict_response` writes `{"predictions": ...}` / `{"outputs": ...}` byte for byte as
  TF Serving's RapidJSON PrettyWriter does, numbers included: TF writes floats with absl's
  six-significant-digit `%g` when that round-trips, else with `%.9g` (float) / `%.17g`
  (double) -- not the shortest representation -- and appends `.0` to whole numbers.

Deliberate differences, each safer than TF Serving: integers for DT_INT8/INT16/UINT8 must be
in the dtype's range (TF wraps them modulo 2^n); values echoed in error messages are cut after
4096 characters (TF echoes whole documents); nesting depth is limited.

Classify / regress (`examples` / `context` -> tf.Example) will live beside predict and reuse
`loads`, `_require_object`, `_signature_name` and the value rendering.

Stateless; every function is thread safe.
"""

from __future__ import annotations

import binascii
import json
import math
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from itertools import chain
from typing import Any

import numpy as np

from sealserve.errors import Code, InvalidArgument, SealserveError
from sealserve.serving.signatures import DEFAULT_SIGNATURE, SignatureInfo, TensorInfo
from sealserve.serving.tensor_proto import DTYPE_NAMES, data_type_string, dtype_name

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "PredictRequest",
    "format_predict_response",
    "loads",
    "parse_predict_request",
]

DEFAULT_MAX_DEPTH = 100
_RENDER_LIMIT = 4096  # characters of a JSON value echoed in an error message
_INDENT = "    "  # RapidJSON PrettyWriter: four spaces per open level

# ---------------------------------------------------------------------------------------------
# Numbers as TF Serving writes them (json_tensor.cc WriteDecimal).

_FLT_MAX = float(np.finfo(np.float32).max)
_FLT_ROUNDS_TO_INF = 2.0**128 - 2.0**103  # FLT_MAX + half an ulp: rounds to infinity
_RAPIDJSON_FLOAT_MAX = 3.4028234e38  # rapidjson Value::IsFloat() bound
_F32 = struct.Struct("<f")
_U32 = struct.Struct("<I")


def _to_float32(value: float) -> float:
    """The float32 nearest to a double (ties to even), as a Python float."""
    if not math.isfinite(value):
        return value
    magnitude = abs(value)
    if magnitude >= _FLT_ROUNDS_TO_INF:
        return math.copysign(math.inf, value)
    if magnitude > _FLT_MAX:
        return math.copysign(_FLT_MAX, value)
    result: float = _F32.unpack(_F32.pack(value))[0]
    return result


def _next_float32(value: float, toward: float) -> float:
    """The float32 next to `value` (a float32) in the direction of `toward`."""
    bits = _U32.unpack(_F32.pack(value))[0]
    if value == 0:
        bits = 1 if toward > 0 else 0x80000001
    elif (toward > value) == (value > 0):
        bits += 1
    else:
        bits -= 1
    result: float = _F32.unpack(_U32.pack(bits))[0]
    return result


def _strtof(text: str) -> float:
    """Correctly rounded decimal -> float32 (absl::SimpleAtof), as a Python float.

    Parsing to double first and then rounding to float32 is exact except when the double
    lands exactly halfway between two float32 values; then the decimal decides exactly.
    """
    double = float(text)
    single = _to_float32(double)
    if single == double or not math.isfinite(single):
        return single
    other = _next_float32(single, double)
    if not math.isfinite(other) or 2 * abs(double - single) != abs(other - single):
        return single
    exact = Fraction(text)
    below, above = abs(exact - Fraction(single)), abs(exact - Fraction(other))
    if below != above:
        return single if below < above else other
    return single if _U32.unpack(_F32.pack(single))[0] % 2 == 0 else other


def _format_decimal(value: float, single: bool) -> str:
    """One float32 (`single`) or double exactly as TF Serving's WriteDecimal writes it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    text = format(value, ".6g")  # absl::StrCat(float|double): "%g", six significant digits
    back = _strtof(text) if single else float(text)
    if back != value:
        text = format(value, ".9g" if single else ".17g")  # max_digits10
    if "." not in text and "e" not in text:
        text += ".0"
    return text


_VECTOR_MIN = 48  # below this, numpy's per-call overhead costs more than it saves


_POW10 = np.array([float(f"1e{i}") for i in range(309)])  # correctly rounded powers of ten


def _scaled(values: np.ndarray, powers: np.ndarray) -> np.ndarray:
    """values * 10**powers (|powers| <= 308), dividing for negative powers: 10**k is exact
    for k <= 22, so the usual case is a single correctly rounded operation."""
    factors = _POW10[np.abs(powers)]
    return np.where(powers >= 0, values * factors, values / factors)


def _six_digits_roundtrip(x: np.ndarray, single: bool) -> np.ndarray:
    """Vectorised: does "%.6g" of each value read back as the same float32 / double?

    Computes the six-digit rounding numerically; values where that arithmetic cannot be
    trusted (near a rounding tie, near a float32 midpoint, at extreme exponents, or -- for
    doubles -- anywhere close to the value) are decided by `_format_decimal`'s exact method.
    """
    n = x.size
    magnitude = np.abs(x)
    finite = np.isfinite(x)
    with np.errstate(all="ignore"):
        positive = finite & (magnitude > 0)
        safe = positive & (magnitude >= 1e-300) & (magnitude <= 1e300)
        a = np.where(safe, magnitude, 1.0)
        powers = 5 - np.floor(np.log10(a)).astype(np.int64)
        m = _scaled(a, powers)
        powers = np.where(m < 99999.5, powers + 1, np.where(m >= 999999.5, powers - 1, powers))
        m = _scaled(a, powers)
        rounded = np.rint(m)
        tie = np.abs(m - np.floor(m) - 0.5) < 1e-6
        decimal = _scaled(rounded, -powers)
        if single:
            d32 = decimal.astype(np.float32)
            back = d32.astype(np.float64)
            gap_up = np.abs(np.spacing(d32).astype(np.float64))
            gap_down = np.abs(back - np.nextafter(d32, np.float32(0)).astype(np.float64))
            gap = np.where(decimal > back, gap_up, gap_down)
            near_midpoint = np.abs(np.abs(decimal - back) - gap / 2) <= decimal * 2.0**-40
            ok = back == magnitude
            unsure = tie | near_midpoint | (decimal > 3.4e38)
        else:
            ok = np.zeros(n, dtype=bool)
            unsure = tie | (np.abs(decimal - magnitude) <= 8 * np.spacing(magnitude))
    unsure = positive & (unsure | ~safe)
    ok &= positive & ~unsure
    ok |= finite & (magnitude == 0)
    if unsure.any():
        values = x.tolist()
        for i in np.flatnonzero(unsure).tolist():
            text = format(values[i], ".6g")
            ok[i] = (_strtof(text) if single else float(text)) == values[i]
    return ok


def _decimal_tokens(flat: np.ndarray) -> list[str]:
    """WriteDecimal text for every value of a 1-D float32 / float64 array."""
    single = flat.dtype == np.float32
    if flat.size < _VECTOR_MIN:
        return [_format_decimal(v, single) for v in flat.tolist()]
    with np.errstate(invalid="ignore"):  # signalling NaNs warn when widened
        x = flat.astype(np.float64)
    values = x.tolist()
    finite = np.isfinite(x)
    ok = _six_digits_roundtrip(x, single)
    six = "%.6g".__mod__
    full = ("%.9g" if single else "%.17g").__mod__
    # Format the majority in one C-level map, then patch the minority.
    if np.count_nonzero(ok) * 2 >= x.size:
        tokens = list(map(six, values))
        for i in np.flatnonzero(finite & ~ok).tolist():
            tokens[i] = full(values[i])
    else:
        tokens = list(map(full, values))
        for i in np.flatnonzero(ok).tolist():
            tokens[i] = six(values[i])
    for i in np.flatnonzero(~finite).tolist():
        v = values[i]
        tokens[i] = "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
    # "%g" text has neither '.' nor 'e' exactly for whole numbers below 10**precision.
    with np.errstate(invalid="ignore"):
        limit = np.where(ok, 1e6, 1e9 if single else 1e17)
        whole = finite & (np.floor(x) == x) & (np.abs(x) < limit)
    for i in np.flatnonzero(whole).tolist():
        tokens[i] += ".0"
    return tokens


# ---------------------------------------------------------------------------------------------
# JSON text as RapidJSON writes it (strings, values echoed in error messages).

_ESCAPES = {chr(c): f"\\u{c:04X}" for c in range(0x20)}
_ESCAPES.update({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"})
_ESCAPES.update({'"': '\\"', "\\": "\\\\"})
_ESCAPE_RE = re.compile('[\\x00-\\x1f"\\\\]')


def _quote(text: str) -> str:
    """A JSON string as RapidJSON's Writer escapes it (uppercase \\u00XX; '/' and non-ASCII
    left as they are)."""
    if _ESCAPE_RE.search(text) is None:
        return '"' + text + '"'
    return '"' + _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group()], text) + '"'


def _raw_text(data: bytes) -> str:
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


def _int_as_double(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _is_rapidjson_int(value: int) -> bool:
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
            out.emit(("," if i else "") + "\n" + _INDENT * (level + 1))
            _pretty(item, level + 1, out)
            if out.left <= 0:
                return
        out.emit("\n" + _INDENT * level + "]")
    elif isinstance(value, dict):
        if not value:
            out.emit("{}")
            return
        out.emit("{")
        for i, (key, item) in enumerate(value.items()):
            out.emit(("," if i else "") + "\n" + _INDENT * (level + 1) + _quote(key) + ": ")
            _pretty(item, level + 1, out)
            if out.left <= 0:
                return
        out.emit("\n" + _INDENT * level + "}")
    elif isinstance(value, bool):
        out.emit("true" if value else "false")
    elif value is None:
        out.emit("null")
    elif isinstance(value, int):
        out.emit(str(value) if _is_rapidjson_int(value) else _rapidjson_double(float(value)))
    elif isinstance(value, float):
        out.emit(_rapidjson_double(value))
    elif isinstance(value, str):
        out.emit(_quote(value))
    else:
        out.emit(repr(value))


def _render(value: Any) -> str:
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
        if _is_rapidjson_int(value):
            return str(value)
        value = _int_as_double(value)
    if isinstance(value, float):
        if -_RAPIDJSON_FLOAT_MAX <= value <= _RAPIDJSON_FLOAT_MAX:
            return _format_decimal(_to_float32(value), True)
        return _format_decimal(value, False)
    budget = _Budget(_RENDER_LIMIT)
    _pretty(value, 0, budget)
    text = "".join(budget.parts)
    if len(text) > _RENDER_LIMIT:
        text = text[:_RENDER_LIMIT] + "..."
    return text


def _json_type(value: Any) -> str:
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


# ---------------------------------------------------------------------------------------------
# Parsing.

_BOM = b"\xef\xbb\xbf"
_KEEP_STRUCTURE = bytes(c for c in range(256) if c not in b'[]{}"')
_SPECIALS = np.frombuffer(b'[]{}"\\', dtype=np.uint8)
_DIGIT_CLASSES = bytes.maketrans(b"0123456789E", b"0000000000e")
_NUMBER_OR_STRING = re.compile(  # strings are skipped whole (unrolled: fast in `re`)
    r'"[^"\\]*(?:\\.[^"\\]*)*"|(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)',
    re.DOTALL,
)
_BIG_EXPONENT = re.compile(rb"e\+?000")  # after _DIGIT_CLASSES: an exponent >= 100
_LONG_DIGITS = b"0" * 210
_LITERALS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")


def _parse_error(reason: str, offset: int) -> InvalidArgument:
    return InvalidArgument(f"JSON Parse error: {reason} at offset: {offset}")


def _structure_events(raw: bytes, end: int) -> list[tuple[int, int]]:
    """(offset, byte) of every bracket outside strings in raw[:end], in order (error paths)."""
    codes = np.frombuffer(raw, dtype=np.uint8, count=min(end, len(raw)))
    events = []
    in_string = False
    escaped_at = -1
    for pos in np.flatnonzero(np.isin(codes, _SPECIALS)).tolist():
        if pos == escaped_at:
            continue
        byte = raw[pos]
        if in_string:
            if byte == 0x5C:
                escaped_at = pos + 1
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte != 0x5C:
            events.append((pos, byte))
    return events


def _nesting_depth(raw: bytes) -> int:
    """The deepest bracket nesting outside strings, without recursion (linear, vectorised)."""
    data = raw
    if b"\\" in data:  # drop escape pairs so every remaining '"' delimits a string
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    codes = np.frombuffer(data.translate(None, _KEEP_STRUCTURE), dtype=np.uint8)
    if codes.size == 0:
        return 0
    outside = (np.cumsum(codes == 0x22) & 1) == 0
    step = ((codes == 0x5B) | (codes == 0x7B)).astype(np.int32)
    step -= (codes == 0x5D) | (codes == 0x7D)
    step *= outside
    return int(np.cumsum(step).max())


def _too_deep_offset(raw: bytes, max_depth: int) -> int:
    depth = 0
    for pos, byte in _structure_events(raw, len(raw)):
        depth += 1 if byte in (0x5B, 0x7B) else -1
        if depth > max_depth:
            return pos
    return len(raw)


def _byte_offset(text: str, index: int) -> int:
    try:
        return len(text[:index].encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return len(text[:index].encode("utf-8", "surrogatepass"))


def _overflow_offset(text: str, end: int | None = None) -> int | None:
    """Character index of the first number literal too big for a double (RapidJSON
    kParseErrorNumberTooBig; Python's json would read it as infinity), or None."""
    for match in _NUMBER_OR_STRING.finditer(text, 0, len(text) if end is None else end):
        literal = match.group(1)
        if literal is not None and math.isinf(float(literal)):
            return match.start()
    return None


def _may_overflow(raw: bytes) -> bool:
    """Cheap pre-filter for `_overflow_offset`: a literal overflows a double only with a
    3-digit exponent or >= 210 digits; candidates inside strings (common in base64) are
    discounted when the document has no escapes, so quote parity tells strings apart."""
    classes = raw.translate(_DIGIT_CLASSES)
    hits = [match.start() for match in _BIG_EXPONENT.finditer(classes)]
    at = classes.find(_LONG_DIGITS)
    while at != -1:
        hits.append(at)
        at = classes.find(_LONG_DIGITS, at + len(_LONG_DIGITS))
    if not hits:
        return False
    if b"\\" in raw:
        return True
    quotes = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) == 0x22)
    return bool((np.searchsorted(quotes, hits) % 2 == 0).any())


def _syntax_error(exc: json.JSONDecodeError, text: str, raw: bytes, skipped: int) -> Exception:
    """RapidJSON's reason and byte offset for a document Python's json rejected."""
    pos = exc.pos
    if _may_overflow(raw):
        overflow = _overflow_offset(text, pos)
        if overflow is not None:
            return _parse_error(
                "Number too big to be stored in double.", _byte_offset(text, overflow) + skipped
            )
    char = text[pos] if pos < len(text) else ""
    prev = text[pos - 1] if pos > 0 else ""
    reason = "Invalid value."
    at = pos
    msg = exc.msg
    if msg == "Expecting value":
        if not text.strip(" \t\n\r"):
            reason = "The document is empty."
        elif char == "-":  # RapidJSON consumes the sign, then wants a digit or "Infinity"
            at = pos + max(1, len(_common_prefix(text[pos:], "-Infinity")))
        else:
            for word in _LITERALS:
                if char == word[0]:
                    at = pos + len(_common_prefix(text[pos:], word))
                    break
    elif msg in ("Expecting ',' delimiter", "Extra data") and prev.isdigit() and char in ".eE":
        if char == ".":
            reason, at = "Miss fraction part in number.", pos + 1
        else:
            at = pos + (2 if text[pos + 1 : pos + 2] in ("+", "-") else 1)
            reason = "Miss exponent in number."
    elif msg == "Expecting ',' delimiter":
        events = _structure_events(raw, _byte_offset(text, pos))
        stack: list[int] = []
        for _, byte in events:
            if byte in (0x5B, 0x7B):
                stack.append(byte)
            elif stack:
                stack.pop()
        if stack and stack[-1] == 0x7B:
            reason = "Missing a comma or '}' after an object member."
        else:
            reason = "Missing a comma or ']' after an array element."
    elif msg == "Extra data":
        reason = "The document root must not be followed by other values."
    elif msg == "Expecting ':' delimiter":
        reason = "Missing a colon after a name of object member."
    elif msg == "Expecting property name enclosed in double quotes":
        reason = "Missing a name for object member."
    elif msg.startswith("Unterminated string"):
        reason, at = "Missing a closing quotation mark in string.", len(text)
    elif msg.startswith("Invalid control character"):
        if char == "\x00":
            reason = "Missing a closing quotation mark in string."
        else:
            reason = "Invalid encoding in string."
    elif msg.startswith("Invalid \\uXXXX"):
        reason = "Incorrect hex digit after \\u escape in string."
        at = text.rfind("\\", 0, pos + 1)
    elif msg.startswith("Invalid \\escape"):
        reason = "Invalid escape character in string."
        at = text.rfind("\\", 0, pos + 1)
    return _parse_error(reason, _byte_offset(text, at) + skipped)


def _common_prefix(text: str, word: str) -> str:
    n = 0
    while n < len(word) and n < len(text) and text[n] == word[n]:
        n += 1
    return word[:n]


def loads(text: bytes | str, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse a JSON request body as TF Serving does (RapidJSON, NaN/Infinity allowed).

    Returns plain Python values (dict, list, str, int, float, bool, None). Invalid UTF-8 in
    strings is kept (RapidJSON does not validate; the bytes come back unchanged as DT_STRING).
    Raises InvalidArgument `JSON Parse error: <reason> at offset: <n>` for malformed JSON and
    for nesting deeper than `max_depth` (checked before parsing, without recursion).
    """
    skipped = 0
    if isinstance(text, str):
        string = text
        raw = text.encode("utf-8", "surrogatepass")
    else:
        raw = bytes(text)
        if raw.startswith(_BOM):  # RapidJSON's UTF-8 stream skips a byte order mark
            raw, skipped = raw[len(_BOM) :], len(_BOM)
        string = raw.decode("utf-8", "surrogateescape")
    if string.startswith("\ufeff") and isinstance(text, str):
        string, raw, skipped = string[1:], raw[len(_BOM) :], len(_BOM)
    if not raw and not skipped:
        raise InvalidArgument("JSON Parse error: The document is empty")
    if len(raw) > max_depth and _nesting_depth(raw) > max_depth:
        where = _too_deep_offset(raw, max_depth) + skipped
        raise _parse_error(f"The document nests deeper than {max_depth} levels.", where)
    try:
        value = json.loads(string)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and string[exc.pos] == "\x00":
            # RapidJSON reads a NUL byte as the end of its input.
            return loads(raw[: _byte_offset(string, exc.pos)], max_depth=max_depth)
        raise _syntax_error(exc, string, raw, skipped) from None
    except RecursionError:  # pragma: no cover - the depth pre-scan makes this unreachable
        raise _parse_error(f"The document nests deeper than {max_depth} levels.", 0) from None
    except ValueError:  # int literal beyond Python's digit limit: RapidJSON overflows too
        overflow = _overflow_offset(string)
        raise _parse_error(
            "Number too big to be stored in double.",
            (_byte_offset(string, overflow) if overflow is not None else 0) + skipped,
        ) from None
    if _may_overflow(raw):
        overflow = _overflow_offset(string)
        if overflow is not None:
            raise _parse_error(
                "Number too big to be stored in double.",
                _byte_offset(string, overflow) + skipped,
            )
    return value


# ---------------------------------------------------------------------------------------------
# Predict requests.


@dataclass(frozen=True)
class PredictRequest:
    """A parsed REST Predict body: the resolved signature, its inputs, and which format the
    client used (the response must use the matching one)."""

    signature_name: str
    inputs: dict[str, np.ndarray]
    row_format: bool


_INT_RANGES = {
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
_FLOAT_MAX_INT = {"DT_FLOAT": (1 << 24) - 1, "DT_DOUBLE": (1 << 53) - 1}  # IsLosslessDecimal


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise InvalidArgument(f"JSON Value: {_render(body)} Is not object")
    return body


def _signature_name(body: dict[str, Any]) -> str:
    name = body.get("signature_name", "")
    if not isinstance(name, str):
        raise InvalidArgument(
            f"JSON Value: {_render(body)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return name


def _is_b64_object(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and len(value) == 1
        and isinstance(value.get("b64"), str)  # exactly the one key "b64", a string
    )


def _is_element_object(value: Any) -> bool:
    return isinstance(value, dict) and not _is_b64_object(value)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate from a \uD8xx escape
        return text.encode("utf-8", "surrogatepass")


_B64_WHITESPACE = b" \t\n\v\f\r"
_B64_DATA = re.compile(rb"[A-Za-z0-9+/]*")


def _absl_base64(text: str) -> bytes | None:
    """absl::Base64Unescape: whitespace skipped anywhere, padding ('=' or '.') optional but
    exact when present, a NUL ends the input; None when the text is not base64."""
    data = _utf8(text).split(b"\x00", 1)[0]
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


def _type_error(value: Any, dtype: str) -> InvalidArgument:
    return InvalidArgument(
        f"JSON Value: {_render(value)} Type: {_json_type(value)} "
        f"is not of expected type: {data_type_string(dtype)}"
    )


def _is_lossless(value: int | float, dtype: str) -> bool:
    """json_tensor.cc IsLosslessDecimal<float|double>."""
    if isinstance(value, int):
        if _is_rapidjson_int(value):
            return abs(value) <= _FLOAT_MAX_INT[dtype]
        value = _int_as_double(value)
    if not math.isfinite(value):
        return True
    return dtype == "DT_DOUBLE" or -_FLT_MAX <= value <= _FLT_MAX


def _leaf(value: Any, dtype: str) -> Any:
    """One JSON leaf as a Python value for `dtype`, or TF Serving's error for it."""
    if isinstance(value, dict):
        if dtype != "DT_STRING":
            raise _type_error(value, dtype)
        if not _is_b64_object(value):
            raise InvalidArgument(
                f"JSON Value: {_render(value)} not formatted correctly for base64 data"
            )
        decoded = _absl_base64(value["b64"])
        if decoded is None:
            raise InvalidArgument("Unable to base64 decode")
        return decoded
    if dtype in _FLOAT_MAX_INT:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _type_error(value, dtype)
        if not _is_lossless(value, dtype):
            target = "float" if dtype == "DT_FLOAT" else "double"
            raise InvalidArgument(
                f"Cannot convert JSON value: {_render(value)} to {target} without loss of "
                "precision."
            )
        return _int_as_double(value) if isinstance(value, int) else value
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        if type(value) is not int or not low <= value <= high:
            raise _type_error(value, dtype)
        return value
    if dtype == "DT_BOOL":
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    if dtype == "DT_STRING":
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return _utf8(value)
    raise SealserveError(
        f"Conversion of JSON Value: {_render(value)} to type: {data_type_string(dtype)}",
        code=Code.UNIMPLEMENTED,
    )


def _dense_shape(value: Any) -> list[int]:
    """json_tensor.cc GetDenseTensorShape: follow first elements down (iteratively)."""
    dims = []
    while isinstance(value, list):
        dims.append(len(value))
        if not value:
            break
        value = value[0]
    return dims


def _as_array(values: list[Any], dtype: str, dims: list[int]) -> np.ndarray:
    np_dtype = DTYPE_NAMES[dtype]
    if dtype == "DT_STRING":
        array = np.empty(len(values), dtype=object)
        array[:] = values
    elif dtype == "DT_FLOAT":
        array = np.array(values, dtype=np.float64).astype(np.float32)
    else:
        array = np.array(values, dtype=np_dtype)
    return array.reshape(dims)


def _exact_tensor(value: Any, dtype: str, dims: list[int]) -> np.ndarray:
    """json_tensor.cc FillTensorProto, element by element in TF's order (errors included)."""
    rank = len(dims)
    values: list[Any] = []

    def leaf(item: Any, level: int) -> None:
        if level != rank:
            raise InvalidArgument(
                f"JSON Value: {_render(item)} found at incorrect level: {level + 1} in the JSON "
                f"DOM. Expected at level: {rank}"
            )
        values.append(_leaf(item, dtype))

    def check_list(item: list[Any], level: int) -> None:
        if level >= rank:
            raise InvalidArgument(
                f"Encountered list at unexpected level: {level} expected < {rank}"
            )
        if len(item) != dims[level]:
            raise InvalidArgument(
                f"Encountered list at unexpected size: {len(item)} at level: {level} "
                f"expected size: {dims[level]}"
            )

    if not isinstance(value, list):
        leaf(value, 0)
    else:
        check_list(value, 0)
        stack = [iter(value)]
        while stack:
            item = next(stack[-1], _END)
            if item is _END:
                stack.pop()
            elif isinstance(item, list):
                check_list(item, len(stack))
                stack.append(iter(item))
            else:
                leaf(item, len(stack))
    if dtype not in DTYPE_NAMES:  # no leaves, so no conversion error was raised
        raise SealserveError(
            f"Conversion of JSON Value: {_render(value)} to type: {data_type_string(dtype)}",
            code=Code.UNIMPLEMENTED,
        )
    return _as_array(values, dtype, dims)


_END = object()


def _fast_tensor(value: Any, dtype: str, dims: list[int]) -> np.ndarray | None:
    """The vectorised path: the tensor if `value` is provably valid for `dtype`, else None."""
    if dtype not in DTYPE_NAMES:
        return None
    items = [value]
    for size in dims:
        if not set(map(type, items)) <= {list} or not set(map(len, items)) <= {size}:
            return None
        items = list(chain.from_iterable(items))
    types = set(map(type, items))
    np_dtype = DTYPE_NAMES[dtype]
    if not items:
        return np.empty(dims, dtype=np_dtype)
    try:
        if dtype in _FLOAT_MAX_INT:
            if not types <= {float, int}:
                return None
            array = np.array(items, dtype=np.float64)
            with np.errstate(invalid="ignore"):
                if int in types and (np.abs(array) > _FLOAT_MAX_INT[dtype]).any():
                    return None  # some integer may be lossy; let the exact walk decide
                if dtype == "DT_FLOAT":
                    finite = np.isfinite(array)
                    if (np.abs(array[finite]) > _FLT_MAX).any():
                        return None
                    array = array.astype(np.float32)
        elif dtype in _INT_RANGES:
            if types != {int}:
                return None
            wide = np.uint64 if dtype == "DT_UINT64" else np.int64
            array = np.array(items, dtype=wide)
            low, high = _INT_RANGES[dtype]
            if int(array.min()) < low or int(array.max()) > high:
                return None
            array = array.astype(np_dtype)
        elif dtype == "DT_BOOL":
            if types != {bool}:
                return None
            array = np.array(items, dtype=np.bool_)
        elif dtype == "DT_STRING":
            if types != {str}:
                return None
            array = np.empty(len(items), dtype=object)
            array[:] = [_utf8(s) for s in items]
        else:
            return None
    except (OverflowError, ValueError, TypeError):
        return None
    return array.reshape(dims)


def _tensor(value: Any, dtype: str) -> np.ndarray:
    dims = _dense_shape(value)
    array = _fast_tensor(value, dtype, dims)
    return array if array is not None else _exact_tensor(value, dtype, dims)


def _shape_string(dims: list[int] | tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _status_text(error: SealserveError) -> str:
    return f"{error.code.name}: {error.message}"  # absl::Status::ToString()


class _Column:
    """The instances of one input, checked for equal size and shape (AddInstanceItem)."""

    __slots__ = ("arrays", "dims")

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []
        self.dims: list[int] | None = None

    def add(self, value: Any, dtype: str) -> None:
        dims = _dense_shape(value)
        array = _fast_tensor(value, dtype, dims)
        if array is None:
            array = _exact_tensor(value, dtype, dims)
        if self.dims is None:
            self.dims = dims
        elif math.prod(self.dims) != array.size:
            raise InvalidArgument(
                f"Expecting tensor size: {math.prod(self.dims)} but got: {array.size}"
            )
        elif self.dims != dims:
            raise InvalidArgument(
                f"Expecting shape {_shape_string(self.dims)} but got: {_shape_string(dims)}"
            )
        self.arrays.append(array)


def _from_instances(instances: list[Any], infos: Mapping[str, TensorInfo]) -> dict[str, Any]:
    names = sorted(infos)
    first = instances[0]
    if not isinstance(first, dict) and len(names) > 1:
        raise InvalidArgument(
            "instances is a plain list, but expecting list of objects as multiple input "
            "tensors required as per tensorinfo_map"
        )
    if _is_element_object(first):
        return _from_named_instances(instances, names, infos)
    # One tensor for the whole list when it is well-formed: same result as per instance.
    name = names[0]
    dtype = infos[name].dtype
    whole = _fast_tensor(instances, dtype, _dense_shape(instances))
    if whole is not None:
        return {name: whole}
    column = _Column()
    for index, item in enumerate(instances):
        if _is_element_object(item):
            raise InvalidArgument(
                f"Expecting value/list but got object at item {index} of input list"
            )
        try:
            column.add(item, dtype)
        except SealserveError as error:
            raise InvalidArgument(
                f"Failed to process element: {index} of 'instances' list. "
                f"Error: {_status_text(error)}"
            ) from None
    return {name: np.stack(column.arrays)}


def _from_named_instances(
    instances: list[Any], names: list[str], infos: Mapping[str, TensorInfo]
) -> dict[str, Any]:
    expected = set(names)
    if all(_is_element_object(item) and item.keys() == expected for item in instances):
        arrays = {}
        for name in names:
            column_values = [item[name] for item in instances]
            array = _fast_tensor(column_values, infos[name].dtype, _dense_shape(column_values))
            if array is None:
                break
            arrays[name] = array
        else:
            return arrays
    columns = {name: _Column() for name in names}
    for index, item in enumerate(instances):
        if not _is_element_object(item):
            raise InvalidArgument(f"Expecting object but got list at item {index} of input list")
        for key, value in item.items():
            try:
                if key not in infos:
                    raise InvalidArgument(f"JSON object: does not have named input: {key}")
                columns[key].add(value, infos[key].dtype)
            except SealserveError as error:
                raise InvalidArgument(
                    f"Failed to process element: {index} key: {key} of 'instances' list. "
                    f"Error: {_status_text(error)}"
                ) from None
        if item.keys() != expected:
            raise InvalidArgument(
                f"Failed to process element: {index} of 'instances' list. JSON object: "
                f"{_render(item)} keys must be equal to: {','.join(names)}"
            )
    return {name: np.stack(columns[name].arrays) for name in names}


def _from_inputs(value: Any, infos: Mapping[str, TensorInfo]) -> dict[str, Any]:
    names = sorted(infos)
    if not isinstance(value, dict) or _is_b64_object(value):
        if len(names) > 1:
            raise InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple input "
                "tensors required as per tensorinfo_map"
            )
        return {names[0]: _tensor(value, infos[names[0]].dtype)}
    tensors = {}
    for name in names:
        if name not in value:
            raise InvalidArgument(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = _tensor(value[name], infos[name].dtype)
    return tensors


def parse_predict_request(
    body: Any, signature_lookup: Callable[[str], SignatureInfo]
) -> PredictRequest:
    """Turn a parsed REST Predict body into numpy inputs (json_tensor.cc
    FillPredictRequestFromJson).

    `signature_lookup` is called with the signature name (`serving_default` when the body
    names none or an empty one) and raises for an unknown signature. Inputs are decoded with
    the signature's input dtypes: DT_FLOAT -> float32, ..., DT_STRING -> object arrays of bytes.
    Raises InvalidArgument with TF Serving's messages; UNIMPLEMENTED (columnar format) for
    input dtypes JSON cannot carry -- in the row format TF Serving wraps that error into an
    InvalidArgument, and so do we.
    """
    document = _require_object(body)
    requested = _signature_name(document)
    signature = signature_lookup(requested or DEFAULT_SIGNATURE)
    if not signature.inputs:
        raise InvalidArgument(f"Failed to get input map for signature: {requested or 'DEFAULT'}")
    if "instances" in document:
        if "inputs" in document:
            raise InvalidArgument(
                f"JSON Value: {_render(document)} Not formatted correctly expecting only one "
                "of 'inputs' or 'instances' keys to exist "
            )
        instances = document["instances"]
        if not isinstance(instances, list):
            raise InvalidArgument(
                f"JSON Value: {_render(document)} Excepting 'instances' to be an list/array"
            )
        if not instances:
            raise InvalidArgument(f"JSON Value: {_render(document)} No values in 'instances' array")
        inputs = _from_instances(instances, signature.inputs)
        return PredictRequest(requested or DEFAULT_SIGNATURE, inputs, True)
    if "inputs" in document:
        inputs = _from_inputs(document["inputs"], signature.inputs)
        return PredictRequest(requested or DEFAULT_SIGNATURE, inputs, False)
    raise InvalidArgument("Missing 'inputs' or 'instances' key")


# ---------------------------------------------------------------------------------------------
# Predict responses.

_BYTES_SUFFIX = "_bytes"  # DT_STRING outputs with this alias suffix are written as {"b64": ...}


def _leaf_tokens(name: str, array: np.ndarray, leaf_level: int) -> list[str]:
    """JSON text of every element (row-major). `leaf_level` is the number of open JSON levels
    around each element, which indents a `{"b64": ...}` object."""
    dtype = dtype_name(array.dtype)
    flat = array.reshape(-1)
    if flat.size == 0:
        return []
    if dtype in ("DT_FLOAT", "DT_DOUBLE"):
        return _decimal_tokens(flat)
    if dtype == "DT_HALF":  # written as the float it widens to (TF Serving's DT_HALF case)
        with np.errstate(invalid="ignore"):
            return _decimal_tokens(flat.astype(np.float32))
    if dtype in _INT_RANGES:
        return list(map(str, flat.tolist()))
    if dtype == "DT_BOOL":
        return ["true" if v else "false" for v in flat.tolist()]
    if dtype == "DT_STRING":
        values = [v if isinstance(v, bytes) else _utf8(str(v)) for v in flat.tolist()]
        if not name.endswith(_BYTES_SUFFIX):
            return [_quote(_raw_text(v)) for v in values]
        inner = "{\n" + _INDENT * (leaf_level + 1) + '"b64": "'
        outer = '"\n' + _INDENT * leaf_level + "}"
        return [inner + binascii.b2a_base64(v, newline=False).decode() + outer for v in values]
    raise InvalidArgument(f"Failed to write JSON value for tensor type: {data_type_string(dtype)}")


def _nest(
    tokens: list[str], outer: int, dims: tuple[int, ...], level: int, one_line: bool
) -> list[str]:
    """Wrap row-major leaf tokens into `outer` JSON arrays of shape `dims`. `level` is the
    number of JSON levels open around each of those arrays; `one_line` is RapidJSON's
    kFormatSingleLineArray (row format), else every element goes on its own indented line."""
    items = tokens
    for axis in range(len(dims) - 1, -1, -1):
        size = dims[axis]
        count = outer * math.prod(dims[:axis])
        depth = level + axis
        if size == 0:
            items = ["[]"] * count
            continue
        if one_line:
            start, sep, end = "[", ", ", "]"
        else:
            inner = _INDENT * (depth + 1)
            start, sep, end = "[\n" + inner, ",\n" + inner, "\n" + _INDENT * depth + "]"
        items = [start + sep.join(items[i * size : (i + 1) * size]) + end for i in range(count)]
    return items


def _row_json(names: list[str], arrays: dict[str, np.ndarray]) -> str:
    batch = -1
    for name in names:
        array = arrays[name]
        if array.ndim == 0:
            raise InvalidArgument(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and array.shape[0] != batch:
            raise InvalidArgument(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} "
                f"expecting: {batch}"
            )
        batch = array.shape[0]
    objects = len(names) > 1
    base = 3 if objects else 2  # open levels: root, "predictions" array (, instance object)
    per_instance = {}
    for name in names:
        array = arrays[name]
        tokens = _leaf_tokens(name, array, base + array.ndim - 1)
        per_instance[name] = _nest(tokens, batch, array.shape[1:], base, True)
    if batch == 0:
        return '{\n    "predictions": []\n}'
    if not objects:
        body = ", ".join(per_instance[names[0]])
    else:
        keys = [_quote(name) + ": " for name in names]
        pad = _INDENT * 3
        rows = []
        for i in range(batch):
            members = (",\n" + pad).join(
                k + per_instance[n][i] for k, n in zip(keys, names, strict=True)
            )
            rows.append("\n" + _INDENT * 2 + "{\n" + pad + members + "\n" + _INDENT * 2 + "}")
        body = ",".join(rows)
    return '{\n    "predictions": [' + body + "\n    ]\n}"


def _columnar_json(names: list[str], arrays: dict[str, np.ndarray]) -> str:
    if len(names) == 1:
        array = arrays[names[0]]
        tokens = _leaf_tokens(names[0], array, 1 + array.ndim)
        return '{\n    "outputs": ' + _nest(tokens, 1, array.shape, 1, False)[0] + "\n}"
    members = []
    for name in names:
        array = arrays[name]
        tokens = _leaf_tokens(name, array, 2 + array.ndim)
        value = _nest(tokens, 1, array.shape, 2, False)[0]
        members.append("\n" + _INDENT * 2 + _quote(name) + ": " + value)
    return '{\n    "outputs": {' + ",".join(members) + "\n    }\n}"


def format_predict_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
    """A Predict response body, byte for byte as TF Serving writes it (MakeJsonFromTensors).

    Row format -> `{"predictions": [...]}` (one output: a value per instance; several: an
    object per instance; every output must share dim 0); columnar -> `{"outputs": v}` or
    `{"outputs": {alias: v}}`. Aliases are written in sorted order. DT_STRING outputs (object
    arrays of bytes/str) are JSON strings, or `{"b64": ...}` when the alias ends in `_bytes`.
    Raises InvalidArgument with TF Serving's messages for empty maps, scalars in the row
    format, inconsistent batch sizes and dtypes JSON cannot carry.
    """
    if not outputs:
        raise InvalidArgument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    arrays = {name: np.asarray(outputs[name]) for name in names}
    text = _row_json(names, arrays) if row_format else _columnar_json(names, arrays)
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")
