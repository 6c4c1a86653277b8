"""TF Serving's REST API over aiohttp: routes, JSON in and out, errors, request limits.

Thin: match the route, read the body within limits, hand the work to the data plane, map a
`SealserveError` to TF Serving's status code and `{"error": ...}` body. Routes and messages
follow `model_servers/http_rest_api_util.cc` and `http_rest_api_handler.cc`. Beyond TF
Serving: caps on the body size, the gzip-decompressed size and JSON nesting (TF Serving has
crashed on deeply nested JSON and gzip bombs), and TLS (see `tls.py`). Async safe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from sealserve.errors import Code, InvalidArgument, SealserveError
from sealserve.serving import api_protos, inference, json_codec
from sealserve.serving.dataplane import DataPlane, ModelSpec

log = logging.getLogger(__name__)

_POST = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)"
)
_GET = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(?:/(metadata))?"
)
_INT64_MAX = 2**63 - 1

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


def build_app(dataplane: DataPlane, options: RestOptions = RestOptions()) -> web.Application:
    api = _RestApi(dataplane, options)
    app = web.Application(client_max_size=options.max_body_bytes)
    app.router.add_route("*", "/{tail:.*}", api.handle)
    return app


def json_response(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


def error_response(error: SealserveError) -> web.Response:
    status = 413 if isinstance(error, PayloadTooLarge) else HTTP_STATUS.get(error.code, 500)
    return json_response(json.dumps({"error": str(error)}).encode(), status)


class _RestApi:
    def __init__(self, dataplane: DataPlane, options: RestOptions) -> None:
        self.dataplane = dataplane
        self.options = options

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await asyncio.wait_for(self._route(request), self.options.timeout_seconds)
        except SealserveError as exc:
            return error_response(exc)
        except TimeoutError:
            return error_response(SealserveError("Request timed out", code=Code.DEADLINE_EXCEEDED))
        except web.HTTPRequestEntityTooLarge:
            return error_response(
                PayloadTooLarge(f"request body exceeds {self.options.max_body_bytes} bytes")
            )
        except Exception:  # never a traceback to the caller
            log.exception("REST request %s %s failed", request.method, request.path)
            return error_response(SealserveError("internal error", code=Code.INTERNAL))

    async def _route(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        if request.method == "POST" and (match := _POST.fullmatch(path)):
            name, version, label, verb = match.groups()
            spec = _spec(name, version, label)
            body = await request.read()  # gzip is inflated by aiohttp, within the cap
            if verb.lower() == "predict":
                return json_response(await self._predict(spec, body))
            return json_response(await self._classify_or_regress(spec, body, verb.lower()))
        if request.method == "GET" and (match := _GET.fullmatch(path)):
            name, version, label, metadata = match.groups()
            if not name:
                raise InvalidArgument("Missing model name in request.")
            spec = _spec(name, version, label)
            if metadata:
                servable = self.dataplane.servable(spec)
                return json_response(api_protos.metadata_json(servable))
            if spec.label is not None:
                raise InvalidArgument("Model status by label is not supported; use a version")
            statuses = self.dataplane.status(spec.name, spec.version)
            return json_response(
                api_protos.to_json(api_protos.model_status_response(spec.name, statuses))
            )
        raise InvalidArgument(f"Malformed request: {request.method} {path}")

    async def _predict(self, spec: ModelSpec, body: bytes) -> bytes:
        servable = self.dataplane.servable(spec)
        depth = self.options.max_json_depth

        def lookup(signature_name: str):  # noqa: ANN202 - SignatureInfo
            key = signature_name or "serving_default"
            if key not in servable.signatures:
                raise InvalidArgument(f'Serving signature name: "{key}" not found in signature def')
            return servable.signatures[key]

        def work() -> bytes:
            request = json_codec.parse_predict_request(
                json_codec.loads(body, max_depth=depth), lookup
            )
            outputs = servable.run(request.signature_name or "serving_default", request.inputs)
            return json_codec.format_predict_response(outputs, request.row_format)

        return await self.dataplane.call(work)

    async def _classify_or_regress(self, spec: ModelSpec, body: bytes, verb: str) -> bytes:
        document = json_codec.loads(body, max_depth=self.options.max_json_depth)
        signature_name, serialized = inference.examples_from_json(document)
        resolved = self.dataplane.resolve(replace(spec, signature_name=signature_name))

        def work() -> bytes:
            if verb == "classify":
                results: list[Any] = [
                    [[label, score] for label, score in row]
                    for row in self.dataplane.classify(resolved, serialized)
                ]
            else:
                results = self.dataplane.regress(resolved, serialized)
            return json.dumps({"results": results}).encode()

        return await self.dataplane.call(work)


def _spec(name: str, version: str | None, label: str | None) -> ModelSpec:
    number = None
    if version is not None:
        number = int(version)
        if number > _INT64_MAX:
            raise InvalidArgument(f"Failed to convert version: {version} to numeric.")
    return ModelSpec(
        name=unquote(name), version=number, label=unquote(label) if label is not None else None
    )
