"""The KBS flow: challenge → verify evidence → token → policy → release as JWE; admin; audit.

`KbsService` is framework-free (the HTTP adapter is `kbs.http`). Protocol: Trustee KBS
v0.4.0 (`reference/attestation.md` §3):

1. `auth(body, client=...)` → a session (random id, the `kbs-session-id` cookie) holding a
   one-time nonce; sessions expire after `session_ttl` seconds (5 min). A session that has
   not attested is *pending*: it expires after `pending_session_ttl` (30 s), each client
   (`limits.client_key`) holds at most `max_pending_per_client` of them and the whole KBS
   `max_sessions`, the oldest evicted first — so anonymous `/auth` floods cannot lock a
   legitimate server out.
2. `attest(session_id, body)` → the nonce is *consumed* first (one attempt per challenge,
   whatever the outcome: a replayed nonce is refused), the quote is verified with
   `attestation.verify_quote` against the configured collateral at `clock()`, and the quote's
   report_data must equal `protocol.report_data_for(nonce, tee-pubkey, additional-evidence)`.
   Success yields an ES256 JWT (the attestation token) carrying the claims and the
   tee-pubkey (and the TLS key the evidence bound, if any), valid `token_ttl` seconds (never
   past the session's end).
3. `resource(path, session_id, bearer)` → the attested session named by the cookie, or else
   the bearer token (Trustee's order), gives the claims and the tee-pubkey; the resource's
   policy (its own, or the `default` one; none → denied) decides (`Policy.decide`, at the
   time of the release, so a token does not outlive a TCB grace period or a collateral age);
   the secret is returned as a JWE in the flattened JSON serialization (`kbs.jwe`) to the
   attested tee-pubkey, so only the key whose hash the TEE quoted can read it.

4. `issue_server_certificate(name, csr)` → the same credentials and the policy of
   `sealserve/tls-cert/<name>`; the certificate is issued only for the TLS key the evidence
   bound (`runtime-data` `tls-spki-sha256`, `kbs.server_ca`), so credentials alone (a stolen
   cookie or token) cannot certify another key.

One attestation serves many releases: a server attests once and fetches every key it needs
with the cookie or the token until they expire; the token is signed by this KBS's signing
key, so a replica sharing that key (or this KBS after a restart) accepts it without a new
attestation. A denial tells the TEE only *that* the policy denied it; which pin or rule
failed goes to the audit log and the KBS log (the host that runs the TEE must not learn how
to tune its next attempt). Policies are parsed once per stored text, not per release.

Trust anchors: Intel's root always; a simulated TEE's root only if the operator passes it as
`insecure_trust_sim_root` (logs a warning), and then only for evidence whose tee is "sim".

What is audited: every decision about a party that showed verified evidence or an
attestation token (attest verified, or denied after its evidence verified; every release
allowed or denied) and every admin change, in the store's keyed audit chain. Failures
without credentials (no or unknown session, bad token, evidence that does not verify,
malformed requests) are counted in `metrics` and logged bounded and escaped (`logtext`), not
stored one row each: anyone can send them. Admin calls need the bearer admin token (constant-time
comparison); with no admin token configured every admin call is refused (deny-all).

Secrets never appear in logs, exceptions or `repr`. Thread-safe: sessions are guarded by a
lock, the store is thread-safe, verification is pure.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from sealserve.attestation import (
    AttestationFailed,
    Claims,
    Collateral,
    Decision,
    Policy,
    verify_quote,
)
from sealserve.attestation.ratls import evidence_from_certificate
from sealserve.attestation.verify import pck_root_der
from sealserve.errors import Code, InvalidArgument, NotFound, PermissionDenied, SealserveError
from sealserve.kbs.audit import CHECKPOINT_INTERVAL, sign_checkpoint
from sealserve.kbs.jwe import LEASE_HEADER, seal_resource
from sealserve.kbs.logtext import LogThrottle, shown
from sealserve.kbs.metrics import KbsMetrics
from sealserve.kbs.protocol import (
    TLS_SPKI_MEMBER,
    Attestation,
    Challenge,
    Request,
    TeePubKey,
    check_resource_path,
    check_spki_sha256,
    new_nonce,
)
from sealserve.kbs.secret_prov import SecretProvMap
from sealserve.kbs.server_ca import TLS_CERT_RESOURCE, KeyNotBound, ServerCA
from sealserve.kbs.store import DEFAULT_POLICY, SECRET_PROV_MAP, KbsStore, check_policy_key

log = logging.getLogger(__name__)

SESSION_TTL_SECONDS = 300
PENDING_SESSION_TTL_SECONDS = 30
MAX_PENDING_PER_CLIENT = 32
MAX_SESSIONS = 100_000
TOKEN_TTL_SECONDS = 300
TOKEN_ISSUER = "sealserve-kbs"
#: audit records of the secret-provisioning endpoint name the peer address, not a session
SECRET_PROV_SESSION = "secret-prov "
_MAX_CACHED_POLICIES = 1024
_MEASUREMENT_FIELDS = (
    "mr_enclave",
    "mr_signer",
    "isv_prod_id",
    "isv_svn",
    "mr_td",
    "rtmr0",
    "rtmr1",
    "rtmr2",
    "rtmr3",
)


class Unauthenticated(SealserveError):
    """No, expired or forged session / token / admin token (HTTP 401)."""

    code = Code.UNAUTHENTICATED


def _lease_header(policy: Policy) -> dict[str, Any] | None:
    """The JWE header member lending a key for the policy's lease (none: given for good)."""
    if not policy.key_lease_seconds:
        return None
    return {
        LEASE_HEADER: {
            "seconds": policy.key_lease_seconds,
            "keep_when_unreachable": policy.keep_key_when_kbs_unreachable,
        }
    }


class _SecretProvDenied(PermissionDenied):
    """No mapped resource admits an enclave; `refusals`: (resource, reason) per resource."""

    def __init__(self, refusals: list[tuple[str, str]]) -> None:
        super().__init__("no mapped resource's policy admits the enclave")
        self.refusals = refusals


class PolicyDenied(PermissionDenied):
    """The resource policy refused the attested TEE (HTTP 403). The message (what the TEE is
    told) names the resource only; `reason` (the failed rules) is for the audit log."""

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


@dataclass
class _Session:
    id: str
    tee: str
    nonce: str
    expires_at: int
    client: str = ""
    pending_until: int = 0
    nonce_used: bool = False
    claims: Claims | None = None
    tee_pubkey: TeePubKey | None = None
    tls_spki_sha256: str | None = None


@dataclass(frozen=True)
class _Credentials:
    """What an attested session or its token vouches for: the session, the verified claims,
    the tee-pubkey resources are encrypted to, the TLS key the evidence bound (None: none)."""

    sid: str
    claims: Claims
    tee_pubkey: TeePubKey
    tls_spki_sha256: str | None = None


def claims_from_json(data: dict[str, Any]) -> Claims:
    """The inverse of `Claims.to_json` (claims carried in our own signed token)."""
    names = {f.name for f in dataclasses.fields(Claims)}
    values = {k: v for k, v in data.items() if k in names}
    values["report_data"] = bytes.fromhex(values["report_data"])
    values["advisory_ids"] = tuple(values.get("advisory_ids") or ())
    return Claims(**values)


def session_ref(session_id: str) -> str:
    """What the audit log records of a session: a hash, since the id itself is a credential
    (the `kbs-session-id` cookie authorises resource requests)."""
    if not session_id or session_id == "admin" or session_id.startswith(SECRET_PROV_SESSION):
        return session_id  # not credentials
    return hashlib.sha256(session_id.encode()).hexdigest()[:16]


def measurements_of(claims: Claims | None) -> dict[str, Any]:
    if claims is None:
        return {}
    return {n: getattr(claims, n) for n in _MEASUREMENT_FIELDS if getattr(claims, n) is not None}


CollateralSource = Callable[[bytes], Collateral]


@dataclass
class KbsConfig:
    """What a KBS needs besides its store. `signing_key` is an EC P-256 private key."""

    signing_key: ECKey = field(repr=False)
    collateral: Collateral | CollateralSource = field(repr=False)
    admin_token: str | None = field(default=None, repr=False)
    insecure_trust_sim_root: bytes | None = field(default=None, repr=False)
    session_ttl: int = SESSION_TTL_SECONDS
    pending_session_ttl: int = PENDING_SESSION_TTL_SECONDS
    max_pending_per_client: int = MAX_PENDING_PER_CLIENT
    max_sessions: int = MAX_SESSIONS
    token_ttl: int = TOKEN_TTL_SECONDS
    #: sign a checkpoint of the audit chain every this many records (`kbs.audit`)
    audit_checkpoint_interval: int = CHECKPOINT_INTERVAL
    clock: Callable[[], float] = time.time
    #: issues attested servers' TLS certificates (`kbs.server_ca`); None: this KBS issues none
    server_ca: ServerCA | None = field(default=None, repr=False)


class KbsService:
    def __init__(self, store: KbsStore, config: KbsConfig) -> None:
        self.store = store
        self.config = config
        self._sessions: dict[str, _Session] = {}
        # Pending (not yet attested) session ids, oldest first: all, and per client.
        self._pending: OrderedDict[str, None] = OrderedDict()
        self._pending_by_client: dict[str, OrderedDict[str, None]] = {}
        self._lock = threading.Lock()
        self.metrics = KbsMetrics()
        self._log_throttle = LogThrottle()
        self.metrics.track_sessions(
            lambda: len(self._pending), lambda: len(self._sessions) - len(self._pending)
        )
        self._next_purge = 0
        #: parsed policies by (format, text): parsing is not free and logs warnings
        self._policies: dict[tuple[str, str], Policy] = {}
        self._policies_lock = threading.Lock()
        key = config.signing_key
        if not isinstance(key, ECKey) or key.as_dict().get("crv") != "P-256":
            raise InvalidArgument("the KBS signing key must be an EC P-256 private key")
        if config.insecure_trust_sim_root is not None:
            log.warning(
                "KBS trusts a simulated TEE's root CA (insecure_trust_sim_root): evidence of "
                "tee=sim is accepted where a resource policy lists it. INSECURE: tests/demos only"
            )
        if config.admin_token is not None and len(config.admin_token) < 16:
            raise InvalidArgument("the admin token must be at least 16 characters")

    def __repr__(self) -> str:
        return f"KbsService(store={self.store!r})"

    def _now(self) -> int:
        return int(self.config.clock())

    # --- 1. auth --------------------------------------------------------------------------

    def auth(self, body: Any, *, client: str = "") -> tuple[str, dict[str, Any]]:
        """A new session and its challenge (protocol §3 Request → Challenge). `client` is the
        caller's `limits.client_key`: its pending sessions are capped, oldest evicted."""
        request = Request.parse(body)
        now = self._now()
        session = _Session(
            id=secrets.token_urlsafe(32),
            tee=request.tee,
            nonce=new_nonce(),
            expires_at=now + self.config.session_ttl,
            client=client,
            pending_until=now + self.config.pending_session_ttl,
        )
        with self._lock:
            self._expire(now)
            mine = self._pending_by_client.setdefault(client, OrderedDict())
            while len(mine) >= self.config.max_pending_per_client:
                self._drop(next(iter(mine)))
            while len(self._sessions) >= self.config.max_sessions and self._pending:
                self._drop(next(iter(self._pending)))
            if len(self._sessions) >= self.config.max_sessions:
                raise SealserveError("too many open sessions", code=Code.RESOURCE_EXHAUSTED)
            self._sessions[session.id] = session
            self._pending[session.id] = None
            mine[session.id] = None
        return session.id, Challenge(nonce=session.nonce).to_json()

    def _drop(self, sid: str) -> None:
        """Forget a session (caller holds the lock)."""
        session = self._sessions.pop(sid, None)
        self._pending.pop(sid, None)
        if session is not None:
            self._settle(session)

    def _settle(self, session: _Session) -> None:
        """Take `session` off the pending lists (attested or gone; caller holds the lock)."""
        self._pending.pop(session.id, None)
        mine = self._pending_by_client.get(session.client)
        if mine is not None:
            mine.pop(session.id, None)
            if not mine:
                del self._pending_by_client[session.client]

    def _expire(self, now: int) -> None:
        # Pending sessions share one lifetime, so the oldest are at the front: cheap.
        while self._pending:
            oldest = self._sessions.get(next(iter(self._pending)))
            if oldest is not None and oldest.pending_until >= now:
                break
            self._drop(next(iter(self._pending)))
        if now < self._next_purge:
            return
        self._next_purge = now + 1  # at most one sweep of attested sessions per second
        for sid in [s.id for s in self._sessions.values() if s.expires_at < now]:
            self._drop(sid)

    def session_count(self) -> int:
        return len(self._sessions)

    def _session(self, session_id: str | None, now: int) -> _Session:
        if not session_id:
            raise Unauthenticated("no kbs-session-id cookie: start with /kbs/v0/auth")
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and (
                session.expires_at < now or (session.claims is None and session.pending_until < now)
            ):
                self._drop(session_id)
                raise Unauthenticated("the session has expired: start again with /kbs/v0/auth")
        if session is None:
            raise Unauthenticated("unknown session: start with /kbs/v0/auth")
        return session

    # --- 2. attest ------------------------------------------------------------------------

    def attest(self, session_id: str | None, body: Any) -> dict[str, Any]:
        """Verify the evidence of a session; the attestation token on success."""
        now = self._now()
        sid = session_id or ""
        tee = ""
        claims: Claims | None = None
        try:
            session = self._session(session_id, now)
            tee = session.tee
            with self._lock:
                # One attempt per challenge (replay protection): consume before verifying.
                if session.nonce_used:
                    raise Unauthenticated(
                        "this challenge's nonce was already used: start again with /kbs/v0/auth"
                    )
                session.nonce_used = True
            attestation = Attestation.parse(body, tee=session.tee)
            if not hmac.compare_digest(attestation.nonce.encode(), session.nonce.encode()):
                raise Unauthenticated("the nonce is not this session's challenge")
            claims = self._verify(session.tee, attestation.quote, now)
            expected = attestation.report_data()
            if not hmac.compare_digest(claims.report_data, expected):
                raise Unauthenticated(
                    "the evidence's report_data does not bind this nonce and tee-pubkey "
                    "(expected SHA-384 of canonical {additional-evidence, nonce, tee-pubkey}, "
                    "zero-padded to 64 bytes)"
                )
            with self._lock:
                session.claims = claims
                session.tee_pubkey = attestation.tee_pubkey
                session.tls_spki_sha256 = attestation.tls_spki_sha256
                self._settle(session)
            token = self._issue_token(session, claims, attestation.tee_pubkey, now)
        except SealserveError as err:
            if claims is None:  # nothing verified: anyone can send this
                result = "error" if err.code == Code.UNAVAILABLE else "rejected"
                self.metrics.attestations.labels(tee or "none", result).inc()
                self._unauthenticated("attest", err)
            else:
                self.metrics.attestations.labels(tee, "rejected").inc()
                self._audit(sid, tee, claims, "", "attest", "denied", err.message, now)
            raise
        self.metrics.attestations.labels(tee, "verified").inc()
        verified = "evidence verified"
        if attestation.tls_spki_sha256 is not None:  # which key a later certificate may carry
            verified += f"; binds the TLS key with SHA-256 SPKI {attestation.tls_spki_sha256}"
        self._audit(sid, tee, claims, "", "attest", "verified", verified, now)
        return {"token": token}

    def _verify(self, tee: str, quote: bytes, now: int) -> Claims:
        source = self.config.collateral
        try:
            collateral = source if isinstance(source, Collateral) else source(quote)
        except TimeoutError:
            raise SealserveError(
                "collateral could not be fetched in time", code=Code.UNAVAILABLE
            ) from None
        root: bytes | None = None
        if tee == "sim":
            root = self.config.insecure_trust_sim_root
            if root is None:
                raise AttestationFailed(
                    "quote verification failed: simulated TEE evidence is not trusted by this "
                    "KBS (no insecure_trust_sim_root)",
                    reason="simulated TEE evidence is not trusted",
                )
        with self._timed(self.metrics.verification_seconds.labels(tee)):
            return verify_quote(quote, collateral, now=now, root_ca_der=root, tee_hint=tee)

    @staticmethod
    @contextmanager
    def _timed(histogram: Any) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            histogram.observe(time.perf_counter() - started)

    def _stored(self, operation: str, call: Callable[..., Any], *args: Any) -> Any:
        """A store call on the release path: the driver's own failures (database down,
        locked, disk full) become one UNAVAILABLE error and a count in the metrics."""
        try:
            return call(*args)
        except SealserveError:
            raise
        except Exception as exc:
            self.metrics.store_errors.labels(operation).inc()
            log.error("KBS store %s failed (%s)", operation, type(exc).__name__)
            raise SealserveError("the KBS store is unavailable", code=Code.UNAVAILABLE) from None

    def _unauthenticated(self, endpoint: str, err: SealserveError) -> None:
        """A failure without credentials: counted and logged (bounded, throttled), no audit."""
        self.metrics.unauthenticated.labels(endpoint).inc()
        if self._log_throttle.allow():
            detail = err.reason if isinstance(err, AttestationFailed) else err.message
            log.info("kbs %s refused (no credentials): %s", endpoint, shown(detail))

    def _issue_token(self, session: _Session, claims: Claims, key: TeePubKey, now: int) -> str:
        exp = min(now + self.config.token_ttl, session.expires_at)
        payload: dict[str, Any] = {
            "iss": TOKEN_ISSUER,
            "iat": now,
            "exp": exp,
            "jti": secrets.token_urlsafe(16),
            "sid": session.id,
            "tee-pubkey": key.jwk,
            "claims": claims.to_json(),
        }
        if session.tls_spki_sha256 is not None:
            payload[TLS_SPKI_MEMBER] = session.tls_spki_sha256
        return jwt.encode({"alg": "ES256", "typ": "JWT"}, payload, self.config.signing_key)

    def _token_claims(self, token: str, now: int) -> _Credentials:
        try:
            decoded = jwt.decode(token, self.config.signing_key, algorithms=["ES256"])
            payload = decoded.claims
            if payload.get("iss") != TOKEN_ISSUER:
                raise Unauthenticated("the token was not issued by this KBS")
            exp = payload.get("exp")
            if not isinstance(exp, int) or exp < now:
                raise Unauthenticated("the attestation token has expired: attest again")
            tls_spki = payload.get(TLS_SPKI_MEMBER)
            return _Credentials(
                sid=str(payload.get("sid", "")),
                claims=claims_from_json(payload["claims"]),
                tee_pubkey=TeePubKey.from_jwk(payload["tee-pubkey"]),
                tls_spki_sha256=None if tls_spki is None else check_spki_sha256(tls_spki),
            )
        except Unauthenticated:
            raise
        except (JoseError, ValueError, KeyError, TypeError, SealserveError):
            log.debug("refused an attestation token that does not verify")
            raise Unauthenticated("the attestation token is invalid") from None

    # --- 3. resource ----------------------------------------------------------------------

    def resource(
        self, path: str, *, session_id: str | None = None, bearer: str | None = None
    ) -> str:
        """The resource `path` as a flattened JSON JWE (its JSON text) to the attested
        tee-pubkey. Authorised by an attested session (cookie) or else a bearer token."""
        now = self._now()
        sid = session_id or ""
        claims: Claims | None = None
        tee = ""
        try:
            path = check_resource_path(path)
            credentials = self._credentials(session_id, bearer, now)
            sid, claims, key = credentials.sid, credentials.claims, credentials.tee_pubkey
            tee = claims.tee
            if not self._stored("resource_exists", self.store.resource_exists, path):
                raise NotFound(f"resource {path} not found")
            with self._timed(self.metrics.policy_seconds):
                policy = self._policy_for(path)
                decision = policy.decide(claims, now)
            if not decision.allowed:
                raise PolicyDenied(
                    f"the resource policy of {path} denied this TEE (the KBS's audit log says why)",
                    reason="; ".join(decision.reasons),
                )
            secret = self._stored("get_resource", self.store.get_resource, path)
            sealed = json.dumps(seal_resource(secret, key.jwk, _lease_header(policy)))
            del secret
        except SealserveError as err:
            if claims is None:  # no valid credentials: anyone can send this
                self._unauthenticated("resource", err)
                raise
            known = not isinstance(err, NotFound)  # never a label for a made-up path
            self.metrics.releases.labels(path if known else "(unknown)", "denied").inc()
            if err.code == Code.DATA_LOSS:
                self.metrics.tampering.labels(getattr(err, "what", "store")).inc()
            detail = err.reason if isinstance(err, PolicyDenied) else err.message
            self._audit(sid, tee, claims, path, "release", "denied", detail, now)
            raise
        note = "; ".join(decision.notes) if decision.notes else "policy allowed"
        # The record is written before the secret leaves: a release that cannot be audited
        # (store down, audit chain tampered with) is refused.
        self._audit(sid, tee, claims, path, "release", "allowed", note, now)
        self.metrics.releases.labels(path, "allowed").inc()
        return sealed

    # --- attested servers' TLS certificates (kbs.server_ca) -------------------------------

    def issue_server_certificate(
        self,
        name: str,
        csr_pem: str,
        *,
        session_id: str | None = None,
        bearer: str | None = None,
    ) -> str:
        """A certificate chain for the CSR's key, carrying the attested session's claims,
        when the policy of `sealserve/tls-cert/<name>` admits them and the key is the TLS key
        the session's evidence bound (`kbs.server_ca`). Audited like a release."""
        now = self._now()
        sid = session_id or ""
        claims: Claims | None = None
        tee = ""
        path = ""
        try:
            path = check_resource_path(TLS_CERT_RESOURCE.format(name=name))
            credentials = self._credentials(session_id, bearer, now)
            sid, claims = credentials.sid, credentials.claims
            tee = claims.tee
            if self.config.server_ca is None:
                raise NotFound("this KBS issues no server certificates (no --server-ca-key)")
            with self._timed(self.metrics.policy_seconds):
                decision = self._policy_for(path).decide(claims, now)
            if not decision.allowed:
                raise PolicyDenied(
                    f"the policy of {path} denied this TEE (the KBS's audit log says why)",
                    reason="; ".join(decision.reasons),
                )
            chain = self.config.server_ca.issue(
                csr_pem, name, claims, now, bound_spki=credentials.tls_spki_sha256
            )
        except SealserveError as err:
            if claims is None:
                self._unauthenticated("server-certificate", err)
                raise
            self.metrics.releases.labels(self._certificate_label(path), "denied").inc()
            detail = err.reason if isinstance(err, PolicyDenied | KeyNotBound) else err.message
            self._audit(sid, tee, claims, path, "certificate", "denied", detail, now)
            raise
        issued = f"policy allowed; the bound TLS key, SHA-256 SPKI {credentials.tls_spki_sha256}"
        self._audit(sid, tee, claims, path, "certificate", "issued", issued, now)
        self.metrics.releases.labels(self._certificate_label(path), "allowed").inc()
        return chain

    def _certificate_label(self, path: str) -> str:
        """The `releases` label of a certificate request. NAME in `sealserve/tls-cert/NAME` is
        the attested caller's choice (the default policy may admit any), so it is a label only
        where the owner set a policy for that very path: every other name is counted as
        `sealserve/tls-cert/(other)`, and the number of series stays the owner's to grow."""
        try:
            own = self.store.get_policy(path) is not None
        except Exception:  # the store is down: the request already failed or is audited
            own = False
        return path if own else TLS_CERT_RESOURCE.format(name="(other)")

    # --- Gramine secret provisioning (kbs.secret_prov) ------------------------------------

    def provision(self, certificate: x509.Certificate, *, peer: str) -> bytes:
        """The secret for an enclave that showed this RA-TLS client certificate. The quote it
        carries must be bound to the certificate's key and verify; then the first mapped
        resource (`SecretProvMap`) whose policy admits the claims is released, as raw bytes
        (the mutual-TLS session that showed the certificate protects them).

        As for RCAR: a refusal before the evidence verified (anyone can cause it) is counted
        and logged, not audited; a verified enclave's denial and every release are audited,
        the release before the secret leaves."""
        now = self._now()
        session = f"{SECRET_PROV_SESSION}{peer}"
        claims: Claims | None = None
        tee = ""
        path = ""
        try:
            quote = evidence_from_certificate(certificate, now=now).quote
            tee = "sim" if self._signed_by_sim_root(quote) else "sgx"
            claims = self._verify(tee, quote, now)
            self.metrics.attestations.labels(tee, "verified").inc()
            path, decision = self._secret_prov_choice(claims, now)
            secret = self.store.get_resource(path)
        except SealserveError as err:
            if claims is None:
                result = "error" if err.code == Code.UNAVAILABLE else "rejected"
                self.metrics.attestations.labels(tee or "none", result).inc()
                self._unauthenticated("secret-prov", err)
                raise
            # one record per mapped resource refused, so `kbs audit --resource` finds it
            refusals = err.refusals if isinstance(err, _SecretProvDenied) else [(path, err.message)]
            for resource, reason in refusals or [("", "no resource is mapped")]:
                self.metrics.releases.labels(resource or "(none)", "denied").inc()
                self._audit(session, tee, claims, resource, "secret-prov", "denied", reason, now)
            raise
        note = "; ".join(decision.notes) if decision.notes else "policy allowed"
        self._audit(session, tee, claims, path, "secret-prov", "allowed", note, now)
        self.metrics.releases.labels(path, "allowed").inc()
        return secret

    def _secret_prov_choice(self, claims: Claims, now: int) -> tuple[str, Decision]:
        """The first mapped resource whose policy admits `claims`, and that decision;
        `_SecretProvDenied` with each mapped resource's reason otherwise."""
        refusals: list[tuple[str, str]] = []
        for candidate in self.secret_prov_resources():
            if not self.store.resource_exists(candidate):
                refusals.append((candidate, "not found"))
                continue
            with self._timed(self.metrics.policy_seconds):
                decision = self._policy_for(candidate).decide(claims, now)
            if decision.allowed:
                return candidate, decision
            refusals.append((candidate, "; ".join(decision.reasons)))
        raise _SecretProvDenied(refusals)

    def secret_prov_resources(self) -> tuple[str, ...]:
        stored = self.store.get_policy(SECRET_PROV_MAP)
        return () if stored is None else SecretProvMap.parse(stored[0]).resources

    def refuse_provision(self, reason: str) -> None:
        """Count a secret-provisioning connection refused before its evidence was judged."""
        self._unauthenticated("secret-prov", InvalidArgument(reason))

    def _signed_by_sim_root(self, quote: bytes) -> bool:
        root = self.config.insecure_trust_sim_root
        return root is not None and pck_root_der(quote) == root

    def _credentials(self, session_id: str | None, bearer: str | None, now: int) -> _Credentials:
        """Claims and key of the attested session named by the cookie, else of the bearer
        token (Trustee's `get_attestation_token` order). An unknown session with a valid token
        is the normal case after a KBS restart or on another replica."""
        problem = "no kbs-session-id cookie or bearer token: start with /kbs/v0/auth"
        if session_id:
            with self._lock:
                session = self._sessions.get(session_id)
            if session is None:
                problem = "unknown session: start with /kbs/v0/auth"
            elif session.expires_at < now:
                problem = "the session has expired: start again with /kbs/v0/auth"
            elif session.claims is None or session.tee_pubkey is None:
                problem = "the session has not attested: POST /kbs/v0/attest"
            else:
                return _Credentials(
                    session.id, session.claims, session.tee_pubkey, session.tls_spki_sha256
                )
        if bearer:
            return self._token_claims(bearer, now)
        raise Unauthenticated(problem)

    def _policy_for(self, path: str) -> Policy:
        stored = self._stored("get_policy", self.store.get_policy, path) or self._stored(
            "get_policy", self.store.get_policy, DEFAULT_POLICY
        )
        if stored is None:
            raise PolicyDenied(
                f"the resource policy of {path} denied this TEE (the KBS's audit log says why)",
                reason=f"no policy allows {path} (set one with `sealserve kbs policy set`)",
            )
        try:
            return self._parsed(*stored)
        except InvalidArgument as err:
            # Stored before today's rules (e.g. a TD policy pinning mr_td alone): it admits
            # nobody until the owner sets a policy that loads. Not a 400 to the TEE: the TEE
            # did nothing wrong and must not learn what the policy says.
            log.error("the stored policy for %s does not load: %s", path, err.message)
            raise PolicyDenied(
                f"the resource policy of {path} denied this TEE (the KBS's audit log says why)",
                reason=f"the stored policy does not load, so it admits nobody: {err.message}",
            ) from None

    def _parsed(self, text: str, fmt: str) -> Policy:
        """The policy of a stored text, parsed once (warnings are logged once per change)."""
        with self._policies_lock:
            policy = self._policies.get((fmt, text))
        if policy is not None:
            return policy
        policy = (
            Policy.from_json(text, source="stored policy")
            if fmt == "json"
            else Policy.from_toml(text, source="stored policy")
        )
        with self._policies_lock:
            if len(self._policies) >= _MAX_CACHED_POLICIES:
                self._policies.clear()  # a crude bound; policies change rarely
            self._policies[(fmt, text)] = policy
        return policy

    def _audit(
        self,
        session: str,
        tee: str,
        claims: Claims | None,
        resource: str,
        action: str,
        decision: str,
        reason: str,
        now: int,
    ) -> None:
        reason = shown(reason)
        self._append_audit(
            session=session_ref(session),
            tee=claims.tee if claims else tee,
            measurements=measurements_of(claims),
            tcb_status=claims.tcb_status if claims else "",
            resource=resource,
            action=action,
            decision=decision,
            reason=reason,
            now=now,
        )
        level = logging.INFO if decision != "denied" else logging.WARNING
        log.log(level, "kbs %s %s %s: %s", action, shown(resource or "-"), decision, reason)

    def _append_audit(self, **fields: Any) -> None:
        """Append to the audit chain; a failure refuses whatever was being recorded."""
        try:
            record = self.store.append_audit(**fields)
            if record.seq % self.config.audit_checkpoint_interval == 0:
                signed = sign_checkpoint(
                    self.config.signing_key, record.seq, record.hash, int(fields["now"])
                )
                self.store.put_checkpoint(record.seq, record.hash, signed)
        except SealserveError as err:
            if err.code == Code.DATA_LOSS:
                self.metrics.tampering.labels("audit").inc()
                log.error("audit chain tampering detected, refusing: %s", err.message)
            else:
                self.metrics.store_errors.labels("append_audit").inc()
            raise
        except Exception as exc:  # the store's driver (sqlite3 / psycopg) failed
            self.metrics.store_errors.labels("append_audit").inc()
            log.error("cannot write the audit log (%s): refusing", type(exc).__name__)
            raise SealserveError(
                "the KBS cannot write its audit log", code=Code.UNAVAILABLE
            ) from None

    # --- admin ----------------------------------------------------------------------------

    def check_admin(self, token: str | None) -> None:
        """Refuse unless `token` is the configured admin token (constant-time)."""
        expected = self.config.admin_token
        if expected is None:
            raise Unauthenticated("admin API disabled: this KBS has no admin token (deny-all)")
        if not token or not hmac.compare_digest(
            token.encode("utf-8", "replace"), expected.encode()
        ):
            err = Unauthenticated("admin token missing or wrong")
            self._unauthenticated("admin", err)
            raise err

    def admin_put_resource(self, token: str | None, path: str, value: bytes) -> dict[str, Any]:
        self.check_admin(token)
        info = self.store.put_resource(path, value)
        self._admin_audit(f"put version {info.version}", info.path)
        return info.to_json()

    def admin_delete_resource(self, token: str | None, path: str, *, revoke: bool = False) -> None:
        """Delete a secret; `revoke` records why: servers holding it on a lease drop it
        when they next renew (within one lease period)."""
        self.check_admin(token)
        self.store.delete_resource(path)
        self._admin_audit("revoke" if revoke else "delete", check_resource_path(path))

    def admin_list_resources(self, token: str | None) -> list[dict[str, Any]]:
        self.check_admin(token)
        return [info.to_json() for info in self.store.list_resources()]

    def admin_set_policy(self, token: str | None, path: str, text: str, fmt: str) -> None:
        self.check_admin(token)
        path = check_policy_key(path)
        if path == SECRET_PROV_MAP:
            raise InvalidArgument("set the secret-prov map with `sealserve kbs secret-prov map`")
        # Parse before storing: a policy that does not load must never be stored.
        if fmt == "json":
            policy = Policy.from_json(text, source=f"policy of {path}")
        elif fmt == "toml":
            policy = Policy.from_toml(text, source=f"policy of {path}")
        else:
            raise InvalidArgument("policy format must be toml or json")
        self.store.set_policy(path, text, fmt)
        with self._policies_lock:  # releases use this parse (its warnings are logged once)
            self._policies[(fmt, text)] = policy
        self._admin_audit("set policy", path)

    def admin_set_secret_prov_map(self, token: str | None, resources: Any) -> None:
        self.check_admin(token)
        mapping = SecretProvMap.parse_json({"resources": resources})
        self.store.set_policy(SECRET_PROV_MAP, mapping.to_text(), "json")
        self._admin_audit("map to secret provisioning", ", ".join(mapping.resources))

    def admin_get_secret_prov_map(self, token: str | None) -> dict[str, Any]:
        self.check_admin(token)
        return {"resources": list(self.secret_prov_resources())}

    def admin_get_policy(self, token: str | None, path: str) -> dict[str, Any]:
        self.check_admin(token)
        stored = self.store.get_policy(path)
        if stored is None:
            raise NotFound(f"no policy for {path}")
        return {"resource": check_policy_key(path), "format": stored[1], "policy": stored[0]}

    def admin_audit(
        self,
        token: str | None,
        *,
        resource: str | None = None,
        since_seq: int = 0,
        limit: int = 1000,
    ) -> dict[str, Any]:
        """A page of audit records, authenticated record by record (the cost of the page, not
        of the log: `sealserve kbs audit verify` checks the whole chain), and the latest signed
        checkpoint (keep it outside the database: it detects a rolled-back log)."""
        self.check_admin(token)
        records = self.store.audit_records(resource=resource, since_seq=since_seq, limit=limit)
        status = self.store.check_records(records)
        if not status.ok:
            self.metrics.tampering.labels("audit").inc()
            log.error(
                "TAMPERING: audit record %s fails authentication: %s",
                status.first_bad_seq,
                status.reason,
            )
        latest = self.store.latest_checkpoint()
        return {
            "records": [r.to_json() for r in records],
            "chain": {**status.to_json(), "scope": "page"},
            "checkpoint": None
            if latest is None
            else {"seq": latest[0], "hash": latest[1], "signed": latest[2]},
        }

    def _admin_audit(self, what: str, resource: str) -> None:
        self._append_audit(
            session="admin",
            tee="",
            measurements={},
            tcb_status="",
            resource=resource,
            action="admin",
            decision="done",
            reason=what,
            now=self._now(),
        )
