"""Bad requests cost little, for everyone (issue #12 §4): tiny requests declaring huge
tensors, unknown inputs, requests beyond the per-request and server-wide budgets, corrupt
and oversized bodies, deep arrays, idle connections. Each is refused with a client-error
status and one clear message, and other requests (a health probe) are answered meanwhile.
No timing thresholds: a probe must complete while the hostile request is in flight, and
memory growth is bounded."""

from __future__ import annotations

import gzip
import json
import resource
import select
import socket
import threading
import zlib

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.request_budget import BudgetOptions
from sealserve.serving.rest import RestOptions
from sealserve.serving.rest_json import predict_response_cost
from sealserve.serving.tensorflow_runtime import import_tensorflow
from tests.harness import RunningServer, server_options, until

tf = import_tensorflow()


@pytest.fixture(scope="module")
def guarded(model_root):
    """A server with small caps: 8 MiB per request, 12 MiB in flight, 2 s idle connections."""
    options = server_options(
        [ModelConfig("half_plus_two", str(model_root / "half_plus_two"))],
        grpc_max_message_bytes=64 << 20,
        request_budget=BudgetOptions(max_request_bytes=8 << 20, max_in_flight_bytes=12 << 20),
        rest=RestOptions(max_body_bytes=1 << 20, idle_timeout_seconds=2.0),
    )
    running = RunningServer(options, StaticKeyProvider({}))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(guarded):
    channel = guarded.channel(
        options=[("grpc.max_send_message_length", 64 << 20)],
    )
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def _request(**tensors) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    for alias, proto in tensors.items():
        request.inputs[alias].CopyFrom(proto)
    return request


def _declared(dtype, shape, **values):
    proto = tf.make_tensor_proto(np.zeros(0, np.float32))
    proto.Clear()
    proto.dtype = dtype.as_datatype_enum
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    for field, items in values.items():
        getattr(proto, field).extend(items)
    return proto


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _refused(stub, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=60)
    return info.value


# -- gRPC ----------------------------------------------------------------------------------


def test_a_tiny_request_declaring_60m_floats_is_refused_not_answered(stub):
    request = _request(x=_declared(tf.float32, [60_000_000]))
    assert request.ByteSize() < 40
    before = _max_rss_bytes()
    error = _refused(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "carries 0 values" in error.details()
    assert _max_rss_bytes() - before < 100 << 20  # not 240 MB of zeros, nor their answer


def test_unknown_aliases_are_refused_before_decoding(stub):
    request = _request(
        x=tf.make_tensor_proto(np.float32([1.0])),
        **{f"s{i}": _declared(tf.string, [20_000_000]) for i in range(3)},
    )
    before = _max_rss_bytes()
    error = _refused(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("input size does not match signature: 4!=1")
    assert _max_rss_bytes() - before < 100 << 20
    error = _refused(stub, _request(s=_declared(tf.string, [20_000_000])))
    assert error.details().startswith("input tensor alias not found in signature: s.")


def test_a_hundred_dimensions_is_invalid_argument_not_internal(stub):
    error = _refused(stub, _request(x=_declared(tf.float32, [1] * 100, float_val=[1.0])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "100 dimensions" in error.details()


def test_a_request_over_the_per_request_budget_is_resource_exhausted(stub):
    big = np.zeros(3 << 20, np.float32)  # 12 MiB > 8 MiB
    error = _refused(stub, _request(x=tf.make_tensor_proto(big)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "allowed per request" in error.details()


def test_the_in_flight_budget_refuses_what_would_exceed_it(guarded, stub):
    """Hold 6 MiB of the 12 MiB budget (as a slow request would), then a 7 MiB request is
    refused at once rather than queued; once released, it is served."""
    budget = guarded.server.request_budget
    x = tf.make_tensor_proto(np.ones(896 << 10, np.float32))  # 3.5 MiB in, 3.5 MiB out
    with budget.reserve(6 << 20):
        error = _refused(stub, _request(x=x))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "server busy" in error.details()
    response = stub.Predict(_request(x=x), timeout=60)
    assert response.outputs["y"].tensor_shape.dim[0].size == 896 << 10
    # the answer is held until its call has ended, which the server learns just after
    assert until(lambda: budget.in_flight == 0)


def test_a_response_too_large_to_send_is_refused_before_it_is_built(model_root):
    options = server_options(
        [ModelConfig("half_plus_two", str(model_root / "half_plus_two"))],
        grpc_max_message_bytes=1 << 20,
    )
    running = RunningServer(options, StaticKeyProvider({}))
    try:
        channel = running.channel()
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        # 1 MiB filled from one value: the largest tensor a few bytes may declare
        x = _declared(tf.float32, [256 << 10], float_val=[1.0])
        error = _refused(stub, _request(x=x))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "exceeds the 1048576-byte message limit" in error.details()
        channel.close()
    finally:
        running.stop()


def test_grpc_caps_concurrent_rpcs(guarded):
    grpc_server = guarded.server._grpc
    state = grpc_server._state
    assert state.maximum_concurrent_rpcs is not None and state.maximum_concurrent_rpcs > 0


# -- REST ------------------------------------------------------------------------------------


def _probe_while(guarded, hostile) -> tuple[object, int]:
    """Run `hostile()` in a thread; probe /v1/health/live until it returns. Returns its
    result and how many probes completed while it was still in flight."""
    result: list[object] = []
    done = threading.Event()

    def run() -> None:
        try:
            result.append(hostile())
        finally:
            done.set()

    thread = threading.Thread(target=run)
    thread.start()
    answered = 0
    while not done.is_set():
        if guarded.http("GET", "/v1/health/live").status == 200 and not done.is_set():
            answered += 1
    thread.join()
    return result[0], answered


def _big_examples_body() -> bytes:
    example = '{"x": 1.0, "pad": "' + "p" * 200 + '"}'
    count = (900 << 10) // len(example)
    return (
        '{"signature_name": "regress_x_to_y", "examples": [' + ",".join([example] * count) + "]}"
    ).encode()


@pytest.mark.parametrize("verb", ["classify", "regress"])
def test_a_large_classify_or_regress_body_does_not_stall_probes(guarded, verb):
    body = _big_examples_body()
    if verb == "classify":
        body = body.replace(b"regress_x_to_y", b"classify_x_to_y")
    result, answered = _probe_while(
        guarded, lambda: guarded.http("POST", f"/v1/models/half_plus_two:{verb}", body)
    )
    assert result.status == 200, result.body[:200]
    assert answered >= 1


def test_a_corrupt_gzip_body_is_a_400(guarded):
    body = gzip.compress(b'{"instances": [1.0]}')
    corrupt = body[:12] + bytes(b ^ 0xFF for b in body[12:20]) + body[20:]
    result = guarded.http(
        "POST", "/v1/models/half_plus_two:predict", corrupt, headers={"Content-Encoding": "gzip"}
    )
    assert result.status == 400
    assert "cannot be decoded" in result.json()["error"]


def test_ninety_eight_deep_arrays_are_a_400(guarded):
    body = b'{"instances": ' + b"[" * 98 + b"1.0" + b"]" * 98 + b"}"
    result = guarded.http("POST", "/v1/models/half_plus_two:predict", body)
    assert result.status == 400
    assert "tensors of more than 64 dimensions are not supported" in result.json()["error"]


def _raw_post(port: int, headers: bytes, body: bytes) -> tuple[bytes, bytes]:
    """POST over a raw socket; returns (response head and body, what follows: b"" when
    the server closed the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        conn.sendall(headers + body)
        response = b""
        while b"\r\n\r\n" not in response:
            response += conn.recv(65536)
        head, _, rest = response.partition(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        while len(rest) < length:
            rest += conn.recv(65536)
        after = conn.recv(65536)  # EOF (b"") once the server closes
        return head + b"\r\n\r\n" + rest, after


def test_after_a_413_on_a_compressed_body_the_rest_is_not_inflated(guarded):
    """The connection is closed after the 413, not kept reading (and inflating) the rest
    of the body on the event loop."""
    compressor = zlib.compressobj(wbits=31)
    bomb = compressor.compress(b"[" + b" " * (64 << 20)) + compressor.flush()
    headers = (
        b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\n"
        b"Content-Encoding: gzip\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(bomb)}\r\n\r\n".encode()
    )
    response, after = _raw_post(guarded.rest_port, headers, bomb)
    assert response.startswith(b"HTTP/1.1 413")
    assert after == b""
    assert guarded.http("GET", "/v1/health/live").status == 200


def test_idle_connections_are_closed(guarded):
    with socket.create_connection(("127.0.0.1", guarded.rest_port), timeout=60) as conn:
        assert conn.recv(1) == b""  # closed by the server, after its idle timeout
    with socket.create_connection(("127.0.0.1", guarded.rest_port), timeout=60) as conn:
        conn.sendall(b"GET /v1/health/live HTTP/1.1\r\nHost: x\r\n")  # headers never end
        assert conn.recv(65536) == b""


def test_errors_are_json_without_tracebacks(guarded):
    result = guarded.http("POST", "/v1/models/half_plus_two:predict", b"\xff\xfe not json")
    assert result.status == 400
    assert "Traceback" not in json.loads(result.body)["error"]


def test_classify_and_regress_requests_count_against_the_budget(stub):
    from tensorflow_serving.apis import regression_pb2

    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "regress_x_to_y"
    example = request.input.example_list.examples.add()
    example.features.feature["pad"].bytes_list.value.append(b"p" * (5 << 20))  # 2 x 5 MiB > 8
    with pytest.raises(grpc.RpcError) as info:
        stub.Regress(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "allowed per request" in info.value.details()


# -- REST requests in the server's in-flight budget (shared with gRPC) ----------------------


def _predict_body(values: int) -> bytes:
    return b'{"instances": [' + b",".join([b"1.5"] * values) + b"]}"


def test_rest_requests_hold_their_bytes_in_the_servers_budget(guarded):
    """A REST predict is charged its body, its parse and its answer in the budget gRPC uses:
    while 8 of the 12 MiB are held, one needing about 5 MiB is refused at once (429, retry
    later); once they are released, it is served, and it gives back all it held."""
    budget = guarded.server.request_budget
    body = _predict_body(16 << 10)
    with budget.reserve(8 << 20):
        refused = guarded.http("POST", "/v1/models/half_plus_two:predict", body)
        assert refused.status == 429, refused.body[:300]
        assert "server busy" in refused.json()["error"]
    served = guarded.http("POST", "/v1/models/half_plus_two:predict", body)
    assert served.status == 200
    assert served.json()["predictions"][:2] == [2.75, 2.75]
    assert until(lambda: budget.in_flight == 0)  # given back once its answer is written


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [' + b",".join([b"[]"] * (85 << 10)) + b"]}",  # 256 KiB of lists
        b'{"instances": [' + b",".join([b'{"b64": "AA=="}'] * (16 << 10)) + b"]}",
        _predict_body(64 << 10),  # 256 KiB of floats: parsed, but its answer would not fit
    ],
    ids=["nested-arrays", "b64-objects", "answer"],
)
def test_a_rest_request_that_alone_exceeds_the_budget_is_a_413(guarded, body):
    """What parsing a body, or writing its answer, would hold is charged before it is
    done: beyond the whole budget, 413 (a retry cannot help), not the memory."""
    result = guarded.http("POST", "/v1/models/half_plus_two:predict", body)
    assert result.status == 413, result.body[:300]
    assert "the server holds for all requests at once" in result.json()["error"]
    assert until(lambda: guarded.server.request_budget.in_flight == 0)


def _stalled_body(port: int, sent: int, declared: int) -> socket.socket:
    """A connection that sends the first `sent` bytes of a `declared`-byte body, then stops."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=60)
    conn.sendall(
        b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {declared}\r\n\r\n".encode()
        + (b'{"instances": [' + b"1.5," * declared)[:sent]
    )
    return conn


def test_bodies_sent_slowly_on_many_connections_cannot_hold_more_than_the_budget(guarded):
    """The attack: connections each send most of a large body and stop, so that every
    body is held in memory until the body timeout. Each body's bytes are held in the budget
    as they arrive (twice: the pieces and their join), so the connections that would take
    the budget past its 12 MiB are answered 429 and closed, the others stay within it, and
    all is given back when they hang up."""
    budget = guarded.server.request_budget
    limit = budget.options.max_in_flight_bytes
    sent = 900_000
    stalled = [_stalled_body(guarded.rest_port, sent, 1_000_000) for _ in range(8)]

    def answered() -> list[socket.socket]:
        return select.select(stalled, [], [], 0)[0]

    try:
        # settled: every connection is either answered or holds its whole body so far
        assert until(lambda: budget.in_flight == 2 * sent * (len(stalled) - len(answered())))
        refused = answered()
        assert 0 < len(refused) < len(stalled)
        for conn in refused:
            try:
                head = conn.recv(65536)
            except ConnectionResetError:
                continue  # closed mid-body, its unread bytes reset the connection: also refused
            assert head.startswith(b"HTTP/1.1 429"), head[:200]
            assert b"server busy" in head
        assert budget.in_flight <= limit
    finally:
        for conn in stalled:
            conn.close()
    assert until(lambda: budget.in_flight == 0)
    served = guarded.http("POST", "/v1/models/half_plus_two:predict", _predict_body(1024))
    assert served.status == 200


@pytest.fixture(scope="module")
def impatient(model_root):
    """A server whose REST requests must be done, answer written, within 6 s; 16 MiB bodies."""
    options = server_options(
        [ModelConfig("half_plus_two", str(model_root / "half_plus_two"))],
        rest=RestOptions(max_body_bytes=16 << 20, timeout_seconds=6.0),
    )
    running = RunningServer(options, StaticKeyProvider({}))
    yield running
    running.stop()


def test_an_answer_its_client_does_not_read_is_dropped_at_the_timeout(impatient):
    """The slow-reader attack: ask for large answers and never read them, so the server keeps
    each in its socket buffers. The answer is written within the request's timeout and held
    in the budget until the socket has taken it: unread, it is counted, then dropped with its
    connection when the timeout comes."""
    budget = impatient.server.request_budget
    values = 1_500_000  # a 6 MB body; an answer of about 9 MB, more than the socket buffers take
    answer_cost = predict_response_cost({"y": np.zeros(values, np.float32)})
    body = _predict_body(values)
    with socket.socket() as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn.settimeout(60)
        conn.connect(("127.0.0.1", impatient.rest_port))
        conn.sendall(
            b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert until(lambda: budget.in_flight >= answer_cost)  # the answer, being written
        assert until(lambda: budget.in_flight == 0)  # ... until the timeout dropped it
        received = b""
        try:
            while chunk := conn.recv(1 << 20):
                received += chunk
        except ConnectionResetError:
            pass  # dropped: what was left unread is gone
    head, _, answer = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    assert len(answer) < length  # cut short: the server did not keep it for us
    served = impatient.http("POST", "/v1/models/half_plus_two:predict", _predict_body(3))
    assert served.status == 200
