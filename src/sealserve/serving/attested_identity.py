"""The attested server's TLS identity, in one of two forms, the key made in memory either way:

- `make_attested_identity` (`serve --attested_tls`): a self-signed RA-TLS certificate whose
  TEE evidence binds the key (`attestation.ratls`, the TCG DICE format Gramine >= 1.8
  produces, plus Gramine's legacy extension); no KBS involved.
- `BrokeredIdentity` (`serve --key_broker_tls_name NAME`): a certificate the owner's key
  broker issues over the server's attested session, carrying the verified claims, renewed
  before it expires (`kbs.server_ca`). The session's evidence binds the TLS key (its SHA-256
  SubjectPublicKeyInfo in the runtime data), and the broker certifies no other key.

A requester that checks the evidence before sending anything (`sealserve.client.attested`)
knows it talks to code the owner's policy accepts, on genuine hardware, holding a key that
never left the TEE: the key exists only in this process's memory (never in a file, never in
`repr`), and the TLS handshake proves possession of it.

`evidence_document` is what `GET /v1/attestation` and the gRPC `sealserve.v1.Attestation/Get`
method return, for auditors: the certificate and the quote it carries (both public).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sealserve.attestation.evidence import Attester
from sealserve.attestation.ratls import (
    ATTESTED_SERVER_NAME,
    evidence_from_certificate,
    make_certificate,
)
from sealserve.errors import Code, SealserveError
from sealserve.serving.tls import SSLConfig

log = logging.getLogger(__name__)

#: how long an attested certificate is valid (a restart makes a new key and certificate)
CERTIFICATE_LIFETIME = dt.timedelta(days=30)
GRPC_METHOD = "/sealserve.v1.Attestation/Get"
REST_PATH = "/v1/attestation"


@dataclass(frozen=True)
class AttestedIdentity:
    """PEM text of the in-memory key and its RA-TLS certificate; the TEE type that quoted."""

    tee: str
    certificate_pem: str
    private_key_pem: str = field(repr=False)

    def __repr__(self) -> str:
        return f"AttestedIdentity(tee={self.tee!r}, private_key=<redacted>)"


def make_attested_identity(attester: Attester, *, now: float | None = None) -> AttestedIdentity:
    """A new P-384 key (Gramine's RA-TLS key type) and its RA-TLS certificate."""
    key = ec.generate_private_key(ec.SECP384R1())
    start = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.UTC)
    certificate = make_certificate(
        attester,
        key,
        not_before=start - dt.timedelta(minutes=5),  # tolerate clients' clock skew
        not_after=start + CERTIFICATE_LIFETIME,
        names=(ATTESTED_SERVER_NAME,),
    )
    return AttestedIdentity(
        tee=attester.tee,
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
        private_key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )


def attested_ssl_config(identity: AttestedIdentity, given: SSLConfig | None) -> SSLConfig:
    """The serving ports' TLS: the attested key and certificate; client verification as the
    given ssl.cfg says (its own key and certificate are not used)."""
    if given is not None:
        log.info("--attested_tls: the server key and certificate of --ssl_config_file are unused")
    return SSLConfig(
        server_key=identity.private_key_pem,
        server_cert=identity.certificate_pem,
        custom_ca=given.custom_ca if given else "",
        client_verify=given.client_verify if given else False,
    )


def evidence_document(identity: AttestedIdentity) -> dict[str, Any]:
    """The evidence for auditors: verify `quote` (dcap-qvl) and check it binds `certificate`."""
    certificate = x509.load_pem_x509_certificate(identity.certificate_pem.encode())
    evidence = evidence_from_certificate(
        certificate, now=int(certificate.not_valid_before_utc.timestamp()) + 1
    )
    return {
        "tee": identity.tee,
        "format": evidence.format,
        "certificate": identity.certificate_pem,
        "quote": base64.b64encode(evidence.quote).decode(),
    }


def evidence_json(identity: AttestedIdentity) -> bytes:
    return json.dumps(evidence_document(identity), sort_keys=True).encode()


def rest_handler(identity: AttestedIdentity) -> Any:
    """The aiohttp handler of `GET /v1/attestation`."""
    from aiohttp import web

    answer = evidence_json(identity)

    async def get(_request: web.Request) -> web.Response:
        return web.Response(body=answer, content_type="application/json")

    return get


def grpc_attestation_handler(identity: AttestedIdentity) -> Any:
    """A gRPC handler for `sealserve.v1.Attestation/Get`: empty request, the evidence document
    as JSON bytes (no protobuf schema to ship; any gRPC client can call it with raw bytes)."""
    import grpc

    answer = evidence_json(identity)

    def get(_request: bytes, _context: Any) -> bytes:
        return answer

    return grpc.method_handlers_generic_handler(
        "sealserve.v1.Attestation",
        {
            "Get": grpc.unary_unary_rpc_method_handler(
                get, request_deserializer=None, response_serializer=None
            )
        },
    )


class BrokeredIdentity:
    """A TLS identity the key broker certifies (`serve --key_broker_tls_name NAME`): a key
    pair made in memory and bound to the server's attested KBS session at once (so the
    session's first attestation, which also fetches the model keys, binds it), a CSR sent
    over that session, and the chain the KBS issues (`kbs.server_ca`), carrying the verified
    claims. `start(given)` obtains the first certificate; a daemon thread then renews it at
    two thirds of its lifetime with a new key, which a new attestation binds, retrying until
    it expires. `current()` is what new TLS connections get. Thread safe."""

    def __init__(
        self,
        session: Any,  # kbs.client.AttestedSession
        name: str,
        given: SSLConfig | None = None,
        *,
        clock: Any = time.time,
    ) -> None:
        self._session = session
        self.name = name
        self._given = given
        self._clock = clock
        self._lock = threading.Lock()
        self._listeners: list[Any] = []
        self._first_key: ec.EllipticCurvePrivateKey | None = self._bound_key()
        self._config: SSLConfig | None = None
        self._not_after = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_forever, daemon=True)

    def current(self) -> SSLConfig:
        with self._lock:
            if self._config is None:
                raise RuntimeError("BrokeredIdentity.current() before start()")
            return self._config

    def add_listener(self, listener: Any) -> None:
        """`listener(config)` after each renewal (from the renewal thread)."""
        self._listeners.append(listener)

    def start(self, given: SSLConfig | None = None) -> BrokeredIdentity:
        """The first certificate (client verification as `given`, or the constructor's, says;
        its own key and certificate are not used), then renewals in the background."""
        if given is not None:
            self._given = given
        key, self._first_key = self._first_key, None
        if key is None:
            raise RuntimeError("BrokeredIdentity.start() twice")
        config, not_after = self._obtain(key)
        with self._lock:
            self._config, self._not_after = config, not_after
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _bound_key(self) -> ec.EllipticCurvePrivateKey:
        """A new TLS key, bound in the session's attestations from now on."""
        key = ec.generate_private_key(ec.SECP256R1())
        self._session.bind_tls_key(key.public_key())
        return key

    def _obtain(self, key: ec.EllipticCurvePrivateKey) -> tuple[SSLConfig, float]:
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, self.name)]))
            .sign(key, hashes.SHA256())
        )
        chain = self._session.server_certificate(
            self.name, csr.public_bytes(serialization.Encoding.PEM).decode()
        )
        leaf = x509.load_pem_x509_certificate(chain.encode())
        if leaf.public_key() != key.public_key():
            raise SealserveError(
                "the key broker certified another key than this server's", code=Code.DATA_LOSS
            )
        config = SSLConfig(
            server_key=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
            server_cert=chain,
            custom_ca=self._given.custom_ca if self._given else "",
            client_verify=self._given.client_verify if self._given else False,
        )
        return config, leaf.not_valid_after_utc.timestamp()

    def _renew_forever(self) -> None:
        while not self._stop.is_set():
            now = self._clock()
            with self._lock:
                not_after = self._not_after
            issued_for = max(1.0, not_after - now)
            if self._stop.wait(issued_for * 2 / 3):
                return
            while not self._stop.is_set():
                try:
                    config, not_after = self._obtain(self._bound_key())
                except SealserveError as err:
                    left = not_after - self._clock()
                    log.warning(
                        "renewing the TLS certificate of %s failed (%s); %.0f s left",
                        self.name,
                        err.message,
                        max(0.0, left),
                    )
                    if self._stop.wait(min(30.0, max(1.0, left / 4))):
                        return
                    continue
                with self._lock:
                    self._config, self._not_after = config, not_after
                log.info("TLS certificate of %s renewed by the key broker", self.name)
                for listener in self._listeners:
                    listener(config)
                break
