"""The attested server's TLS identity: a key pair made in memory at start, and a self-signed
RA-TLS certificate whose TEE evidence binds that key (`attestation.ratls`, the TCG DICE
format Gramine >= 1.8 produces, plus Gramine's legacy extension).

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
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sealserve.attestation.evidence import Attester
from sealserve.attestation.ratls import (
    ATTESTED_SERVER_NAME,
    evidence_from_certificate,
    make_certificate,
)
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
