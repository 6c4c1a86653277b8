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

Errors are RFC 7807 problem JSON; codes map once here (UNAUTHENTICATED 401, PERMISSION_DENIED
403, NOT_FOUND 404, INVALID_ARGUMENT 400, UNAVAILABLE 503, others 500 with a generic text).

HTTPS by default: `server_ssl_context(cert, key)` (TLS ≥ 1.2); plain HTTP only with the
explicit `insecure_http` opt-out (logs a warning). The service's blocking calls (SQLite,
dcap-qvl) run in worker threads so the event loop stays responsive; async-safe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from sealserve.errors import Code, InvalidArgument, SealserveError
from sealserve.kbs.protocol import SESSION_COOKIE, problem
from sealserve.kbs.service import KbsService

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
#: admin: the resources Gramine's secret provisioning may release (kbs.secret_prov)
SECRET_PROV_MAP_PATH = "/kbs/v0/secret-prov"
HEALTH_PROBE_PATH = "sealserve/health/probe"  # a resource looked up (not expected to exist)

MAX_BODY_BYTES = 1 << 20
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


def server_ssl_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """A server TLS context from PEM files (TLS 1.2 or later)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_pem, key_pem)
    except (OSError, ssl.SSLError) as err:
        raise InvalidArgument(f"cannot load the KBS TLS certificate/key: {err}") from None
    return context


def _problem_response(err: SealserveError) -> web.Response:
    status = _STATUS.get(err.code, 500)
    detail = err.message if status != 500 else "internal error (see the KBS log)"
    if status == 500:
        log.error("KBS internal error: %s", err.message)
    body = problem(_KIND[status], detail, status)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response(
        body, status=status, content_type="application/problem+json", headers=headers
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except SealserveError as err:
        return _problem_response(err)
    except web.HTTPException:
        raise
    except Exception:  # never a traceback to the peer
        log.exception("KBS request %s %s failed", request.method, request.path)
        return _problem_response(SealserveError("internal error", code=Code.INTERNAL))


def _bearer(request: web.Request) -> str | None:
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def _json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidArgument("the request body is not valid JSON") from None


def _service(request: web.Request) -> KbsService:
    return request.app[SERVICE_KEY]


def _path(request: web.Request) -> str:
    info = request.match_info
    return f"{info['repo']}/{info['type']}/{info['tag']}"


async def _auth(request: web.Request) -> web.StreamResponse:
    body = await _json(request)
    session_id, challenge = await asyncio.to_thread(_service(request).auth, body)
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


async def _put_resource(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    service.check_admin(_bearer(request))  # before reading a body from a stranger
    value = await request.read()
    info = await asyncio.to_thread(
        service.admin_put_resource, _bearer(request), _path(request), value
    )
    return web.json_response(info)


async def _delete_resource(request: web.Request) -> web.StreamResponse:
    service = _service(request)
    await asyncio.to_thread(service.admin_delete_resource, _bearer(request), _path(request))
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
    try:
        since = int(query.get("since", "0"))
        limit = int(query.get("limit", "1000"))
    except ValueError:
        raise InvalidArgument("since and limit must be integers") from None
    result = await asyncio.to_thread(
        service.admin_audit,
        _bearer(request),
        resource=query.get("resource") or None,
        since_seq=since,
        limit=limit,
    )
    return web.json_response(result)


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


def create_app(service: KbsService) -> web.Application:
    """The KBS application (routes above)."""
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY_BYTES)
    app[SERVICE_KEY] = service
    resource = "/kbs/v0/resource/{repo}/{type}/{tag}"
    app.router.add_post("/kbs/v0/auth", _auth)
    app.router.add_post("/kbs/v0/attest", _attest)
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
    return app


async def start_kbs(
    service: KbsService,
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    insecure_http: bool = False,
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
    runner = web.AppRunner(create_app(service), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port the first site listens on (for port 0)."""
    for site in runner.sites:
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    raise SealserveError("the KBS is not listening", code=Code.FAILED_PRECONDITION)
