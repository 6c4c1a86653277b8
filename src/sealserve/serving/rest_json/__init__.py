"""TF Serving's REST JSON: bodies in, numpy and tf.Examples out, responses written byte for
byte as TF Serving's RapidJSON writer does (`tensorflow_serving/util/json_tensor.cc`).

`parsing` (limits and RapidJSON's syntax errors), `values` (dtypes and the one base64 decoder
of every verb), `predict`, `examples` (classify / regress), `numbers` and `text` (how TF
Serving writes them). `parse_cost` and the `*_response_cost`s bound the memory parsing a
body and writing an answer hold (what the server's in-flight budget charges a request).
Deliberate differences, each safer than TF Serving: integers for DT_INT8/INT16/UINT8 must be
in the dtype's range (TF wraps them modulo 2^n); values echoed in error messages are cut
after 4096 characters; nesting depth and tensor rank are limited.
Stateless; thread safe.
"""

from __future__ import annotations

from sealserve.serving.rest_json.examples import (
    classify_response_cost,
    examples_from_json,
    format_classify_response,
    format_error,
    format_regress_response,
    regress_response_cost,
)
from sealserve.serving.rest_json.parsing import DEFAULT_MAX_DEPTH, loads, parse_cost
from sealserve.serving.rest_json.predict import (
    PredictRequest,
    format_predict_response,
    parse_predict_request,
    predict_response_cost,
)

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "PredictRequest",
    "classify_response_cost",
    "examples_from_json",
    "format_classify_response",
    "format_error",
    "format_predict_response",
    "format_regress_response",
    "loads",
    "parse_cost",
    "parse_predict_request",
    "predict_response_cost",
    "regress_response_cost",
]
