"""What a REST request is charged against the server's in-flight budget bounds the memory its
JSON really takes: `parse_cost` the parsing of a body (and the conversion of its values to
numpy), the `*_response_cost`s the writing of an answer. Measured with tracemalloc (which
sees Python's objects and numpy's buffers) on the shapes that cost the most per byte of
JSON: a bound that fell short would let requests hold more memory than the budget says."""

from __future__ import annotations

import contextlib
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from sealserve.errors import SealserveError
from sealserve.serving.rest_json import (
    classify_response_cost,
    examples_from_json,
    format_classify_response,
    format_predict_response,
    format_regress_response,
    loads,
    parse_cost,
    parse_predict_request,
    predict_response_cost,
    regress_response_cost,
)
from sealserve.serving.signatures import SignatureInfo, TensorInfo

BODY_BYTES = 256 << 10


@pytest.fixture(scope="module", autouse=True)
def _imports_done():
    """What the first calls import (TensorFlow's Example protos...) is not a request's cost."""
    examples_from_json(loads(b'{"examples": [{"x": 1, "s": "a", "b": {"b64": "AA=="}}]}'))
    for dtype in ("DT_FLOAT", "DT_INT64", "DT_INT8", "DT_BOOL", "DT_STRING"):
        for body in (b'{"instances": [1]}', b'{"instances": [{"b64": "AA=="}]}'):
            with contextlib.suppress(SealserveError):
                parse_predict_request(loads(body), lambda name, dtype=dtype: _signature(dtype))
    for row_format in (True, False):
        format_predict_response({"y": np.zeros(2, np.float32)}, row_format)
        format_predict_response({"y_bytes": np.array([b"a"], dtype=object)}, row_format)


def _peak(work: Callable[[], Any]) -> int:
    """The most memory `work()` held at once, beyond what was held before it ran."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        try:
            result = work()
        except SealserveError:  # a refused body is still parsed first
            result = None
        _, peak = tracemalloc.get_traced_memory()
        del result
    finally:
        tracemalloc.stop()
    return peak - before


def _repeated(head: bytes, item: bytes, tail: bytes) -> bytes:
    """head, then item repeated (comma separated) to about BODY_BYTES, then tail."""
    count = BODY_BYTES // (len(item) + 1)
    return head + b",".join([item] * count) + tail


def _signature(dtype: str, *names: str) -> SignatureInfo:
    return SignatureInfo(
        inputs={name: TensorInfo(f"{name}:0", dtype, None) for name in names or ("x",)},
        outputs={},
    )


# (instances' items or a whole body, the input dtype): the costliest JSON per byte for the
# parser (containers, one-character strings, a document made UCS-4 by one emoji), and the
# common shapes (floats, ints, base64)
PREDICT_BODIES = {
    "floats": (_repeated(b'{"instances": [', b"1.5", b"]}"), "DT_FLOAT"),
    "small ints": (_repeated(b'{"instances": [', b"1", b"]}"), "DT_INT64"),
    "int8": (_repeated(b'{"instances": [', b"7", b"]}"), "DT_INT8"),
    "large ints": (_repeated(b'{"instances": [', b"123456789", b"]}"), "DT_INT64"),
    "bools": (_repeated(b'{"instances": [', b"true", b"]}"), "DT_BOOL"),
    "empty arrays": (_repeated(b'{"instances": [', b"[]", b"]}"), "DT_FLOAT"),
    "one-item arrays": (_repeated(b'{"instances": [', b"[0]", b"]}"), "DT_FLOAT"),
    "empty objects": (_repeated(b'{"instances": [', b"{}", b"]}"), "DT_FLOAT"),
    "named rows": (_repeated(b'{"instances": [', b'{"x":0}', b"]}"), "DT_FLOAT"),
    "columns": (_repeated(b'{"inputs": {"x": [', b"[1.5, 2]", b"]}}"), "DT_FLOAT"),
    "strings": (_repeated(b'{"instances": [', b'"a"', b"]}"), "DT_STRING"),
    "emoji strings": (_repeated(b'{"instances": [', '"\U0001f600"'.encode(), b"]}"), "DT_STRING"),
    "escaped strings": (_repeated(b'{"instances": [', b'"\\u00e9"', b"]}"), "DT_STRING"),
    "base64": (_repeated(b'{"instances": [', b'{"b64": "AAAA"}', b"]}"), "DT_STRING"),
    "long base64": (b'{"instances": [{"b64": "' + b"A" * BODY_BYTES + b'"}]}', "DT_STRING"),
    "many keys": (
        b"{" + b",".join(b'"k%07d":0' % i for i in range(BODY_BYTES // 12)) + b"}",
        "DT_FLOAT",
    ),
}


@pytest.mark.parametrize("shape", sorted(PREDICT_BODIES))
def test_parse_cost_bounds_what_parsing_a_predict_body_holds(shape):
    body, dtype = PREDICT_BODIES[shape]
    signature = _signature(dtype)
    held = _peak(lambda: parse_predict_request(loads(body), lambda name: signature))
    assert held <= parse_cost(body)


def test_parse_cost_bounds_what_parsing_examples_holds():
    body = _repeated(b'{"examples": [', b'{"x": 1.5, "s": "a"}', b"]}")
    assert _peak(lambda: examples_from_json(loads(body))) <= parse_cost(body)


def test_parse_cost_is_not_far_above_what_floats_cost():
    """The common case is not refused for want of budget: floats are charged within twice
    what they hold."""
    body, dtype = PREDICT_BODIES["floats"]
    signature = _signature(dtype)
    held = _peak(lambda: parse_predict_request(loads(body), lambda name: signature))
    assert parse_cost(body) <= 2 * held


VALUES = 1 << 16
OUTPUTS = {
    "float32": np.random.default_rng(0).random(VALUES, dtype=np.float32),
    "float64": np.random.default_rng(1).random(VALUES),
    "float16": np.random.default_rng(2).random(VALUES).astype(np.float16),
    "int64": np.arange(VALUES, dtype=np.int64) * 7919,
    "int8": np.zeros(VALUES, np.int8),
    "uint8 column": np.zeros((VALUES, 1), np.uint8),
    "bool": np.zeros(VALUES, bool),
    "nan": np.full(VALUES, np.nan, np.float32),
    "short strings": np.array([b"ab"] * (VALUES // 4), dtype=object),
    "control bytes": np.array([bytes(range(32)) * 8] * 1024, dtype=object),
}


@pytest.mark.parametrize("row_format", [True, False], ids=["rows", "columns"])
@pytest.mark.parametrize("dtype", sorted(OUTPUTS))
def test_predict_response_cost_bounds_what_writing_an_answer_holds(dtype, row_format):
    outputs = {"y": OUTPUTS[dtype]}
    held = _peak(lambda: format_predict_response(outputs, row_format))
    assert held <= predict_response_cost(outputs)


def test_predict_response_cost_bounds_base64_answers():
    outputs = {"y_bytes": np.array([bytes(range(256)) * 4] * 1024, dtype=object)}
    held = _peak(lambda: format_predict_response(outputs, True))
    assert held <= predict_response_cost(outputs)


def test_classify_and_regress_response_costs_bound_what_writing_them_holds():
    rows = [[("a", 0.25), ("label\x01" * 8, 0.75)] for _ in range(VALUES // 4)]
    assert _peak(lambda: format_classify_response(rows)) <= classify_response_cost(rows)
    values = np.random.default_rng(3).random(VALUES).tolist()
    assert _peak(lambda: format_regress_response(values)) <= regress_response_cost(values)
