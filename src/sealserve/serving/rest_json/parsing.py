"""Parsing a REST body, within limits: `loads` accepts NaN / Infinity / -Infinity as
RapidJSON's kParseNanAndInfFlag does, maps syntax errors to RapidJSON's wording
(`JSON Parse error: <reason> at offset: <byte offset>`) and, unlike TF Serving
(CVE-2025-0649), refuses documents nested deeper than `max_depth`, found by a linear,
non-recursive pre-scan. Stateless; thread safe.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from sealserve.errors import InvalidArgument

DEFAULT_MAX_DEPTH = 100
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


# What parsing a body may hold at once, by what it contains, at most: the per-item figures
# bound CPython 3.11's objects (tests/serving/test_rest_json_costs.py measures them with
# tracemalloc on the costliest shapes: nested empty arrays and objects, short strings, floats).
_VALUE_BYTES = 72  # a number (a float: 24) in its list slot, and its copies into numpy
_ARRAY_BYTES = 96  # a list
_OBJECT_BYTES = 512  # a small dict (its first entries), or a {"b64": ...} and its bytes
_STRING_BYTES = 80  # a str's header (UCS-4 at worst); its characters are counted apart


def parse_cost(raw: bytes) -> int:
    """An upper bound of the memory `loads(raw)` and the conversion of its values to numpy
    hold at once, from a linear count of the body's separators and brackets (strings'
    contents included, which only overestimates): what a request is charged against the
    server's in-flight budget before its body is parsed. Python's objects cost 4 to 26
    times the JSON text they come from."""
    text = len(raw) if raw.isascii() else 4 * len(raw)  # one str: UCS-4 if a character needs it
    return (
        len(raw)  # loads' own copy of the bytes
        + 3 * text  # the decoded document, the strings cut from it, base64 decoded
        + _VALUE_BYTES * (raw.count(b",") + 1)
        + _ARRAY_BYTES * raw.count(b"[")
        + _OBJECT_BYTES * raw.count(b"{")
        + _STRING_BYTES * (raw.count(b'"') // 2)
    )


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
