"""The KBS's HTTP adapter (aiohttp): Trustee KBS v0.4.0 paths plus sealserve's admin API.

Attestation paths (protocol §3):
- `POST /kbs/v0/auth`                          → Challenge, sets the `kbs-session-id` cookie
- `POST /kbs/v0/attest`  (cookie)              → `{"token": JWT}`
- `GET  /kbs/v0/resource/<repo>/<type>/<tag>`  (cookie, or `Authorization: Bearer <token>`)
                                               → the resource as a flattened JSON JWE

Admin paths (`Authorization: Bearer <admin token>`; anything else is 401):
- `PUT|POST /kbs/v0/resource/<repo>/<type>/<tag>`  body: the raw secret → its info (JSON)
- `DELETE   /kbs/v0/resource/<repo>/<type>/<tag>`
- `GET      /kbs/v0/resources`                     → `[{path, version, size, updated}]`
- `PUT|GET  /kbs/v0/resource-policy/<path or "default">`  (body/answer
  `{"format": "toml"|"json", "policy": "<text>"}`)
- `GET      /kbs/v0/audit?resource=&since=&limit=` → `{records, chain}`

Metrics: `GET /metrics` (Prometheus text) with the admin token, or without one on the
separate `metrics_port` that `start_kbs` can open (bind it to a private interface).

Errors are RFC 7807 problem JSON; codes map once here (UNAUTHENTICATED 401, PERMISSION_DENIED
403, NOT_FOUND 404, INVALID_ARGUMENT 400, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, others 500
with a generic text).

Abuse without credentials costs little (`limits`): every anonymous request (a challenge, an
attest, anything refused with a 4xx) draws on its client's budget, refunded by a successful
attest, and an empty budget answers 429 before the body is read; connections are capped
per client and in total, idle ones (including before the first request) close after
`IDLE_TIMEOUT_SECONDS`, TLS handshakes after `HANDSHAKE_TIMEOUT_SECONDS`, bodies must arrive
within `BODY_TIMEOUT_SECONDS`; no `Content-Encoding` is accepted (415, never inflated);
malformed input — deep or huge JSON, giant integers, non-ASCII tokens, out-of-range query
numbers — is a 4xx; the event loop's own connection errors (failed handshakes, `accept()`
out of file descriptors) are logged as one throttled line, never a traceback per event.

HTTPS by default: `server_ssl_context(cert, key)` (TLS ≥ 1.2, AEAD suites only); plain HTTP
only with the explicit `insecure_http` opt-out (logs a warning). The service's blocking
calls (SQLite, dcap-qvl) run in worker threads so the event loop stays responsive;
async-safe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from sealserve.errors import Code, InvalidArgument, SealserveError
from sealserve.kbs.limits import AnonymousBudget, ConnectionCaps, client_key
from sealserve.kbs.logtext import LogThrottle, shown
from sealserve.kbs.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from sealserve.kbs.protocol import SESSION_COOKIE, problem
from sealserve.kbs.service import KbsService, Unauthenticated

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
#: sealserve's extension: attested servers' TLS certificates (kbs.server_ca)
SERVER_CERTIFICATE_PATH = "/kbs/v0/server-certificate/{name}"
#: admin: the resources Gramine's secret provisioning may release (kbs.secret_prov)
SECRET_PROV_MAP_PATH = "/kbs/v0/secret-prov"
HEALTH_PROBE_PATH = "sealserve/health/probe"  # a resource looked up (not expected to exist)

MAX_BODY_BYTES = 1 << 20
METRICS_PATH = "/metrics"
IDLE_TIMEOUT_SECONDS = 15.0  # also the time allowed for a connection's first request
HANDSHAKE_TIMEOUT_SECONDS = 10.0
BODY_TIMEOUT_SECONDS = 15.0
MAX_CONNECTIONS_PER_CLIENT = 64
MAX_CONNECTIONS = 4096  # lowered to fit the process's file descriptor limit
_FD_RESERVE = 64  # descriptors kept for the store, logs, collateral fetches
MAX_JSON_DEPTH = 32
MAX_INT_DIGITS = 40
MAX_TOKEN_BYTES = 16 * 1024
# Forward-secret AEAD suites only for TLS 1.2 (TLS 1.3's are all AEAD); the same list as the
# serving ports (serving/tls.py), not imported from there: kbs must not depend on serving.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
_STATUS = {
    Code.UNAUTHENTICATED: 401,
    Code.PERMISSION_DENIED: 403,
    Code.NOT_FOUND: 404,
    Code.INVALID_ARGUMENT: 400,
    Code.FAILED_PRECONDITION: 400,
    Code.ALREADY_EXISTS: 409,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.UNAVAILABLE: 503,
}
_KIND = {
    401: "Unauthorized",
    403: "PolicyDeny",
    404: "ResourceNotFound",
    400: "InvalidRequest",
    409: "AlreadyExists",
    429: "TooManyRequests",
    503: "Unavailable",
    500: "InternalError",
}
SERVICE_KEY: web.AppKey[KbsService] = web.AppKey("kbs_service", KbsService)
BUDGET_KEY: web.AppKey[AnonymousBudget] = web.AppKey("kbs_budget", AnonymousBudget)


def server_ssl_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """A server TLS context from PEM files: TLS 1.2 or later, AEAD suites only."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION  # client-initiated renegotiation costs CPU
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert_pem, key_pem)
    except (OSError, ssl.SSLError) as err:
        raise InvalidArgument(f"cannot load the KBS TLS certificate/key: {err}") from None
    return context


def _problem_response(err: SealserveError, status: int | None = None) -> web.Response:
    status = status or _STATUS.get(err.code, 500)
    detail = err.message if status != 500 else "internal error (see the KBS log)"
    if status == 500:
        log.error("KBS internal error: %s", err.message)
    body = problem(_KIND.get(status, "InvalidRequest"), detail, status)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response(
        body, status=status, content_type="application/problem+json", headers=headers
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_ANONYMOUS_PATHS = ("/kbs/v0/auth", "/kbs/v0/attest")
_ATTEST_PATH = "/kbs/v0/attest"


@web.middleware
async def _limits(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The per-client anonymous budget and the no-Content-Encoding rule (module docstring)."""
    budget = request.app[BUDGET_KEY]
    metrics = request.app[SERVICE_KEY].metrics
    client = client_key(request.remote)
    if budget.exhausted(client):
        metrics.rate_limited.labels("anonymous_budget").inc()
        response = _problem_response(
            SealserveError(
                "too many requests without credentials from this client: retry later",
                code=Code.RESOURCE_EXHAUSTED,
            )
        )
        response.headers["Retry-After"] = str(max(1, int(1 / budget.rate) + 1))
        response.force_close()  # do not read (or wait for) the body
        return response
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        budget.charge(client)
        metrics.unauthenticated.labels("content_encoding").inc()
        response = _problem_response(
            SealserveError("no Content-Encoding is accepted", code=Code.INVALID_ARGUMENT), 415
        )
        response.force_close()  # the body is never read, let alone inflated
        return response
    if request.path in _ANONYMOUS_PATHS:
        budget.charge(client)
    answer = await handler(request)
    if answer.status == 200 and request.path == _ATTEST_PATH:
        budget.refund(client, 2.0)  # the attest and its challenge: a TEE costs nothing
    elif 400 <= answer.status < 500 and request.path not in _ANONYMOUS_PATHS:
        budget.charge(client)
    return answer


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SealserveError as err:
        return _problem_response(err)
    except web.HTTPException as exc:
        if exc.status >= 400:  # aiohttp's own refusals (413, 404, 405) as problem JSON
            refusal = SealserveError(
                exc.reason, code=_CODE_OF_STATUS.get(exc.status, Code.INVALID_ARGUMENT)
            )
            return _problem_response(refusal, exc.status)
        raise
    except Exception:  # never a traceback to the peer
        log.exception("KBS request %s failed", request.method)
        return _problem_response(SealserveError("internal error", code=Code.INTERNAL))


_CODE_OF_STATUS = {404: Code.NOT_FOUND, 405: Code.INVALID_ARGUMENT, 413: Code.INVALID_ARGUMENT}


def _bearer(request: web.Request) -> str | None:
    """The bearer token, or None; a token that cannot be one (non-ASCII, control characters,
    oversized) is refused here with a 401 rather than reaching the JOSE library."""
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    if len(token) > MAX_TOKEN_BYTES or not token.isascii() or not token.isprintable():
        raise Unauthenticated("the bearer token is malformed")
    return token


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidArgument(f"an integer in the request has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _refuse_constant(name: str) -> Any:
    raise InvalidArgument(f"{name} is not JSON")


def _check_depth(value: Any) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH (iteratively: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidArgument(f"the request JSON nests deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


def parse_json_body(raw: bytes) -> Any:
    """Parse a request body; every malformed body is InvalidArgument (a 400)."""
    try:
        value = json.loads(raw, parse_int=_bounded_int, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # JSONDecodeError is a ValueError; so is Python's int digit limit.
        raise InvalidArgument("the request body is not valid JSON") from None
    _check_depth(value)
    return value


async def _read_body(request: web.Request) -> bytes:
    try:
        async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
            return await request.read()
    except TimeoutError:
        raise InvalidArgument(
            f"the request body did not arrive within {BODY_TIMEOUT_SECONDS:g} s"
        ) from None


async def _json(request: web.Request) -> Any:
    return parse_json_body(await _read_body(request))


def _service(request: web.Request) -> KbsService:
    return request.app[SERVICE_KEY]


def _path(request: web.Request) -> str:
    info = request.match_info
    return f"{info['repo']}/{info['type']}/{info['tag']}"


async def _auth(request: web.Request) -> web.StreamResponse:
    body = await _json(request)
    session_id, challenge = await asyncio.to_thread(
        _service(request).auth, body, client=client_key(request.remote)
    )
    response = web.json_response(challenge)
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=_service(request).config.session_ttl,
        httponly=True,
        secure=request.secure,
        samesite="Strict",
        path="/kbs",
    )
    return response


async def _attest(request: web.Request) -> web.StreamResponse:
    body = await _json(request)
    sid = request.cookies.get(SESSION_COOKIE)
    result = await asyncio.to_thread(_service(request).attest, sid, body)
    return web.json_response(result)


async def _get_resource(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    sealed = await asyncio.to_thread(
        service.resource,
        _path(request),
        session_id=request.cookies.get(SESSION_COOKIE),
        bearer=_bearer(request),
    )
    # JSON, as Trustee's KBS answers it (`HttpResponse::Ok().json(jwe)`)
    return web.Response(text=sealed, content_type="application/json")


async def _server_certificate(request: web.Request) -> web.StreamResponse:
    """sealserve's extension: an attested session's CSR in, its certificate chain out."""
    service = _service(request)
    body = await _json(request)
    if not isinstance(body, dict) or not isinstance(body.get("csr"), str):
        raise InvalidArgument('the body must be {"csr": "<PEM certificate signing request>"}')
    chain = await asyncio.to_thread(
        service.issue_server_certificate,
        request.match_info["name"],
        body["csr"],
        session_id=request.cookies.get(SESSION_COOKIE),
        bearer=_bearer(request),
    )
    return web.json_response({"certificate_chain": chain})


async def _put_resource(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    service.check_admin(_bearer(request))  # before reading a body from a stranger
    value = await _read_body(request)
    info = await asyncio.to_thread(
        service.admin_put_resource, _bearer(request), _path(request), value
    )
    return web.json_response(info)


async def _delete_resource(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    revoke = request.query.get("revoke", "") == "true"
    await asyncio.to_thread(
        service.admin_delete_resource, _bearer(request), _path(request), revoke=revoke
    )
    return web.Response(status=204)


async def _list_resources(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    return web.json_response(
        await asyncio.to_thread(service.admin_list_resources, _bearer(request))
    )


def _policy_key(request: web.Request) -> str:
    return request.match_info["path"]


async def _set_policy(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    service.check_admin(_bearer(request))
    body = await _json(request)
    if not isinstance(body, dict) or not isinstance(body.get("policy"), str):
        raise InvalidArgument('the body must be {"format": "toml"|"json", "policy": "<text>"}')
    await asyncio.to_thread(
        service.admin_set_policy,
        _bearer(request),
        _policy_key(request),
        body["policy"],
        str(body.get("format", "toml")),
    )
    return web.Response(status=204)


async def _get_policy(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    result = await asyncio.to_thread(
        service.admin_get_policy, _bearer(request), _policy_key(request)
    )
    return web.json_response(result)


async def _set_secret_prov_map(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    service.check_admin(_bearer(request))
    body = await _json(request)
    if not isinstance(body, dict):
        raise InvalidArgument('the body must be {"resources": ["<repository>/<type>/<tag>", ...]}')
    await asyncio.to_thread(
        service.admin_set_secret_prov_map, _bearer(request), body.get("resources")
    )
    return web.Response(status=204)


async def _get_secret_prov_map(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    result = await asyncio.to_thread(service.admin_get_secret_prov_map, _bearer(request))
    return web.json_response(result)


async def _audit(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    query = request.query
    since = _query_int(query.get("since", "0"), "since", 0, 2**62)
    limit = _query_int(query.get("limit", "1000"), "limit", 1, 100_000)
    result = await asyncio.to_thread(
        service.admin_audit,
        _bearer(request),
        resource=query.get("resource") or None,
        since_seq=since,
        limit=limit,
    )
    return web.json_response(result)


def _query_int(text: str, name: str, low: int, high: int) -> int:
    if not text.isascii() or not text.strip().isdigit() or len(text.strip()) > 19:
        raise InvalidArgument(f"{name} must be an integer from {low} to {high}")
    value = int(text)
    if not low <= value <= high:
        raise InvalidArgument(f"{name} must be an integer from {low} to {high}")
    return value


async def _metrics(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    if request.app.get(METRICS_OPEN_KEY) is None:
        service.check_admin(_bearer(request))
    body = await asyncio.to_thread(service.metrics.exposition)
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def _health(request: web.Request) -> web.StreamResponse:
    """Readiness for load balancers and probes, unauthenticated: 200 once the store answers
    a query, 503 while it does not (e.g. PostgreSQL unreachable). It reveals nothing else."""
    service = _service(request)
    try:
        await asyncio.to_thread(service.store.resource_exists, HEALTH_PROBE_PATH)
    except Exception as exc:  # whatever the store's driver raises: not ready
        log.warning("health check: the store does not answer (%s)", type(exc).__name__)
        return web.json_response({"status": "unavailable"}, status=503)
    return web.json_response({"status": "ok"})


def create_app(service: KbsService, *, budget: AnonymousBudget | None = None) -> web.Application:
    """The KBS application (routes above)."""
    app = web.Application(middlewares=[_limits, _errors], client_max_size=MAX_BODY_BYTES)
    app[SERVICE_KEY] = service
    app[BUDGET_KEY] = budget or AnonymousBudget()
    resource = "/kbs/v0/resource/{repo}/{type}/{tag}"
    app.router.add_post("/kbs/v0/auth", _auth)
    app.router.add_post("/kbs/v0/attest", _attest)
    app.router.add_post(SERVER_CERTIFICATE_PATH, _server_certificate)
    app.router.add_get(resource, _get_resource)
    app.router.add_put(resource, _put_resource)
    app.router.add_post(resource, _put_resource)
    app.router.add_delete(resource, _delete_resource)
    app.router.add_get("/kbs/v0/resources", _list_resources)
    app.router.add_put("/kbs/v0/resource-policy/{path:.+}", _set_policy)
    app.router.add_get("/kbs/v0/resource-policy/{path:.+}", _get_policy)
    app.router.add_put(SECRET_PROV_MAP_PATH, _set_secret_prov_map)
    app.router.add_get(SECRET_PROV_MAP_PATH, _get_secret_prov_map)
    app.router.add_get("/kbs/v0/audit", _audit)
    app.router.add_get(HEALTH_PATH, _health)
    app.router.add_get(METRICS_PATH, _metrics)
    return app


METRICS_OPEN_KEY: web.AppKey[bool] = web.AppKey("kbs_metrics_open", bool)


def create_metrics_app(service: KbsService) -> web.Application:
    """`GET /metrics` without a token: for a separate port on a private interface."""
    app = web.Application(middlewares=[_errors])
    app[SERVICE_KEY] = service
    app[METRICS_OPEN_KEY] = True
    app.router.add_get(METRICS_PATH, _metrics)
    return app


class _GatedProtocol(asyncio.Protocol):
    """One accepted TCP connection: admitted under `ConnectionCaps` before anything else
    (before the TLS handshake, so half-open handshakes count too), then upgraded to TLS
    within `HANDSHAKE_TIMEOUT_SECONDS`, then handed to aiohttp's protocol (`inner`)."""

    def __init__(self, inner: asyncio.Protocol, site: _GatedSite) -> None:
        self._inner = inner
        self._site = site
        self._client: str | None = None  # set while the connection holds a cap slot
        self._attached = False
        # Decrypted bytes that arrive between the handshake's end and start_tls() returning.
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        client = client_key(peer[0] if isinstance(peer, tuple) else None)
        assert isinstance(transport, asyncio.Transport)
        if not self._site.caps.admit(client):
            self._site.refused(client)
            transport.abort()
            return
        self._client = client
        context = self._site.tls_context
        if context is None:
            self._attach(transport)
            return
        transport.pause_reading()  # no byte of the handshake may reach us before start_tls
        task = asyncio.ensure_future(self._start_tls(transport, context))
        self._site.handshakes.add(task)
        task.add_done_callback(self._site.handshakes.discard)

    async def _start_tls(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT_SECONDS,
            )
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError, asyncio.CancelledError):
            transport.abort()
            self._release()
            return
        if tls is None:  # the peer went away during the handshake
            self._release()
            return
        self._attach(tls)

    def _attach(self, transport: asyncio.BaseTransport) -> None:
        self._attached = True
        self._inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self._inner.data_received(data)

    def _release(self) -> None:
        if self._client is not None:
            self._site.caps.release(self._client)
            self._client = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if self._attached:
            self._attached = False
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._attached:
            self._inner.data_received(data)
        elif self._client is not None and sum(map(len, self._early)) < MAX_BODY_BYTES:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._attached else None

    def pause_writing(self) -> None:
        if self._attached:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._attached:
            self._inner.resume_writing()


class _GatedSite(web.TCPSite):
    """A TCP site whose connections pass `ConnectionCaps` and then TLS (see above)."""

    def __init__(
        self, runner: web.AppRunner, host: str, port: int, tls_context: ssl.SSLContext | None
    ) -> None:
        super().__init__(runner, host, port)
        self.tls_context = tls_context
        total = connection_cap()
        # One client never holds more than an eighth of all slots.
        per_client = max(1, min(MAX_CONNECTIONS_PER_CLIENT, total // 8))
        self.caps = ConnectionCaps(per_client=per_client, total=total)
        self.handshakes: set[asyncio.Future[None]] = set()
        self._service: KbsService = runner.app[SERVICE_KEY]
        self._log_throttle = LogThrottle(per_second=1)

    def refused(self, client: str) -> None:
        self._service.metrics.rate_limited.labels("connections").inc()
        if self._log_throttle.allow():
            log.warning(
                "refusing connections over the cap (%d per client, %d in all; %d open)",
                self.caps.per_client,
                self.caps.total,
                self.caps.open_connections,
            )

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        self._server = await loop.create_server(
            lambda: _GatedProtocol(server(), self), self._host, self._port, backlog=self._backlog
        )

    async def stop(self) -> None:
        for task in list(self.handshakes):
            task.cancel()
        await super().stop()


def connection_cap() -> int:
    """MAX_CONNECTIONS, lowered to what the file descriptor limit leaves (after raising the
    soft limit to the hard one), so that accept() never runs out of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 65_536)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(4, min(MAX_CONNECTIONS, soft - min(_FD_RESERVE, soft // 4)))


class _OneLineBadRequests(logging.Filter):
    """aiohttp logs every unparsable request (bad header bytes, oversized lines) with a
    traceback: keep one throttled line without it, so junk from the network cannot flood the
    log. Attached to the `aiohttp.server` logger by `start_kbs`."""

    def __init__(self) -> None:
        super().__init__()
        self._throttle = LogThrottle(per_second=1)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is None:
            return True
        if not self._throttle.allow():
            return False
        exc = record.exc_info[1]
        record.msg = "KBS refused a malformed request: %s"
        record.args = (
            shown(
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, 200
            ),
        )
        record.exc_info = None
        record.exc_text = None
        return True


_BAD_REQUEST_FILTER = _OneLineBadRequests()
_QUIET_ERRORS = (ssl.SSLError, ConnectionError, TimeoutError, OSError)
_loop_log_throttle = LogThrottle(per_second=1)


def _quiet_exception_handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's connection-level errors (failed handshakes, accept() out of file
    descriptors, resets) as one throttled line without a traceback; anything else as usual."""
    exc = context.get("exception")
    if isinstance(exc, _QUIET_ERRORS):
        if _loop_log_throttle.allow():
            log.warning(
                "KBS connection error: %s: %s",
                type(exc).__name__,
                str(exc).splitlines()[0][:200] if str(exc) else "",
            )
        return
    loop.default_exception_handler(context)


async def start_kbs(
    service: KbsService,
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    insecure_http: bool = False,
    budget: AnonymousBudget | None = None,
) -> web.AppRunner:
    """Start serving; returns the runner (call `await runner.cleanup()` to stop).
    `ssl_context=None` is allowed only with `insecure_http=True`."""
    if ssl_context is None and not insecure_http:
        raise InvalidArgument("the KBS serves HTTPS: give a certificate and key, or insecure_http")
    if ssl_context is None:
        log.warning(
            "KBS serving plain HTTP (insecure_http): sessions, tokens and the admin token "
            "travel unencrypted. INSECURE: tests/demos only"
        )
    asyncio.get_running_loop().set_exception_handler(_quiet_exception_handler)
    server_log = logging.getLogger("aiohttp.server")
    if _BAD_REQUEST_FILTER not in server_log.filters:
        server_log.addFilter(_BAD_REQUEST_FILTER)
    runner = web.AppRunner(
        create_app(service, budget=budget),
        access_log=None,
        keepalive_timeout=IDLE_TIMEOUT_SECONDS,
        lingering_time=0,  # never keep reading a refused body
        auto_decompress=False,  # Content-Encoding is refused, never inflated
        max_line_size=8190,
        max_field_size=8190,
    )
    await runner.setup()
    site = _GatedSite(runner, host, port, ssl_context)
    await site.start()
    return runner


async def start_metrics(service: KbsService, *, host: str, port: int) -> web.AppRunner:
    """Serve `GET /metrics` (plain HTTP, no token) on its own port."""
    runner = web.AppRunner(
        create_metrics_app(service), access_log=None, keepalive_timeout=IDLE_TIMEOUT_SECONDS
    )
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port the first site listens on (for port 0)."""
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    raise SealserveError("the KBS is not listening", code=Code.FAILED_PRECONDITION)
