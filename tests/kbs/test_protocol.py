"""The protocol's pure parts: the report_data binding, messages, JWK checks."""

from __future__ import annotations

import hashlib
import json

import pytest
from joserfc.jwk import ECKey

from sealserve.errors import InvalidArgument
from sealserve.kbs.protocol import (
    Attestation,
    Request,
    TeePubKey,
    check_resource_path,
    new_nonce,
    report_data_for,
    tee_pubkey_jwk,
)

JWK = {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "AAAA", "y": "BBBB"}


def test_report_data_is_sha384_of_rfc8785_json_zero_padded() -> None:
    # RFC 8785 by hand for this input: keys sorted, no spaces.
    canonical = (
        '{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":'
        '{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"AAAA","y":"BBBB"}}'
    )
    expected = hashlib.sha384(canonical.encode()).digest() + bytes(16)
    assert report_data_for("bm9uY2U=", JWK) == expected
    assert len(expected) == 64
    assert report_data_for("bm9uY2U=", {**JWK, "x": "AAAB"}) != expected
    assert report_data_for("bm9uY2U=", JWK, "extra") != expected


def test_a_bound_tls_key_is_a_fourth_member_of_the_hashed_runtime_data() -> None:
    """sealserve's extension (`kbs.server_ca` certifies only this key); absent, the hash is
    Trustee's three-member one above, byte for byte."""
    spki = hashlib.sha256(b"a SubjectPublicKeyInfo").hexdigest()
    canonical = (
        '{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":'
        '{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"AAAA","y":"BBBB"},'
        f'"tls-spki-sha256":"{spki}"}}'
    )
    expected = hashlib.sha384(canonical.encode()).digest() + bytes(16)
    assert report_data_for("bm9uY2U=", JWK, tls_spki_sha256=spki) == expected
    assert report_data_for("bm9uY2U=", JWK, tls_spki_sha256=None) == report_data_for(
        "bm9uY2U=", JWK
    )
    jwk = tee_pubkey_jwk(ECKey.generate_key("P-256"))
    bound = Attestation(
        nonce="bm9uY2U=", tee_pubkey=TeePubKey.from_jwk(jwk), quote=b"q", tls_spki_sha256=spki
    ).to_json()
    assert bound["runtime-data"]["tls-spki-sha256"] == spki
    parsed = Attestation.parse(json.dumps(bound))
    assert parsed.tls_spki_sha256 == spki
    assert parsed.report_data() == report_data_for("bm9uY2U=", jwk, tls_spki_sha256=spki)
    del bound["runtime-data"]["tls-spki-sha256"]
    assert Attestation.parse(bound).tls_spki_sha256 is None
    with pytest.raises(InvalidArgument, match="tls-spki-sha256"):
        report_data_for("bm9uY2U=", JWK, tls_spki_sha256=spki.upper())


def test_nonces_are_fresh_32_bytes() -> None:
    import base64

    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(base64.b64decode(n)) == 32 for n in nonces)


def test_request_parsing() -> None:
    assert Request.parse(b'{"version": "0.4.0", "tee": "sample"}').tee == "sim"
    with pytest.raises(InvalidArgument, match="version"):
        Request.parse({"version": "0.1.0", "tee": "sgx"})
    with pytest.raises(InvalidArgument, match="unsupported tee"):
        Request.parse({"version": "0.4.0", "tee": "sev"})
    with pytest.raises(InvalidArgument, match="JSON"):
        Request.parse(b"{")


def test_tee_pubkey_must_be_public_and_strong() -> None:
    ec = ECKey.generate_key("P-256")
    assert TeePubKey.from_jwk(tee_pubkey_jwk(ec)).kty == "EC"
    with pytest.raises(InvalidArgument, match="private"):
        TeePubKey.from_jwk(ec.as_dict(private=True))
    with pytest.raises(InvalidArgument, match="kty"):
        TeePubKey.from_jwk({"kty": "oct", "kk": "x"})
    with pytest.raises(InvalidArgument):
        TeePubKey.from_jwk({"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "BBBB"})
    with pytest.raises(InvalidArgument, match="curve"):
        TeePubKey.from_jwk({"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "BB"})


def test_attestation_round_trip_and_errors() -> None:
    jwk = tee_pubkey_jwk(ECKey.generate_key("P-256"))
    attestation = Attestation(nonce="bm9uY2U=", tee_pubkey=TeePubKey.from_jwk(jwk), quote=b"q")
    parsed = Attestation.parse(json.dumps(attestation.to_json()))
    assert parsed.quote == b"q" and parsed.report_data() == report_data_for("bm9uY2U=", jwk)
    assert "q'" not in repr(parsed)
    # tee-evidence as a JSON string (older Trustee clients) is accepted too
    body = attestation.to_json()
    body["tee-evidence"] = json.dumps(body["tee-evidence"])
    assert Attestation.parse(body).quote == b"q"
    with pytest.raises(InvalidArgument, match="runtime-data"):
        Attestation.parse({"tee-evidence": {"quote": "cQ=="}})
    with pytest.raises(InvalidArgument, match="base64"):
        body = attestation.to_json()
        body["tee-evidence"]["primary_evidence"]["quote"] = "!!"
        Attestation.parse(body)


def test_resource_paths() -> None:
    assert check_resource_path("/repo/type/tag") == "repo/type/tag"
    for bad in ("repo/type", "repo/../tag", "repo/type/.hidden", "a/b/c/d", ""):
        with pytest.raises(InvalidArgument):
            check_resource_path(bad)


def test_jose_key_ignores_the_tees_alg_hints() -> None:
    from joserfc import jwe

    key = ECKey.generate_key("P-256")
    jwk = {**tee_pubkey_jwk(key), "alg": "ECDH-ES", "use": "sig", "key_ops": ["verify"]}
    public = TeePubKey.from_jwk(jwk).jose_key()
    algs = ["ECDH-ES+A256KW", "A256GCM"]
    sealed = jwe.encrypt_compact({"alg": algs[0], "enc": algs[1]}, b"k", public, algorithms=algs)
    assert jwe.decrypt_compact(sealed, key, algorithms=algs).plaintext == b"k"
