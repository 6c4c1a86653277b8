"""The resource answer of the KBS protocol: a JWE in the flattened JSON serialization.

What Trustee's KBS sends and its clients (attestation-agent, `kbs_protocol`) read
(`kbs/docs/kbs_attestation_protocol.md` "Resource Response", `kbs-types` `Response`):
`{"protected", "encrypted_key", "iv", "ciphertext", "tag"}`, every member base64url without
padding (RFC 7516 §7.2.2). Key management by the TEE key's type: `ECDH-ES+A256KW` (RFC 7518
§4.6, Concat KDF over SHA-256 with empty PartyUInfo/PartyVInfo, the ephemeral key as `epk`
in the protected header) for EC keys, `RSA-OAEP-256` for RSA keys; content `A256GCM` whose
additional authenticated data is ASCII(BASE64URL(protected header)) (RFC 7516 §5.1 step 14).

Why the header is written by hand: a Trustee client does not authenticate the header bytes
it received; it parses them into `{alg, enc, ...}` and re-serialises them with serde_json to
rebuild the AAD (`ProtectedHeader::generate_aad`). So the bytes must already be in the one
form that round-trips whichever way serde_json orders maps: compact, `alg` then `enc`, then
the other members with their keys sorted (`{"alg":…,"enc":…,"epk":{"crv","kty","x","y"}}`).
joserfc's JSON serialization puts `epk` in the unprotected per-recipient header instead,
which Trustee clients do not read. The optional `aad` member (extra AAD, RFC 7516 §5.1 step
14) is never sent, as Trustee's KBS does not send it: a client following the RFC would fold
it into the AAD and a Trustee client would not, so any value breaks one of them.

`open_resource` reads the flattened form (and the compact form older sealserve KBSs send)
with joserfc, an independent implementation: what we seal is checked by another library.

Pure and thread-safe. The content key and the plaintext are never logged.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import os
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from joserfc.registry import HeaderParameter, InvalidHeaderValueError

from sealserve.errors import InvalidArgument

ECDH_ES_A256KW = "ECDH-ES+A256KW"
RSA_OAEP_256 = "RSA-OAEP-256"
A256GCM = "A256GCM"
#: The members a flattened JWE from the KBS carries (RFC 7516 §7.2.2).
MEMBERS = ("protected", "encrypted_key", "iv", "ciphertext", "tag")
_CURVES = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
_CEK_BYTES = 32
_IV_BYTES = 12


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise InvalidArgument(f"{what} must be a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{what} is not base64url") from None


def protected_header_bytes(header: dict[str, Any]) -> bytes:
    """`{"alg","enc", then the rest with sorted keys}`, compact (see the module docstring)."""
    rest = {k: v for k, v in header.items() if k not in ("alg", "enc")}
    head = {"alg": header["alg"], "enc": header["enc"]}
    text = json.dumps(head, separators=(",", ":"))
    if rest:
        text = text[:-1] + "," + json.dumps(rest, separators=(",", ":"), sort_keys=True)[1:]
    return text.encode("utf-8")


def _concat_kdf(shared: bytes, alg: str, bits: int) -> bytes:
    """RFC 7518 §4.6.2: one SHA-256 round is enough for a 256-bit key."""
    other_info = (
        len(alg).to_bytes(4, "big")
        + alg.encode("ascii")
        + (0).to_bytes(4, "big")  # PartyUInfo: empty
        + (0).to_bytes(4, "big")  # PartyVInfo: empty
        + bits.to_bytes(4, "big")  # SuppPubInfo: keydatalen
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update((1).to_bytes(4, "big") + shared + other_info)
    return digest.finalize()[: bits // 8]


def _wrap_for_ec(jwk: dict[str, Any], cek: bytes) -> tuple[dict[str, Any], bytes]:
    curve = _CURVES[jwk["crv"]]
    size = (curve.key_size + 7) // 8
    peer = ec.EllipticCurvePublicNumbers(
        int.from_bytes(b64url_decode(jwk["x"], "tee-pubkey x"), "big"),
        int.from_bytes(b64url_decode(jwk["y"], "tee-pubkey y"), "big"),
        curve,
    ).public_key()
    ephemeral = ec.generate_private_key(curve)
    shared = ephemeral.exchange(ec.ECDH(), peer)
    kek = _concat_kdf(shared, ECDH_ES_A256KW, 256)
    numbers = ephemeral.public_key().public_numbers()
    epk = {
        "crv": jwk["crv"],
        "kty": "EC",
        "x": b64url(numbers.x.to_bytes(size, "big")),
        "y": b64url(numbers.y.to_bytes(size, "big")),
    }
    header = {"alg": ECDH_ES_A256KW, "enc": A256GCM, "epk": epk}
    return header, aes_key_wrap(kek, cek)


def _wrap_for_rsa(jwk: dict[str, Any], cek: bytes) -> tuple[dict[str, Any], bytes]:
    public = rsa.RSAPublicNumbers(
        int.from_bytes(b64url_decode(jwk["e"], "tee-pubkey e"), "big"),
        int.from_bytes(b64url_decode(jwk["n"], "tee-pubkey n"), "big"),
    ).public_key()
    oaep = padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
    )
    return {"alg": RSA_OAEP_256, "enc": A256GCM}, public.encrypt(cek, oaep)


def seal_resource(
    secret: bytes, tee_pubkey: dict[str, Any], extra_header: dict[str, Any] | None = None
) -> dict[str, str]:
    """`secret` as a flattened-JSON JWE to the TEE's public JWK (already validated by
    `protocol.TeePubKey`: a public EC P-256/384/521 or RSA ≥ 2048 key). `extra_header`
    members join the protected header (authenticated with the ciphertext; other clients
    ignore members they do not know, RFC 7516 §4)."""
    cek = AESGCM.generate_key(bit_length=8 * _CEK_BYTES)
    if tee_pubkey.get("kty") == "EC":
        header, encrypted_key = _wrap_for_ec(tee_pubkey, cek)
    elif tee_pubkey.get("kty") == "RSA":
        header, encrypted_key = _wrap_for_rsa(tee_pubkey, cek)
    else:
        raise InvalidArgument("tee-pubkey kty must be EC or RSA")
    protected = b64url(protected_header_bytes({**header, **(extra_header or {})}))
    iv = os.urandom(_IV_BYTES)
    sealed = AESGCM(cek).encrypt(iv, secret, protected.encode("ascii"))
    del cek
    return {
        "protected": protected,
        "encrypted_key": b64url(encrypted_key),
        "iv": b64url(iv),
        "ciphertext": b64url(sealed[:-16]),
        "tag": b64url(sealed[-16:]),
    }


#: sealserve's protected-header member: the key's lease, `{"seconds": N,
#: "keep_when_unreachable": bool}` (`attestation.policy`'s key_lease_seconds)
LEASE_HEADER = "sealserve-lease"


def _check_lease(value: Any) -> None:
    if not (
        isinstance(value, dict)
        and isinstance(value.get("seconds"), int)
        and not isinstance(value.get("seconds"), bool)
        and value["seconds"] > 0
        and isinstance(value.get("keep_when_unreachable", False), bool)
    ):
        raise InvalidHeaderValueError(f"{LEASE_HEADER} must be {{seconds, keep_when_unreachable}}")


@functools.cache
def _registry() -> jwe.JWERegistry:
    return jwe.JWERegistry(
        header_registry={LEASE_HEADER: HeaderParameter("the key's lease", _check_lease)},
        algorithms=[ECDH_ES_A256KW, RSA_OAEP_256, A256GCM],
    )


def open_resource(body: bytes | str, key: ECKey | RSAKey) -> bytes:
    """The plaintext of a KBS resource answer: a flattened JSON JWE (Trustee, sealserve ≥ this
    version) or a compact JWE (older sealserve KBSs). ValueError if it does not decrypt."""
    return open_resource_with_header(body, key)[0]


def open_resource_with_header(
    body: bytes | str, key: ECKey | RSAKey
) -> tuple[bytes, dict[str, Any]]:
    """`open_resource`, and the JWE's protected header (authenticated)."""
    text = body.decode("ascii", "replace") if isinstance(body, bytes) else body
    text = text.strip()
    try:
        if text.startswith("{"):
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("the resource answer is not a JWE object")
            if "aad" in data and data["aad"] == data.get("protected"):
                # Trustee's protocol document describes `aad` as the protected header itself,
                # which is the AAD without the member; drop it rather than fold it in twice.
                data = {k: v for k, v in data.items() if k != "aad"}
            opened = jwe.decrypt_json(data, key, registry=_registry())  # type: ignore[arg-type]
            plaintext, header = opened.plaintext, dict(opened.protected)
        else:
            compact = jwe.decrypt_compact(text, key, registry=_registry())
            plaintext, header = compact.plaintext, dict(compact.protected)
    except (JoseError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"the JWE does not decrypt ({type(err).__name__})") from None
    return bytes(plaintext or b""), header
