"""TF Serving's REST API, against a real server on loopback (reference §1)."""

from __future__ import annotations

import gzip
import json

import pytest


def test_predict_row_format_the_seeds_curl(server):
    # curl -d '{"instances": [1.0, 2.0, 5.0]}' -X POST .../v1/models/half_plus_two:predict
    result = server.http("POST", "/v1/models/half_plus_two:predict", {"instances": [1.0, 2.0, 5.0]})
    assert result.status == 200
    assert result.content_type.startswith("application/json")
    assert result.json() == {"predictions": [2.5, 3.0, 4.5]}


def test_encrypted_model_serves_the_same_answers(server):
    result = server.http("POST", "/v1/models/secret_h2:predict", {"instances": [1.0, 2.0, 5.0]})
    assert result.json() == {"predictions": [2.5, 3.0, 4.5]}


def test_predict_columnar_format(server):
    result = server.http("POST", "/v1/models/half_plus_two:predict", {"inputs": [3.0, 4.0]})
    assert result.json() == {"outputs": [3.5, 4.0]}


def test_named_inputs_in_both_formats(server):
    rows = server.http(
        "POST", "/v1/models/half_plus_two:predict", {"instances": [{"x": 1.0}, {"x": 2.0}]}
    )
    assert rows.json() == {"predictions": [2.5, 3.0]}
    columns = server.http("POST", "/v1/models/half_plus_two:predict", {"inputs": {"x": [1.0]}})
    assert columns.json() == {"outputs": [2.5]}


def test_whole_numbers_keep_their_decimal_point(server):
    body = server.http("POST", "/v1/models/half_plus_two:predict", {"instances": [2.0]}).body
    assert b"".join(body.split()) == b'{"predictions":[3.0]}'


@pytest.mark.parametrize(
    ("path", "version"),
    [
        ("/v1/models/half_plus_two/versions/1:predict", 1),
        ("/v1/models/half_plus_two/labels/canary:predict", 2),
        ("/v1/models/half_plus_two/LABELS/stable:PREDICT", 1),  # routes are case-insensitive
    ],
)
def test_version_and_label_routes(server, path, version):
    assert server.http("POST", path, {"instances": [1.0]}).json() == {"predictions": [2.5]}
    status = server.http("GET", f"/v1/models/half_plus_two/versions/{version}").json()
    assert status["model_version_status"][0]["version"] == str(version)


def test_model_status_lists_versions_highest_first(server):
    result = server.http("GET", "/v1/models/half_plus_two")
    assert result.status == 200
    assert result.json() == {
        "model_version_status": [
            {
                "version": "2",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            },
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            },
        ]
    }


def test_metadata_describes_the_signatures(server):
    result = server.http("GET", "/v1/models/half_plus_two/versions/1/metadata")
    assert result.status == 200
    doc = result.json()
    assert doc["model_spec"] == {"name": "half_plus_two", "signature_name": "", "version": "1"}
    signature = doc["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    x = signature["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT"
    assert x["tensor_shape"] == {
        "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}],
        "unknown_rank": False,
    }
    assert signature["outputs"]["y"]["dtype"] == "DT_FLOAT"
    latest = server.http("GET", "/v1/models/half_plus_two/metadata").json()
    assert latest["model_spec"]["version"] == "2"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        (
            "POST",
            "/v1/models/nope:predict",
            {"instances": [1.0]},
            404,
            "Servable not found for request: Latest(nope)",
        ),
        (
            "POST",
            "/v1/models/half_plus_two/versions/99:predict",
            {"instances": [1.0]},
            404,
            "Servable not found for request: Specific(half_plus_two, 99)",
        ),
        (
            "POST",
            "/v1/models/half_plus_two/labels/gold:predict",
            {"instances": [1.0]},
            400,
            "Unrecognized servable version label: gold",
        ),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            {"instances": [1.0], "signature_name": "s"},
            400,
            'Serving signature name: "s" not found in signature def',
        ),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            {"x": 1},
            400,
            "Missing 'inputs' or 'instances' key",
        ),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            {"inputs": [[1.0], [1.0, 2.0]]},
            400,
            "Encountered list at unexpected size",
        ),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            {"instances": [[1.0], [1.0, 2.0]]},
            400,
            "Expecting tensor size: 1 but got: 2",
        ),
        (
            "POST",
            "/v1/models/half_plus_two:predict",
            {"instances": ["a"]},
            400,
            "is not of expected type: float",
        ),
        ("GET", "/v1/models", None, 400, "Missing model name in request."),
        ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
        (
            "GET",
            "/v1/models/half_plus_two/versions/7",
            None,
            404,
            "Could not find version 7 of model half_plus_two",
        ),
        ("GET", "/v1/elsewhere", None, 400, "Malformed request: GET /v1/elsewhere"),
        ("DELETE", "/v1/models/half_plus_two", None, 400, "Malformed request: DELETE"),
        (
            "GET",
            "/v1/models/half_plus_two/versions/99999999999999999999",
            None,
            400,
            "Failed to convert version",
        ),
    ],
)
def test_errors_have_tf_servings_status_and_message(server, method, path, body, status, message):
    result = server.http(method, path, body)
    assert result.status == status, result.body
    assert result.content_type.startswith("application/json")
    assert message in result.json()["error"]


def test_malformed_json_is_a_400(server):
    result = server.http("POST", "/v1/models/half_plus_two:predict", b'{"instances": [1.0,')
    assert result.status == 400
    assert "error" in result.json()


def test_gzip_bodies_are_accepted(server):
    body = gzip.compress(json.dumps({"instances": [1.0, 2.0]}).encode())
    result = server.http(
        "POST", "/v1/models/half_plus_two:predict", body, headers={"Content-Encoding": "gzip"}
    )
    assert result.json() == {"predictions": [2.5, 3.0]}


def test_a_gzip_bomb_is_refused_without_inflating_it(server):
    bomb = gzip.compress(b"[" + b" " * (50 << 20) + b"]")  # 50 MB of spaces, ~50 KB on the wire
    result = server.http(
        "POST", "/v1/models/half_plus_two:predict", bomb, headers={"Content-Encoding": "gzip"}
    )
    assert result.status == 413
    assert "request body exceeds" in result.json()["error"]


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/v1/models/half_plus_two:predict", 413, "exceeds"),
        ("/v1/models/half_plus_two/versions/x:predict", 400, "Malformed request"),
    ],
)
def test_a_client_still_sending_a_refused_body_gets_the_answer(server, path, status, error):
    """The body is refused before it is read (its declared length, or its path); the client,
    which sends all of it before reading anything (as http.client, urllib), got a reset mid-body
    instead of the answer (with 8 MB, every time): what is left of it is read and dropped."""
    result = server.http("POST", path, b'{"instances": [' + b"1.0," * 2_000_000 + b"1.0]}")
    assert result.status == status
    assert error in result.json()["error"]


def test_deeply_nested_json_is_refused(server):
    result = server.http(
        "POST",
        "/v1/models/half_plus_two:predict",
        b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    )
    assert result.status == 400
    assert "nest" in result.json()["error"].lower()


def test_hundreds_of_malformed_requests_then_a_good_one(server):
    bad_bodies = [
        b"",
        b"{",
        b"null",
        b"[]",
        b'"x"',
        b'{"instances": []}',
        b'{"instances": 1, "inputs": 1}',
        b'{"instances": [true]}',
        b'{"instances": [{"b64": "!!"}]}',
        b'{"inputs": {"z": [1.0]}}',
        b'{"instances": [[[1.0]], [1.0]]}',
        b'{"instances": [1e999999]}',
        b'{"instances": [1.0], "signature_name": 5}',
        b"\xff\xfe",
        b'{"instances": [NaN]}',
    ]
    statuses = set()
    for i in range(300):
        body = bad_bodies[i % len(bad_bodies)]
        path = "/v1/models/half_plus_two:predict" if i % 7 else "/v1/models/%ZZ:predict"
        result = server.http("POST", path, body)
        statuses.add(result.status)
        assert result.status < 500 or result.status == 200, (body, result.body)
        assert "error" in result.json() or result.status == 200
    assert server.http(
        "POST", "/v1/models/half_plus_two:predict", {"instances": [1.0, 2.0, 5.0]}
    ).json() == {"predictions": [2.5, 3.0, 4.5]}
