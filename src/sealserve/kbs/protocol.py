"""The Trustee KBS protocol v0.4.0 ("RCAR"): messages, the report_data binding, nonces, JWKs.

Owns the wire shapes (`/work/shared/reference/attestation.md` §3, Confidential Containers
Trustee `kbs/docs/kbs_attestation_protocol.md`):

- Request  (`POST /kbs/v0/auth`):   `{"version": "0.4.0", "tee": ..., "extra-params": ...}`
- Challenge (its answer):           `{"nonce": base64(32 random bytes), "extra-params": ""}`
  plus the `kbs-session-id` cookie;
- Attestation (`POST /kbs/v0/attest`): `{"runtime-data": {"nonce", "tee-pubkey": JWK},
  "tee-evidence": {"primary_evidence": {"quote": base64, ...}, "additional_evidence":
  "<JSON string>"}, "init-data"?}` → `{"token": JWT}`. The evidence is Trustee's composite
  form (kbs `attestation/backend.rs`); the primary evidence of SGX and of the simulated TEE is
  `{"quote"}`, of TDX `{"quote", "cc_eventlog"?}` (Trustee's verifier `SgxEvidence` /
  `TdxEvidence`). sealserve clients before this version sent `{"quote": base64}` directly
  as `tee-evidence`; that shape is still read. Additional evidence (other devices, e.g. a
  GPU) cannot be verified here and is refused unless empty (`""` or `"{}"`);
- Response: the resource as a JWE in the flattened JSON serialization (`kbs.jwe`);
- errors: RFC 7807 problem JSON.

The binding (`report_data_for`): the TEE's 64-byte report_data is SHA-384 of the RFC 8785
canonical JSON of `{"additional-evidence", "nonce", "tee-pubkey"}`, zero-padded to 64 bytes,
where `additional-evidence` is the composite evidence's `additional_evidence` string (what
Trustee's KBS hands its attestation service as the primary evidence's runtime data).
A quote is therefore only good for the one nonce (one session) and the one ephemeral key the
resource is encrypted to: a quote replayed with another key does not match.

sealserve's extension, the TLS key binding: an attested server that wants the KBS to certify
its TLS key (`kbs.server_ca`) adds `"tls-spki-sha256"` to `runtime-data`, the lowercase hex
SHA-256 of the DER SubjectPublicKeyInfo of that key (what Gramine's RA-TLS binds too), and
the canonical JSON hashed into report_data then has that fourth member. Without it the
binding is byte for byte Trustee's, so Trustee clients and older sealserve servers attest as
before (they just cannot get a server certificate); a KBS older than this extension refuses
an attestation that carries it (the report_data does not match its three-member hash).

Invariants: a `TeePubKey` is always a *public* EC (P-256/P-384/P-521) or RSA (≥ 2048 bits)
key; private JWK members are refused. Resource paths are exactly three safe segments.

Pure and thread-safe (values only; `new_nonce` draws from `secrets`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from joserfc.jwk import ECKey, RSAKey

from sealserve.errors import InvalidArgument

PROTOCOL_VERSION = "0.4.0"
SESSION_COOKIE = "kbs-session-id"
NONCE_BYTES = 32
REPORT_DATA_SIZE = 64
#: TEE names accepted in a Request ("sim" is sealserve's simulated SGX; Trustee calls its
#: simulated TEE "sample", which we accept as an alias of "sim").
TEES = ("sgx", "tdx", "sim")
_TEE_ALIASES = {"sample": "sim"}
_PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_EC_CURVES = ("P-256", "P-384", "P-521")
_MIN_RSA_BITS = 2048
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: the runtime-data member binding a TLS key (sealserve's extension; see the module docstring)
TLS_SPKI_MEMBER = "tls-spki-sha256"
#: The JWE key-management algorithm per key type (protocol §3: ECDH-ES+A256KW for EC keys,
#: RSA-OAEP-256 for RSA), content encryption always A256GCM.
JWE_ALG = {"EC": "ECDH-ES+A256KW", "RSA": "RSA-OAEP-256"}
JWE_ENC = "A256GCM"


def b64encode(data: bytes) -> str:
    """Standard base64 with padding (what Trustee uses for nonces and quotes)."""
    return base64.b64encode(data).decode("ascii")


def b64decode(text: Any, what: str) -> bytes:
    """Standard or URL-safe base64, padded or not; InvalidArgument naming `what` otherwise."""
    if not isinstance(text, str) or not text:
        raise InvalidArgument(f"{what} must be a non-empty base64 string")
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{what} is not valid base64") from None


def new_nonce() -> str:
    """A fresh challenge nonce: base64 of 32 random bytes."""
    return b64encode(secrets.token_bytes(NONCE_BYTES))


def normalise_tee(tee: Any) -> str:
    if not isinstance(tee, str):
        raise InvalidArgument("tee must be a string")
    tee = _TEE_ALIASES.get(tee.lower(), tee.lower())
    if tee not in TEES:
        raise InvalidArgument(f"unsupported tee {tee!r} (supported: {', '.join(TEES)})")
    return tee


def check_resource_path(path: str) -> str:
    """`<repository>/<type>/<tag>`, each segment `[A-Za-z0-9_][A-Za-z0-9._-]*` (no `..`)."""
    if not isinstance(path, str):
        raise InvalidArgument("resource path must be a string")
    parts = path.strip("/").split("/")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(p) for p in parts):
        raise InvalidArgument(
            f"resource path {path!r} must be <repository>/<type>/<tag> "
            "(letters, digits, '.', '_', '-')"
        )
    return "/".join(parts)


# --- the TEE's public key ---------------------------------------------------------------


@dataclass(frozen=True)
class TeePubKey:
    """The ephemeral public key of a TEE, as its JWK (public members only)."""

    jwk: dict[str, Any] = field(hash=False)

    @classmethod
    def from_jwk(cls, value: Any) -> TeePubKey:
        if not isinstance(value, dict):
            raise InvalidArgument("tee-pubkey must be a JWK object")
        if any(m in value for m in _PRIVATE_JWK_MEMBERS):
            raise InvalidArgument("tee-pubkey carries private key material; send the public key")
        kty = value.get("kty")
        try:
            if kty == "EC":
                if value.get("crv") not in _EC_CURVES:
                    raise InvalidArgument(f"tee-pubkey curve must be one of {_EC_CURVES}")
                ECKey.import_key(dict(value))
            elif kty == "RSA":
                if value.get("alg") == "RSA1_5":
                    # Trustee still answers it (deprecated); a PKCS#1 v1.5 key-wrap invites
                    # padding-oracle attacks, and the client would fail to read our OAEP answer
                    raise InvalidArgument(
                        "tee-pubkey alg RSA1_5 is not supported (deprecated): use RSA-OAEP-256 "
                        "or an EC key (ECDH-ES+A256KW)"
                    )
                key = RSAKey.import_key(dict(value))
                n = int.from_bytes(b64decode(value["n"], "tee-pubkey n"), "big")
                if n.bit_length() < _MIN_RSA_BITS:
                    raise InvalidArgument(f"tee-pubkey RSA key must have ≥ {_MIN_RSA_BITS} bits")
                del key
            else:
                raise InvalidArgument("tee-pubkey kty must be EC or RSA")
        except InvalidArgument:
            raise
        except Exception as err:  # joserfc raises ValueError and its own error types
            raise InvalidArgument(f"tee-pubkey is not a valid {kty} JWK ({err})") from None
        return cls(jwk=dict(value))

    @property
    def kty(self) -> str:
        return str(self.jwk["kty"])

    def jose_key(self) -> ECKey | RSAKey:
        # The KBS picks the algorithm from the key type (protocol §3), so the TEE's own
        # `alg` / `use` / `key_ops` hints must not veto it.
        members = {k: v for k, v in self.jwk.items() if k not in ("alg", "use", "key_ops")}
        if self.kty == "EC":
            return ECKey.import_key(members)
        return RSAKey.import_key(members)

    def thumbprint(self) -> str:
        """RFC 7638 thumbprint (for audit records and token binding)."""
        return self.jose_key().thumbprint()


def tee_pubkey_jwk(key: ECKey | RSAKey) -> dict[str, Any]:
    """The public JWK a TEE sends for its ephemeral key, with the `alg` it expects."""
    jwk = dict(key.as_dict(private=False))
    jwk["alg"] = JWE_ALG[str(jwk["kty"])]
    return jwk


# --- the binding ------------------------------------------------------------------------


def spki_sha256(public_key: PublicKeyTypes) -> str:
    """Lowercase hex SHA-256 of a public key's DER SubjectPublicKeyInfo: how the runtime data
    names a TLS key (`TLS_SPKI_MEMBER`)."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def check_spki_sha256(value: Any) -> str:
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
        raise InvalidArgument(
            f"runtime-data {TLS_SPKI_MEMBER} must be the lowercase hex SHA-256 (64 digits) of "
            "the TLS key's DER SubjectPublicKeyInfo"
        )
    return value


def report_data_for(
    nonce: str,
    tee_pubkey: dict[str, Any],
    additional_evidence: str = "",
    tls_spki_sha256: str | None = None,
) -> bytes:
    """The 64 report_data bytes binding a quote to `nonce` and `tee_pubkey` (protocol §3):
    SHA-384 of RFC 8785 canonical JSON `{"additional-evidence", "nonce", "tee-pubkey"}`,
    followed by 16 zero bytes; with `tls_spki_sha256`, that TLS key as a fourth member
    (sealserve's extension)."""
    runtime: dict[str, Any] = {
        "additional-evidence": additional_evidence,
        "nonce": nonce,
        "tee-pubkey": tee_pubkey,
    }
    if tls_spki_sha256 is not None:
        runtime[TLS_SPKI_MEMBER] = check_spki_sha256(tls_spki_sha256)
    digest = hashlib.sha384(rfc8785.dumps(runtime)).digest()
    return digest + bytes(REPORT_DATA_SIZE - len(digest))


# --- messages ---------------------------------------------------------------------------


def _object(body: Any, what: str) -> dict[str, Any]:
    if isinstance(body, bytes | str):
        try:
            body = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InvalidArgument(f"{what} is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return body


@dataclass(frozen=True)
class Request:
    """`POST /kbs/v0/auth` body."""

    tee: str
    version: str = PROTOCOL_VERSION
    extra_params: Any = ""

    @classmethod
    def parse(cls, body: Any) -> Request:
        data = _object(body, "auth request")
        version = data.get("version")
        if not isinstance(version, str) or version.split(".")[:2] != ["0", "4"]:
            raise InvalidArgument(f"unsupported KBS protocol version {version!r} (need 0.4.x)")
        return cls(
            tee=normalise_tee(data.get("tee")),
            version=version,
            extra_params=data.get("extra-params", ""),
        )

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "tee": self.tee, "extra-params": self.extra_params}


@dataclass(frozen=True)
class Challenge:
    """The answer to a Request (with the `kbs-session-id` cookie)."""

    nonce: str
    extra_params: Any = ""

    def to_json(self) -> dict[str, Any]:
        return {"nonce": self.nonce, "extra-params": self.extra_params}

    @classmethod
    def parse(cls, body: Any) -> Challenge:
        data = _object(body, "challenge")
        nonce = data.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            raise InvalidArgument("challenge has no nonce")
        return cls(nonce=nonce, extra_params=data.get("extra-params", ""))


@dataclass(frozen=True)
class Attestation:
    """`POST /kbs/v0/attest` body. `quote` is the decoded primary evidence's quote (public
    data); `cc_eventlog` the TDX CCEL, carried along but not verified (the policy pins RTMRs,
    not event logs); `tls_spki_sha256` the TLS key the TEE binds (None: none)."""

    nonce: str
    tee_pubkey: TeePubKey
    quote: bytes = field(repr=False)
    additional_evidence: str = ""
    init_data: Any = None
    cc_eventlog: str | None = field(default=None, repr=False)
    tls_spki_sha256: str | None = None

    @classmethod
    def parse(cls, body: Any, *, tee: str | None = None) -> Attestation:
        """Either evidence shape (see the module docstring). `tee`: the session's TEE type,
        for messages."""
        data = _object(body, "attestation")
        runtime = data.get("runtime-data")
        if not isinstance(runtime, dict):
            raise InvalidArgument("attestation has no runtime-data object")
        nonce = runtime.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            raise InvalidArgument("runtime-data has no nonce")
        evidence = _object(data.get("tee-evidence"), "tee-evidence")
        if "primary_evidence" in evidence:  # Trustee's composite evidence (0.4.0)
            primary = _object(evidence["primary_evidence"], "tee-evidence primary_evidence")
            additional = evidence.get("additional_evidence", "")
            if not isinstance(additional, str):
                raise InvalidArgument(
                    "tee-evidence additional_evidence must be a JSON string (possibly empty)"
                )
            _refuse_additional_evidence(additional)
        else:  # sealserve's earlier shape: the primary evidence itself
            primary = evidence
            additional = runtime.get("additional-evidence", "")
            if not isinstance(additional, str):
                raise InvalidArgument("runtime-data additional-evidence must be a string")
            _refuse_additional_evidence(additional)
        if "quote" not in primary:
            kind = f"{tee} " if tee else ""
            raise InvalidArgument(
                f'the {kind}primary evidence has no quote (expected {{"quote": base64}}, as '
                "SGX and TDX attesters send; other evidence formats are not supported)"
            )
        quote = b64decode(primary.get("quote"), "tee-evidence quote")
        eventlog = primary.get("cc_eventlog")
        if eventlog is not None and not isinstance(eventlog, str):
            raise InvalidArgument("tee-evidence cc_eventlog must be a base64 string")
        tls_spki = None  # absent; present, it must be well formed (even a JSON null is not)
        if TLS_SPKI_MEMBER in runtime:
            tls_spki = check_spki_sha256(runtime[TLS_SPKI_MEMBER])
        return cls(
            nonce=nonce,
            tee_pubkey=TeePubKey.from_jwk(runtime.get("tee-pubkey")),
            quote=quote,
            additional_evidence=additional,
            init_data=data.get("init-data"),
            cc_eventlog=eventlog,
            tls_spki_sha256=tls_spki,
        )

    def to_json(self) -> dict[str, Any]:
        """Trustee's composite form."""
        primary: dict[str, Any] = {"quote": b64encode(self.quote)}
        if self.cc_eventlog is not None:
            primary["cc_eventlog"] = self.cc_eventlog
        runtime: dict[str, Any] = {"nonce": self.nonce, "tee-pubkey": self.tee_pubkey.jwk}
        if self.tls_spki_sha256 is not None:
            runtime[TLS_SPKI_MEMBER] = self.tls_spki_sha256
        out: dict[str, Any] = {
            "runtime-data": runtime,
            "tee-evidence": {
                "primary_evidence": primary,
                "additional_evidence": self.additional_evidence,
            },
        }
        if self.init_data is not None:
            out["init-data"] = self.init_data
        return out

    def report_data(self) -> bytes:
        return report_data_for(
            self.nonce, self.tee_pubkey.jwk, self.additional_evidence, self.tls_spki_sha256
        )


def _refuse_additional_evidence(additional: str) -> None:
    """Only empty additional evidence: this KBS verifies DCAP quotes, nothing else, and a
    policy cannot speak about devices it never saw verified."""
    if additional.strip() in ("", "{}"):
        return
    try:
        kinds = sorted(json.loads(additional))
    except (json.JSONDecodeError, TypeError):
        raise InvalidArgument("tee-evidence additional_evidence is not a JSON object") from None
    raise InvalidArgument(
        f"additional evidence ({', '.join(map(str, kinds)) or 'unknown'}) cannot be verified "
        "by this KBS: send only the primary TEE's evidence"
    )


#: RFC 7807 `type` prefix Trustee uses for its errors.
PROBLEM_TYPE_PREFIX = "https://github.com/confidential-containers/kbs/errors/"


def problem(kind: str, detail: str, status: int) -> dict[str, Any]:
    """An RFC 7807 problem document."""
    return {"type": PROBLEM_TYPE_PREFIX + kind, "title": kind, "status": status, "detail": detail}
