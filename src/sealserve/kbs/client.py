"""The KBS client a server in a TEE uses: attest once, then fetch every key it needs.

`AttestedSession` runs the Trustee KBS v0.4.0 flow (`reference/attestation.md` §3) once per
session: `POST /kbs/v0/auth` → nonce + `kbs-session-id` cookie; a fresh ephemeral EC P-256
key; the attester quotes `report_data_for(nonce, tee-pubkey)`; `POST /kbs/v0/attest` with
Trustee's composite evidence → token. Every `GET /kbs/v0/resource/<path>` then carries the
cookie and the token, and the answer (a flattened JSON JWE, or the compact JWE of older
sealserve KBSs) is decrypted with the ephemeral key. A new attestation happens only when the
token's lifetime runs out or the KBS answers a resource request with 401. A server whose TLS
key the KBS certifies binds that key in its attestations too (`AttestedSession.bind_tls_key`,
`runtime-data` `tls-spki-sha256`). `KbsKeyProvider` is the server's key provider over one such
session. The ephemeral private key and the secrets live in memory only and never appear in
logs or `repr`.

Failures: 401/403 from the KBS → `KbsDenied` (PERMISSION_DENIED) carrying the KBS's words;
404 → `NotFound`; connection errors, 5xx and 429 (the KBS is rate-limiting) → retried with
exponential backoff (`Retry-After` honoured up to `max_backoff`; `sleep` injectable), then
`SealserveError(UNAVAILABLE)`.

Several KBS replicas: a session lives in the memory of the KBS process that answered `auth`.
When the attest step had to go over a new connection (the KBS died, or closed the
connection, and a load balancer may have picked another replica) and is refused with 401
(unknown session), the handshake starts again from `auth` with a fresh ephemeral key, after
the same backoff, up to `attempts` handshakes. A 401 to attest over the connection that
carried `auth` comes from the KBS that holds the session: final, never retried.

HTTPS only unless the URL says `http://` (the KBS's `--insecure-http` counterpart); the KBS's
certificate is checked against `ca_pem` (a PEM file path), or the system roots if None.

Thread safety: `KbsClient` keeps one connection per thread; `AttestedSession` is thread-safe.
"""

from __future__ import annotations

import dataclasses
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
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from joserfc.jwk import ECKey, RSAKey

from sealserve.attestation import Attester
from sealserve.errors import Code, InvalidArgument, NotFound, PermissionDenied, SealserveError
from sealserve.kbs.jwe import LEASE_HEADER, b64url_decode, open_resource_with_header
from sealserve.kbs.protocol import (
    PROTOCOL_VERSION,
    SESSION_COOKIE,
    Attestation,
    Challenge,
    TeePubKey,
    check_resource_path,
    report_data_for,
    spki_sha256,
    tee_pubkey_jwk,
)

log = logging.getLogger(__name__)

DEFAULT_RESOURCE_REPOSITORY = "sealserve"
DEFAULT_RESOURCE_TYPE = "model-key"


def default_resource_for_model(name: str) -> str:
    """`sealserve/model-key/<model name>`."""
    return f"{DEFAULT_RESOURCE_REPOSITORY}/{DEFAULT_RESOURCE_TYPE}/{name}"


class KbsDenied(PermissionDenied):
    """The KBS refused attestation or release; `reason` is the KBS's own words, `step` what
    it refused ("attest", "release", ...)."""

    def __init__(
        self, message: str, *, reason: str = "", status: int = 403, step: str = ""
    ) -> None:
        super().__init__(message)
        self.reason = reason or message
        self.status = status
        self.step = step


@dataclass(frozen=True)
class Lease:
    """How long a released key is lent (the KBS's authenticated JWE header member)."""

    seconds: int
    keep_when_unreachable: bool = False

    @classmethod
    def from_header(cls, value: Any) -> Lease | None:
        if value is None:
            return None
        return cls(int(value["seconds"]), bool(value.get("keep_when_unreachable", False)))


@dataclass(frozen=True)
class HeldLease:
    """A lease as this server holds it (monotonic times)."""

    expires_at: float
    renew_at: float
    keep_when_unreachable: bool


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str]


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(answer: _Answer) -> float | None:
    """`Retry-After` in seconds (RFC 9110 §10.2.3; the HTTP-date form is not used by KBSs)."""
    for name, value in answer.headers.items():
        if name.lower() == "retry-after":
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


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
            if answer.status == 429:  # rate-limited (e.g. during a flood): wait, then again
                raise _Retryable(f"HTTP 429: {_detail(answer)}", _retry_after(answer))
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
        """One request, retried on connection errors, 5xx and 429 with exponential backoff."""
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
                wait = delay
                if err.retry_after is not None:
                    wait = min(max(delay, err.retry_after), self.max_backoff)
                log.warning(
                    "key broker %s unavailable (%s); retry %d/%d in %.1f s",
                    self.url,
                    last,
                    attempt,
                    self.attempts - 1,
                    wait,
                )
                self._sleep(wait)
                delay = min(delay * 2, self.max_backoff)
        raise SealserveError(
            f"key broker {self.url} unavailable after {self.attempts} attempts: {last}",
            code=Code.UNAVAILABLE,
        )

    def fetch_resource(self, attester: Attester, resource: str) -> bytes:
        """One resource with an attestation of its own (`kbs get-resource`, debugging)."""
        return AttestedSession(self, attester).get_resource(resource)


@dataclass
class _Attested:
    """What one successful attestation left: the ephemeral key (private, memory only), the
    session cookie, the token, and when to stop using them (monotonic clock)."""

    key: ECKey | RSAKey = field(repr=False)
    cookie: str = field(repr=False)
    token: str = field(repr=False)
    expires_at: float
    lifetime: float
    #: the TLS key this attestation bound (hex SHA-256 of its SPKI), None: none
    tls_spki_sha256: str | None = None

    def headers(self) -> dict[str, str]:
        # Both credentials, as Trustee's KBS reads them: the attested session named by the
        # cookie first, else the token. The token alone is enough for any KBS that shares the
        # signing key (a replica, or this KBS after a restart).
        return {
            "Cookie": f"{SESSION_COOKIE}={self.cookie}",
            "Authorization": f"Bearer {self.token}",
        }


def token_lifetime(token: str, default: float = 60.0) -> float:
    """Seconds a KBS token is valid, from its own `exp - iat` (read, not verified: the client
    only schedules with it; the KBS verifies). Local time plus this lifetime is immune to
    clock skew between the TEE and the KBS."""
    try:
        payload = json.loads(b64url_decode(token.split(".")[1], "token payload"))
        exp, iat = payload["exp"], payload.get("iat")
        if isinstance(exp, int | float) and isinstance(iat, int | float) and exp > iat:
            return float(exp - iat)
    except (IndexError, KeyError, TypeError, ValueError, SealserveError):
        pass
    return default


class AttestedSession:
    """One attestation with a KBS, reused for every resource until it runs out.

    `get_resource(path)` attests first if there is no session yet or it is within
    `refresh_margin` of its end, then asks for the resource with the session's cookie and
    token. A 401 on a resource means the KBS no longer accepts them (expired, or the KBS that
    held the session restarted or failed over and does not share the signing key): the
    session is dropped and the request repeated once after a new attestation. So N resources
    cost one attestation, not N (issue #13 §5).

    Built to carry more over the same session (issue #16): `key_factory` chooses the TEE key
    the resources are encrypted to, `init_data` travels with the attestation, and a lease
    renewal is another `get_resource` (re-attesting only when needed). `bind_tls_key` makes
    every later attestation bind a TLS key too (`runtime-data` `tls-spki-sha256`), the only
    key the KBS certifies for this server (`server_certificate`): bind it before the first
    request and one attestation serves the keys and the certificate. `attestations` counts
    successful attestations (tests, benchmarks).

    Thread-safe: one attestation at a time (callers that need one wait for it); resource
    requests run in parallel.
    """

    def __init__(
        self,
        client: KbsClient,
        attester: Attester,
        *,
        key_factory: Callable[[], ECKey | RSAKey] = lambda: ECKey.generate_key("P-256"),
        init_data: Any = None,
        refresh_margin: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.attester = attester
        self._key_factory = key_factory
        self._init_data = init_data
        self._refresh_margin = refresh_margin
        self._clock = clock
        self._lock = threading.Lock()
        self._state: _Attested | None = None
        self._tls_spki: str | None = None
        self.attestations = 0

    def __repr__(self) -> str:
        return f"AttestedSession({self.client.url!r}, tee={self.attester.tee!r})"

    def get_resource(self, resource: str) -> bytes:
        """The plaintext of `resource` (`<repository>/<type>/<tag>`)."""
        return self.get_leased_resource(resource)[0]

    def get_leased_resource(self, resource: str) -> tuple[bytes, Lease | None]:
        """The plaintext of `resource` and its lease (None: released for good)."""
        resource = check_resource_path(resource)
        for attempt in (1, 2):
            state = self._current(resource)
            answer = self.client.call(
                "GET", f"/kbs/v0/resource/{resource}", headers=state.headers()
            )
            if answer.status == 401 and attempt == 1:
                log.info(
                    "key broker %s no longer accepts this attestation (%s); attesting again",
                    self.client.url,
                    _detail(answer),
                )
                self.invalidate(state)
                continue
            _raise_for(answer, "release", resource)
            try:
                secret, header = open_resource_with_header(answer.body, state.key)
                return secret, Lease.from_header(header.get(LEASE_HEADER))
            except ValueError as err:
                log.error("the KBS's JWE for %s does not decrypt: %s", resource, err)
                raise SealserveError(
                    f"the key broker's answer for {resource} cannot be decrypted",
                    code=Code.DATA_LOSS,
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def bind_tls_key(self, public_key: PublicKeyTypes) -> None:
        """Bind this TLS public key in every attestation from now on (the current one, if it
        bound another key, is replaced when a certificate is next requested)."""
        spki = spki_sha256(public_key)
        with self._lock:
            self._tls_spki = spki

    def server_certificate(self, name: str, csr_pem: str) -> str:
        """The PEM chain the KBS issues for this CSR over the attested session (sealserve's
        extension: `POST /kbs/v0/server-certificate/<name>`, `kbs.server_ca`). The KBS
        certifies only the TLS key the attestation bound: the CSR's key is bound first
        (`bind_tls_key`), and an attestation that bound another key, or none, is replaced."""
        resource = f"sealserve/tls-cert/{name}"
        try:
            public_key = x509.load_pem_x509_csr(csr_pem.encode()).public_key()
        except ValueError:
            raise InvalidArgument("not a PEM certificate signing request") from None
        self.bind_tls_key(public_key)
        wanted = spki_sha256(public_key)
        for attempt in (1, 2):
            state = self._current(resource)
            if state.tls_spki_sha256 != wanted:
                self.invalidate(state)
                state = self._current(resource)
            answer = self.client.call(
                "POST",
                f"/kbs/v0/server-certificate/{urllib.parse.quote(name, safe='')}",
                json_body={"csr": csr_pem},
                headers=state.headers(),
            )
            if answer.status == 401 and attempt == 1:
                self.invalidate(state)
                continue
            _raise_for(answer, "certificate", resource)
            try:
                chain = json.loads(answer.body)["certificate_chain"]
                if not isinstance(chain, str) or "BEGIN CERTIFICATE" not in chain:
                    raise ValueError("no chain")
            except (ValueError, KeyError, TypeError):
                raise SealserveError(
                    "the key broker's certificate answer has no certificate chain",
                    code=Code.UNKNOWN,
                ) from None
            return chain
        raise AssertionError("unreachable")  # pragma: no cover

    def invalidate(self, state: _Attested | None = None) -> None:
        """Forget the session (the given one only, if it is still the current one)."""
        with self._lock:
            if state is None or self._state is state:
                self._state = None

    @property
    def expires_in(self) -> float | None:
        """Seconds until the current session ends (None: no session)."""
        state = self._state
        return None if state is None else state.expires_at - self._clock()

    def _current(self, resource: str) -> _Attested:
        with self._lock:
            state = self._state
            margin = min(self._refresh_margin, state.lifetime / 4) if state else 0.0
            if state is None or self._clock() >= state.expires_at - margin:
                self._state = state = self._attest(resource)
            return state

    def _attest(self, resource: str) -> _Attested:
        """auth → attest with a fresh key, restarting from auth (with backoff) when the KBS
        that answered auth is gone (see the module docstring)."""
        client = self.client
        delay = client.backoff
        for handshake in range(1, client.attempts + 1):
            try:
                state = self._handshake(resource)
            except _SessionLost as lost:
                if handshake == client.attempts:
                    raise lost.denied from None
                log.warning(
                    "key broker %s no longer knows the session (%s); new handshake %d/%d in %.1f s",
                    client.url,
                    lost.denied.reason,
                    handshake,
                    client.attempts - 1,
                    delay,
                )
                client._sleep(delay)
                delay = min(delay * 2, client.max_backoff)
                continue
            self.attestations += 1
            return state
        raise AssertionError("unreachable")  # pragma: no cover

    def _handshake(self, resource: str) -> _Attested:
        client = self.client
        key = self._key_factory()
        jwk = tee_pubkey_jwk(key)
        answer = client.call(
            "POST",
            "/kbs/v0/auth",
            json_body={"version": PROTOCOL_VERSION, "tee": self.attester.tee, "extra-params": ""},
        )
        _raise_for(answer, "auth", resource)
        session_connection = client._connections_opened()
        cookie = _session_cookie(answer)
        challenge = Challenge.parse(answer.body)
        tls_spki = self._tls_spki  # the caller (`_current`) holds the lock
        evidence = self.attester.evidence(
            report_data_for(challenge.nonce, jwk, tls_spki_sha256=tls_spki)
        )
        attestation = Attestation(
            nonce=challenge.nonce,
            tee_pubkey=TeePubKey.from_jwk(jwk),
            quote=evidence.quote,
            init_data=self._init_data,
            tls_spki_sha256=tls_spki,
        )
        answer = client.call(
            "POST",
            "/kbs/v0/attest",
            json_body=attestation.to_json(),
            headers={"Cookie": f"{SESSION_COOKIE}={cookie}"},
        )
        try:
            _raise_for(answer, "attestation", resource)
        except KbsDenied as denied:
            if denied.status == 401 and client._connections_opened() != session_connection:
                raise _SessionLost(denied) from None
            raise
        try:
            token = json.loads(answer.body)["token"]
            if not isinstance(token, str) or not token:
                raise ValueError("no token")
        except (ValueError, KeyError, TypeError):
            raise SealserveError(
                "the key broker's attestation answer has no token", code=Code.UNKNOWN
            ) from None
        lifetime = token_lifetime(token)
        return _Attested(
            key=key,
            cookie=cookie,
            token=token,
            expires_at=self._clock() + lifetime,
            lifetime=lifetime,
            tls_spki_sha256=tls_spki,
        )


def _detail(answer: _Answer) -> str:
    try:
        data = json.loads(answer.body)
        if isinstance(data, dict) and isinstance(data.get("detail"), str):
            return str(data["detail"])
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    return answer.body[:200].decode("utf-8", "replace") or f"HTTP {answer.status}"


def _raise_for(answer: _Answer, step: str, resource: str) -> None:
    """Raise for a refused answer: one sentence naming `resource` once (the KBS's own words
    often name it too: then they are the only ones that do)."""
    if 200 <= answer.status < 300:
        return
    reason = _detail(answer)
    named = resource in reason
    if answer.status in (401, 403):
        raise KbsDenied(
            f"key broker denied {step}: {reason}"
            if named
            else f"key broker denied {step} for {resource}: {reason}",
            reason=reason,
            status=answer.status,
            step=step,
        )
    if answer.status == 404:
        # our KBS says "resource X not found": nothing the prefix does not already say
        raise NotFound(
            f"key broker has no resource {resource}"
            if named
            else f"key broker has no resource {resource} ({reason})"
        )
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
    """`serving.keys.KeyProvider` backed by a KBS: one attested session for every model key
    (and the protected TLS configuration) this server needs."""

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
        self.session = AttestedSession(self.client, attester)
        self._clock = time.monotonic
        self._leases: dict[str, HeldLease] = {}
        self._leases_lock = threading.Lock()

    def key_for(self, name: str) -> bytes:
        # A refusal is reported once, by whoever asked: the model manager's load-failure
        # line, or `serve`'s start-up error for a protected ssl config.
        secret, lease = self.session.get_leased_resource(self.resource_for_model(name))
        self.note_lease(name, lease)
        return secret

    # the leases of the keys this provider got (`LeaseKeeper` renews them)

    def note_lease(self, name: str, lease: Lease | None) -> None:
        with self._leases_lock:
            if lease is None:
                self._leases.pop(name, None)
                return
            now = self._clock()
            self._leases[name] = HeldLease(
                expires_at=now + lease.seconds,
                renew_at=now + lease.seconds / 2,
                keep_when_unreachable=lease.keep_when_unreachable,
            )

    def retry_lease(self, name: str, at: float) -> None:
        with self._leases_lock:
            held = self._leases.get(name)
            if held is not None:
                self._leases[name] = dataclasses.replace(held, renew_at=at)

    def forget_lease(self, name: str) -> None:
        with self._leases_lock:
            self._leases.pop(name, None)

    def leases(self) -> list[tuple[str, HeldLease]]:
        with self._leases_lock:
            return list(self._leases.items())

    def __repr__(self) -> str:
        return f"KbsKeyProvider({self.client.url!r}, tee={self.attester.tee!r})"


def revocation_reason(resource: str, refusal: KbsDenied | NotFound) -> str:
    """The END reason of a model whose lease renewal the KBS refused: one sentence naming the
    resource once and why once."""
    if isinstance(refusal, NotFound):
        why = "resource not found"
    elif refusal.status == 403 and refusal.step == "release":
        # the KBS's words name the resource again; the failed rules are in its audit log only
        why = "its policy denies this server; the KBS's audit log says why"
    else:
        why = f"{refusal.step or 'attestation'} denied: {refusal.reason}"
    return f"key revoked: the key broker no longer releases {resource} ({why})"


class LeaseKeeper:
    """Keeps the keys a KBS lent this server (`Lease`) for as long as the KBS lends them.

    A daemon thread renews each leased model key over the attested session at half its lease.
    When the KBS refuses (the secret was revoked or deleted, or its policy no longer admits
    this server), `on_revoked(model, reason)` is called at once; when the KBS cannot be
    reached, the key is kept until its lease ends and then `on_revoked` is called, unless
    the lease says to keep it while the KBS is unreachable. Keys given without a lease are
    not watched. Thread safe."""

    def __init__(
        self,
        provider: KbsKeyProvider,
        on_revoked: Callable[[str, str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.on_revoked = on_revoked
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sealserve-leases", daemon=True)

    def start(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._next_wait()):
            now = self._clock()
            for name, held in self.provider.leases():
                if now >= held.renew_at:
                    self._renew(name, held, now)

    def _next_wait(self) -> float:
        leases = self.provider.leases()
        if not leases:
            return 1.0
        return max(0.2, min(held.renew_at for _, held in leases) - self._clock())

    def _renew(self, name: str, held: HeldLease, now: float) -> None:
        resource = self.provider.resource_for_model(name)
        try:
            _secret, lease = self.provider.session.get_leased_resource(resource)
        except (KbsDenied, NotFound) as err:
            self.provider.forget_lease(name)
            self.on_revoked(name, revocation_reason(resource, err))
            return
        except SealserveError as err:
            if held.keep_when_unreachable or now < held.expires_at:
                left = max(0.0, held.expires_at - now)
                log.warning(
                    "renewing the lease of %s failed (%s); %.0f s of it left", name, err, left
                )
                self.provider.retry_lease(name, now + min(5.0, max(0.5, left / 4)))
                return
            self.provider.forget_lease(name)
            self.on_revoked(name, f"key lease expired: the key broker could not be reached ({err})")
            return
        self.provider.note_lease(name, lease)
        log.debug("renewed the key lease of model %s", name)  # routine: --log_level=debug
