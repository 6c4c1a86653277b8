"""The KBS client a server in a TEE uses: attest, then fetch a model key (`KbsKeyProvider`).

For each key, `KbsKeyProvider.key_for(name)` runs the Trustee KBS v0.4.0 flow
(`reference/attestation.md` §3) with a fresh ephemeral EC P-256 key:
`POST /kbs/v0/auth` → nonce + `kbs-session-id` cookie; the attester quotes
`report_data_for(nonce, tee-pubkey)`; `POST /kbs/v0/attest` → token;
`GET /kbs/v0/resource/<path>` → a JWE to the ephemeral key, decrypted here. The ephemeral
private key and the key bytes live in memory only and never appear in logs or `repr`.

Failures: 401/403 from the KBS → `KbsDenied` (PERMISSION_DENIED) carrying the KBS's reason;
404 → `NotFound`; connection errors and 5xx → retried with exponential backoff (`sleep`
injectable), then `SealserveError(UNAVAILABLE)`.

Several KBS replicas: a session lives in the memory of the KBS process that answered `auth`.
When a later step of the handshake had to go over a new connection (the KBS died, or closed
the connection, and a load balancer may have picked another replica) and is refused with 401
(unknown session, nonce already used), the handshake starts again from `auth` with a fresh
ephemeral key, after the same backoff, up to `attempts` handshakes. A 401 over the connection
that carried `auth` comes from the KBS that holds the session: final, never retried.

HTTPS only unless the URL says `http://` (the KBS's `--insecure-http` counterpart); the KBS's
certificate is checked against `ca_pem` (a PEM file path), or the system roots if None.

Thread safety: `key_for` keeps no state between calls; safe from several threads.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any

from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from sealserve.attestation import Attester
from sealserve.errors import Code, InvalidArgument, NotFound, PermissionDenied, SealserveError
from sealserve.kbs.protocol import (
    PROTOCOL_VERSION,
    SESSION_COOKIE,
    Attestation,
    Challenge,
    TeePubKey,
    check_resource_path,
    report_data_for,
    tee_pubkey_jwk,
)

log = logging.getLogger(__name__)

DEFAULT_RESOURCE_REPOSITORY = "sealserve"
DEFAULT_RESOURCE_TYPE = "model-key"
#: What the client accepts in the KBS's JWE (protocol §3; EC ephemeral key).
_JWE_ALGS = ["ECDH-ES+A256KW", "A256GCM"]


def default_resource_for_model(name: str) -> str:
    """`sealserve/model-key/<model name>`."""
    return f"{DEFAULT_RESOURCE_REPOSITORY}/{DEFAULT_RESOURCE_TYPE}/{name}"


class KbsDenied(PermissionDenied):
    """The KBS refused attestation or release; `reason` is the KBS's own words."""

    def __init__(self, message: str, *, reason: str = "", status: int = 403) -> None:
        super().__init__(message)
        self.reason = reason or message
        self.status = status


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str]


class _Retryable(Exception):
    pass


class _SessionLost(Exception):
    """A 401 over another connection than `auth`'s: maybe another KBS, start again."""

    def __init__(self, denied: KbsDenied) -> None:
        super().__init__(denied.reason)
        self.denied = denied


class KbsClient:
    """One KBS endpoint: the protocol calls, over stdlib `urllib` with TLS."""

    def __init__(
        self,
        url: str,
        *,
        ca_pem: str | None = None,
        timeout: float = 10.0,
        attempts: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("https", "http") or not parsed.netloc:
            raise InvalidArgument(f"key broker URL {url!r} must be https://host:port")
        if parsed.scheme == "http":
            log.warning("talking to the KBS at %s over plain HTTP: INSECURE", url)
        self.url = url.rstrip("/")
        self._context: ssl.SSLContext | None = None
        if parsed.scheme == "https":
            self._context = ssl.create_default_context(cafile=ca_pem)
            self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._host, self._port = parsed.hostname or "", parsed.port
        self._base_path = parsed.path.rstrip("/")
        self._local = threading.local()  # one keep-alive connection per thread
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"KbsClient({self.url!r})"

    def _once(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> _Answer:
        # A round trip is three requests: one kept-alive connection saves two TLS handshakes
        # on each side. A reused connection the server has since closed is reopened at once.
        for fresh in (False, True):
            connection, reused = self._connection(fresh)
            try:
                connection.request(method, self._base_path + path, body=body, headers=headers)
                response = connection.getresponse()
                answer = _Answer(response.status, response.read(), dict(response.getheaders()))
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._drop_connection()
                if reused and not fresh:
                    continue
                raise _Retryable("the key broker closed the connection") from None
            except (OSError, http.client.HTTPException) as err:
                self._drop_connection()
                if isinstance(err, ssl.SSLCertVerificationError):
                    raise SealserveError(
                        f"the key broker's TLS certificate is not trusted: {err.verify_message}",
                        code=Code.UNAVAILABLE,
                    ) from None
                raise _Retryable(str(err) or type(err).__name__) from None
            if response.will_close:
                self._drop_connection()
            if answer.status >= 500:
                raise _Retryable(f"HTTP {answer.status}: {_detail(answer)}")
            return answer
        raise _Retryable("the key broker closed the connection")

    def _connection(self, fresh: bool) -> tuple[http.client.HTTPConnection, bool]:
        connection = getattr(self._local, "connection", None)
        if connection is not None and not fresh:
            return connection, True
        if self._context is not None:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._context
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        self._local.connection = connection
        self._local.opened = self._connections_opened() + 1
        return connection, False

    def _connections_opened(self) -> int:
        """How many connections this thread has opened: a change between two requests means
        the second may have reached another KBS process than the first."""
        return int(getattr(self._local, "opened", 0))

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
        self._local.connection = None

    def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> _Answer:
        """One request, retried on connection errors and 5xx with exponential backoff."""
        hdrs = dict(headers or {})
        body = data
        if json_body is not None:
            body = json.dumps(json_body).encode()
            hdrs["Content-Type"] = "application/json"
        delay = self.backoff
        last = ""
        for attempt in range(1, self.attempts + 1):
            try:
                return self._once(method, path, body, hdrs)
            except _Retryable as err:
                last = str(err)
                if attempt == self.attempts:
                    break
                log.warning(
                    "key broker %s unreachable (%s); retry %d/%d in %.1f s",
                    self.url,
                    last,
                    attempt,
                    self.attempts - 1,
                    delay,
                )
                self._sleep(delay)
                delay = min(delay * 2, self.max_backoff)
        raise SealserveError(
            f"key broker {self.url} unavailable after {self.attempts} attempts: {last}",
            code=Code.UNAVAILABLE,
        )

    def fetch_resource(self, attester: Attester, resource: str) -> bytes:
        """The full flow for one resource; returns its plaintext."""
        resource = check_resource_path(resource)
        delay = self.backoff
        for handshake in range(1, self.attempts + 1):
            try:
                return self._handshake(attester, resource)
            except _SessionLost as lost:
                if handshake == self.attempts:
                    raise lost.denied from None
                log.warning(
                    "key broker %s no longer knows the session (%s); new handshake %d/%d in %.1f s",
                    self.url,
                    lost.denied.reason,
                    handshake,
                    self.attempts - 1,
                    delay,
                )
                self._sleep(delay)
                delay = min(delay * 2, self.max_backoff)
        raise AssertionError("unreachable")  # pragma: no cover

    def _handshake(self, attester: Attester, resource: str) -> bytes:
        """auth → attest → resource with a fresh ephemeral key."""
        key = ECKey.generate_key("P-256")
        jwk = tee_pubkey_jwk(key)
        answer = self.call(
            "POST",
            "/kbs/v0/auth",
            json_body={"version": PROTOCOL_VERSION, "tee": attester.tee, "extra-params": ""},
        )
        _raise_for(answer, "auth", resource)
        session_connection = self._connections_opened()
        cookie = _session_cookie(answer)
        challenge = Challenge.parse(answer.body)
        evidence = attester.evidence(report_data_for(challenge.nonce, jwk))
        attestation = Attestation(
            nonce=challenge.nonce, tee_pubkey=TeePubKey.from_jwk(jwk), quote=evidence.quote
        )
        cookie_header = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
        answer = self.call(
            "POST", "/kbs/v0/attest", json_body=attestation.to_json(), headers=cookie_header
        )
        self._raise_in_session(answer, "attestation", resource, session_connection)
        answer = self.call("GET", f"/kbs/v0/resource/{resource}", headers=cookie_header)
        self._raise_in_session(answer, "release", resource, session_connection)
        try:
            return bytes(
                jwe.decrypt_compact(answer.body, key, algorithms=_JWE_ALGS).plaintext or b""
            )
        except (JoseError, ValueError) as err:
            log.error("the KBS's JWE for %s does not decrypt: %s", resource, err)
            raise SealserveError(
                f"the key broker's answer for {resource} cannot be decrypted",
                code=Code.DATA_LOSS,
            ) from None

    def _raise_in_session(
        self, answer: _Answer, step: str, resource: str, session_connection: int
    ) -> None:
        try:
            _raise_for(answer, step, resource)
        except KbsDenied as denied:
            if denied.status == 401 and self._connections_opened() != session_connection:
                raise _SessionLost(denied) from None
            raise


def _detail(answer: _Answer) -> str:
    try:
        data = json.loads(answer.body)
        if isinstance(data, dict) and isinstance(data.get("detail"), str):
            return str(data["detail"])
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    return answer.body[:200].decode("utf-8", "replace") or f"HTTP {answer.status}"


def _raise_for(answer: _Answer, step: str, resource: str) -> None:
    if 200 <= answer.status < 300:
        return
    reason = _detail(answer)
    if answer.status in (401, 403):
        raise KbsDenied(
            f"key broker denied {step} for {resource}: {reason}",
            reason=reason,
            status=answer.status,
        )
    if answer.status == 404:
        raise NotFound(f"key broker has no resource {resource}: {reason}")
    raise SealserveError(
        f"key broker refused {step} for {resource} (HTTP {answer.status}): {reason}",
        code=Code.INVALID_ARGUMENT if answer.status == 400 else Code.UNKNOWN,
    )


def _session_cookie(answer: _Answer) -> str:
    for name, value in answer.headers.items():
        if name.lower() == "set-cookie":
            cookie: SimpleCookie = SimpleCookie()
            cookie.load(value)
            if SESSION_COOKIE in cookie:
                return cookie[SESSION_COOKIE].value
    raise SealserveError("the key broker set no kbs-session-id cookie", code=Code.UNKNOWN)


class KbsKeyProvider:
    """`serving.keys.KeyProvider` backed by a KBS: attests and fetches each model's key."""

    def __init__(
        self,
        url: str,
        ca_pem: str | None,
        attester: Attester,
        resource_for_model: Callable[[str], str] = default_resource_for_model,
        *,
        attempts: int = 5,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        timeout: float = 10.0,
    ) -> None:
        self.client = KbsClient(
            url, ca_pem=ca_pem, attempts=attempts, backoff=backoff, sleep=sleep, timeout=timeout
        )
        self.attester = attester
        self.resource_for_model = resource_for_model

    def key_for(self, name: str) -> bytes:
        # A refusal is reported once, by whoever asked: the model manager's load-failure
        # line, or `serve`'s start-up error for a protected ssl config.
        return self.client.fetch_resource(self.attester, self.resource_for_model(name))

    def __repr__(self) -> str:
        return f"KbsKeyProvider({self.client.url!r}, tee={self.attester.tee!r})"
