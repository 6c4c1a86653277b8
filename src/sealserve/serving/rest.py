"""TF Serving's REST API over aiohttp: routes, JSON in and out, errors, request limits.

Thin: match the route, read the body within limits, hand the work to the data plane, map a
`SealserveError` to TF Serving's status code and `{"error": ...}` body. Routes and messages
follow `model_servers/http_rest_api_util.cc` and `http_rest_api_handler.cc`. Beyond TF
Serving: caps on the body size, the gzip-decompressed size and JSON nesting (TF Serving has
crashed on deeply nested JSON and gzip bombs), the server's in-flight budget (shared with
gRPC: a request holds its body, a bound of its parse and of its answer until the answer is
sent, which must happen within the request timeout), and TLS (see `tls.py`).

Also on this port: the Prometheus page at the monitoring config's path (as TF Serving), and
probes for load balancers and Kubernetes, named as KServe's and Triton's (`/v2/health/...`)
under TF Serving's `/v1`: `GET /v1/health/live` (200 while the process serves) and
`GET /v1/health/ready` (200 when every configured model has an available version, else 503
with the versions' states). With metrics, every model API request is counted with its final
status and timed, entrypoint "REST", API the path's verb as TF Serving records it. Async safe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from sealserve.errors import Code, FailedPrecondition, InvalidArgument, SealserveError
from sealserve.serving import api_protos, rest_json
from sealserve.serving.dataplane import DataPlane, ModelSpec, Resolved
from sealserve.serving.manager import ServableHandle
from sealserve.serving.metrics import CONTENT_TYPE, Metrics
from sealserve.serving.request_budget import OverBudget, RequestBudget, Reservation
from sealserve.serving.signatures import SignatureInfo

log = logging.getLogger(__name__)
T = TypeVar("T")
# Bodies (and outputs) up to this size are decoded (encoded) on the event loop
INLINE_MAX_BYTES = 16 << 10
# what is left of a refused body is read and dropped for this long at most (see `_refuse`);
# then the connection is closed
LINGER_SECONDS = 5.0

_POST = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)"
)
_GET = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(?:/(metadata))?"
)
_INT64_MAX = 2**63 - 1
LIVE_PATH = "/v1/health/live"
READY_PATH = "/v1/health/ready"

# TF Serving's canonical-code → HTTP mapping (reference §1, ToHTTPStatusCode)
HTTP_STATUS = {
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 400,
    Code.OUT_OF_RANGE: 400,
    Code.NOT_FOUND: 404,
    Code.PERMISSION_DENIED: 403,
    Code.UNAUTHENTICATED: 401,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.UNIMPLEMENTED: 501,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
    Code.CANCELLED: 499,
    Code.ALREADY_EXISTS: 409,
    Code.ABORTED: 409,
    Code.UNKNOWN: 500,
    Code.INTERNAL: 500,
    Code.DATA_LOSS: 500,
}


class PayloadTooLarge(SealserveError):
    """A request body over a size cap: HTTP 413, not TF Serving's 429 for RESOURCE_EXHAUSTED
    (a client must not retry it as if the server were busy)."""

    code = Code.RESOURCE_EXHAUSTED


@dataclass(frozen=True)
class RestOptions:
    timeout_seconds: float = 30.0  # --rest_api_timeout_in_ms
    # The cap applies to the body after `Content-Encoding: gzip` is undone: aiohttp inflates
    # as it reads and stops at the cap, so a gzip bomb costs at most this much memory.
    max_body_bytes: int = 100 << 20  # TF Serving's cap on decompressed bodies
    max_json_depth: int = 100
    # A connection must send a request's complete headers within this long of being opened
    # or of its previous response (aiohttp's keep-alive timer, which runs from the start of
    # a connection and is not reset by partial data): idle and slow-header connections,
    # TLS or not, are closed instead of holding a file descriptor for ever.
    idle_timeout_seconds: float = 30.0
    body_timeout_seconds: float = 30.0  # reading one request's body, after its headers


def runner_settings(options: RestOptions) -> dict[str, Any]:
    """Connection settings for aiohttp's `AppRunner`: the idle/header timeout, and no
    lingering read of a body the handler did not read (after a 413 on a gzip body, aiohttp
    would otherwise read and inflate the rest on the event loop for up to 10 s): such a
    connection is closed after its response."""
    return {"keepalive_timeout": options.idle_timeout_seconds, "lingering_time": 0}


def build_app(
    dataplane: DataPlane,
    options: RestOptions = RestOptions(),
    *,
    metrics: Metrics | None = None,
    metrics_path: str | None = None,
    draining: Callable[[], bool] = lambda: False,
    budget: RequestBudget | None = None,
) -> web.Application:
    """The REST app; with `metrics_path`, the Prometheus page of `metrics` is served there.
    `draining()` true (the server is shutting down) makes the readiness probe answer 503.
    Model API requests hold their bytes in `budget` (the server's, shared with gRPC)."""
    api = _RestApi(dataplane, options, metrics, budget or RequestBudget())
    app = web.Application(client_max_size=options.max_body_bytes)
    probes = _Probes(dataplane, draining)
    app.router.add_get(LIVE_PATH, probes.live)
    app.router.add_get(READY_PATH, probes.ready)
    if metrics is not None and metrics_path:
        app.router.add_get(metrics_path, _MetricsPage(metrics).get)
    app.router.add_route("*", "/{tail:.*}", api.handle)  # TF Serving's API, and its errors
    return app


def json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def error_response(error: SealserveError) -> web.Response:
    too_large = isinstance(error, PayloadTooLarge | OverBudget)
    status = 413 if too_large else HTTP_STATUS.get(error.code, 500)
    return json_response(rest_json.format_error(str(error)), status)


class _Probes:
    def __init__(self, dataplane: DataPlane, draining: Callable[[], bool]) -> None:
        self.dataplane = dataplane
        self.draining = draining

    async def live(self, request: web.Request) -> web.Response:
        # Answering at all is the proof: the event loop runs and the port accepts.
        return json_response(b'{"live":true}')

    async def ready(self, request: web.Request) -> web.Response:
        if self.draining():
            return _not_ready({"reason": "shutting down"})
        not_ready = self.dataplane.not_ready()
        if not_ready:  # say why, in GetModelStatus's JSON form
            statuses = {
                name: json.loads(api_protos.to_json(api_protos.model_status_response(name, v)))
                for name, v in not_ready.items()
            }
            return _not_ready({"not_ready": statuses})
        if not self.dataplane.ready():
            return _not_ready({"reason": "no models configured"})
        return json_response(b'{"ready":true}')


def _not_ready(details: dict[str, Any]) -> web.Response:
    return json_response(json.dumps({"ready": False, **details}).encode(), 503)


class _MetricsPage:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def get(self, request: web.Request) -> web.Response:
        # Writing the page takes milliseconds with many series: off the event loop, and off
        # the inference pool, so a scrape works while the server is saturated.
        body = await asyncio.to_thread(self.metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@dataclass
class _Call:
    """What a request turned out to be, filled in by routing, for its metrics."""

    model: str = ""
    api: str | None = None  # None: not a model API request (malformed path), not recorded
    answer: web.StreamResponse | None = None  # once its writing has begun


async def _refuse(request: web.Request, answer: web.Response) -> web.StreamResponse:
    """`answer`, an error, to a request whose body may not have been read: written at once,
    then what is left of the body is read and dropped, so that a client still sending it (as
    most do, before reading anything) gets the answer rather than a reset when the connection
    closes on its unread bytes. For `LINGER_SECONDS` at most, and never a compressed body: the
    rest of it would be inflated on the event loop (that connection is closed after the
    answer, as any whose body is unfinished)."""
    content = request.content
    encoding = request.headers.get("Content-Encoding", "identity").lower()
    if content.is_eof() or encoding != "identity":
        return answer
    try:
        await answer.prepare(request)
        await answer.write_eof()
        async with asyncio.timeout(LINGER_SECONDS):
            while await content.readany():
                pass
    except (TimeoutError, HttpProcessingError, RequestPayloadError, ConnectionError):
        pass  # the client is slow or gone: aiohttp closes the connection
    return answer


class _RestApi:
    def __init__(
        self,
        dataplane: DataPlane,
        options: RestOptions,
        metrics: Metrics | None,
        budget: RequestBudget,
    ) -> None:
        self.dataplane = dataplane
        self.options = options
        self.metrics = metrics
        self.budget = budget

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        call = _Call()
        status = Code.CANCELLED.name  # if aiohttp cancels us: the client went away
        try:
            async with asyncio.timeout(self.options.timeout_seconds):  # cheaper than wait_for
                response = await self._route(request, call)
            status = "OK"
            return response
        except SealserveError as exc:
            status = exc.code.name
            return await _refuse(request, error_response(exc))
        except TimeoutError:
            status = Code.DEADLINE_EXCEEDED.name
            if call.answer is not None:  # its client stopped reading it: drop it, and them
                if request.transport is not None:
                    request.transport.abort()
                return call.answer
            return error_response(SealserveError("Request timed out", code=Code.DEADLINE_EXCEEDED))
        except ConnectionResetError:  # the client went away (status: CANCELLED)
            if call.answer is not None:
                return call.answer
            return error_response(SealserveError("connection reset", code=Code.CANCELLED))
        except Exception:  # never a traceback to the caller
            status = Code.INTERNAL.name
            log.exception("REST request %s %s failed", request.method, request.path)
            return error_response(SealserveError("internal error", code=Code.INTERNAL))
        finally:
            if self.metrics is not None and call.api is not None:
                self.metrics.record_request(
                    call.model, call.api, "REST", status, time.perf_counter() - started
                )

    async def _route(self, request: web.Request, call: _Call) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        if request.method == "POST" and (match := _POST.fullmatch(path)):
            name, version, label, verb = match.groups()
            # TF Serving's REST `API` label is the path's verb: predict, classify, regress
            call.model, call.api = unquote(name), verb.lower()
            spec = _spec(name, version, label)
            # the body as it arrives, its parsing and its answer: all held in the budget
            with self.budget.reserve(0) as reservation:
                body = await self._read_body(request, reservation)
                if verb.lower() == "predict":
                    answer = await self._predict(spec, body, reservation)
                else:
                    answer = await self._classify_or_regress(spec, body, verb.lower(), reservation)
                # written here, within the request's timeout and while the budget holds it: a
                # client that does not read its answers cannot make the server keep them
                call.answer = json_response(answer)
                await call.answer.prepare(request)
                await call.answer.write_eof()  # returns once the socket has taken all but 64 KiB
                return call.answer
        if request.method == "GET" and (match := _GET.fullmatch(path)):
            name, version, label, metadata = match.groups()
            # TF Serving leaves `API` empty for these; ours name them
            call.model = unquote(name) if name else ""
            call.api = "get_model_metadata" if metadata else "get_model_status"
            if not name:
                raise InvalidArgument("Missing model name in request.")
            spec = _spec(name, version, label)
            if metadata:
                with self.dataplane.handle(spec) as handle:
                    return json_response(api_protos.metadata_json(handle.servable))
            if spec.label is not None:
                raise InvalidArgument("Model status by label is not supported; use a version")
            statuses = self.dataplane.status(spec.name, spec.version)
            return json_response(
                api_protos.to_json(api_protos.model_status_response(spec.name, statuses))
            )
        raise InvalidArgument(f"Malformed request: {request.method} {path}")

    async def _read_body(self, request: web.Request, reservation: Reservation) -> bytes:
        """The request body, gzip inflated by aiohttp as it arrives, within the size cap
        (HTTP 413 beyond); a body that is not valid for its Content-Encoding is the client's
        error (400). Each piece is held in the budget as it arrives (twice: the pieces and
        their join), so bodies sent slowly on many connections cannot together hold more
        than the budget (429 beyond)."""
        limit = self.options.max_body_bytes
        if (request.content_length or 0) > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes")
        content = request.content
        pieces = []
        size = 0
        try:
            async with asyncio.timeout(self.options.body_timeout_seconds):
                while piece := await content.readany():
                    size += len(piece)
                    if size > limit:
                        raise PayloadTooLarge(f"request body exceeds {limit} bytes")
                    reservation.grow(2 * len(piece))
                    pieces.append(piece)
                    if content.is_eof():  # the last piece (no wait for the end)
                        break
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)
        except TimeoutError:
            raise SealserveError(
                "Timed out reading the request body", code=Code.DEADLINE_EXCEEDED
            ) from None
        except (HttpProcessingError, RequestPayloadError, zlib.error) as exc:
            reason = " ".join(str(getattr(exc, "message", None) or exc).split())
            raise InvalidArgument(f"Request body cannot be decoded: {reason}") from None
        except web.HTTPBadRequest as exc:
            raise InvalidArgument(f"Request body cannot be decoded: {exc.text}") from None

    async def _predict(self, spec: ModelSpec, body: bytes, reservation: Reservation) -> bytes:
        with self.dataplane.handle(spec) as handle:  # held until the answer is built
            return await self._predict_on(handle, body, reservation)

    async def _predict_on(
        self, handle: ServableHandle, body: bytes, reservation: Reservation
    ) -> bytes:
        depth = self.options.max_json_depth

        def decode() -> tuple[Resolved, rest_json.PredictRequest]:
            reservation.grow(rest_json.parse_cost(body))  # a linear count: off the loop too
            resolved: list[Resolved] = []

            def lookup(signature_name: str) -> SignatureInfo:
                try:
                    resolved.append(self.dataplane.resolve_signature(handle, signature_name))
                except FailedPrecondition:  # TF Serving's REST message and code
                    raise InvalidArgument(
                        f'Serving signature name: "{signature_name}" not found in signature def'
                    ) from None
                return resolved[0].signature

            request = rest_json.parse_predict_request(
                rest_json.loads(body, max_depth=depth), lookup
            )
            return resolved[0], request

        def encode() -> bytes:
            reservation.grow(rest_json.predict_response_cost(outputs))
            return rest_json.format_predict_response(outputs, request.row_format)

        resolved, request = await _off_loop_if_large(decode, len(body))
        outputs = await self.dataplane.predict(resolved, request.inputs)
        return await _off_loop_if_large(encode, sum(a.nbytes for a in outputs.values()))

    async def _classify_or_regress(
        self, spec: ModelSpec, body: bytes, verb: str, reservation: Reservation
    ) -> bytes:
        with self.dataplane.handle(spec) as handle:  # held until the answer is built
            return await self._classify_or_regress_on(handle, spec, body, verb, reservation)

    async def _classify_or_regress_on(
        self,
        handle: ServableHandle,
        spec: ModelSpec,
        body: bytes,
        verb: str,
        reservation: Reservation,
    ) -> bytes:
        depth = self.options.max_json_depth

        def decode() -> tuple[str, list[bytes]]:
            # the parse, and the serialized tf.Examples made from it (about the body's size)
            reservation.grow(rest_json.parse_cost(body) + len(body))
            return rest_json.examples_from_json(rest_json.loads(body, max_depth=depth))

        signature_name, serialized = await _off_loop_if_large(decode, len(body))
        resolved = self.dataplane.resolve_signature(handle, signature_name)
        if self.metrics is not None:
            self.metrics.record_examples(spec.name, len(serialized))
        if verb == "classify":
            rows = await self.dataplane.classify_async(resolved, serialized)

            def encode_classes() -> bytes:
                reservation.grow(rest_json.classify_response_cost(rows))
                return rest_json.format_classify_response(rows)

            return await _off_loop_if_large(encode_classes, 32 * sum(map(len, rows)))
        values = await self.dataplane.regress_async(resolved, serialized)

        def encode_values() -> bytes:
            reservation.grow(rest_json.regress_response_cost(values))
            return rest_json.format_regress_response(values)

        return await _off_loop_if_large(encode_values, 16 * len(values))


async def _off_loop_if_large(work: Callable[[], T], size: int) -> T:
    """Run JSON decoding or encoding of `size` bytes on the event loop when small (a few KiB
    take tens of µs, less than a trip to a thread), else in a thread: parsing megabytes on
    the loop would stall every other connection, health probes included."""
    if size <= INLINE_MAX_BYTES:
        return work()
    return await asyncio.to_thread(work)


def _spec(name: str, version: str | None, label: str | None) -> ModelSpec:
    number = None
    if version is not None:
        number = int(version)
        if number > _INT64_MAX:
            raise InvalidArgument(f"Failed to convert version: {version} to numeric.")
    return ModelSpec(
        name=unquote(name), version=number, label=unquote(label) if label is not None else None
    )
