"""Wire compatibility with Trustee (protocol 0.4.0, issue #13 §5b), from Trustee's own
documents and code, not from ours:

- `kbs/docs/kbs_attestation_protocol.md` (confidential-containers/trustee): message field
  names, the `kbs-session-id` cookie, the resource answer as a flattened JSON JWE, RFC 7807
  errors with the `https://github.com/confidential-containers/kbs/errors/` type prefix;
- `kbs/src/attestation/backend.rs`: composite evidence `{primary_evidence,
  additional_evidence}`, the primary evidence's runtime data `{tee-pubkey, nonce,
  additional-evidence}` where `additional-evidence` is the composite's string;
- `attestation-service/src/lib.rs`: structured runtime data hashed as canonical JSON
  (`serde_json_canonicalizer`), SHA-384 for SGX/TDX (`kbs/src/attestation/coco/builtin.rs`),
  zero-padded to 64 bytes (`deps/verifier/src/lib.rs` `regularize_data`); its test vector;
- `deps/verifier/src/{sgx,tdx}/mod.rs`: `SgxEvidence {quote}`, `TdxEvidence {cc_eventlog?,
  quote}` (base64);
- `kbs/src/jwe/mod.rs`: `ECDH-ES+A256KW` (Concat KDF, `epk` in the protected header),
  `RSA-OAEP-256`, content `A256GCM`, `aad` member left out;
- virtee/kbs-types `src/lib.rs`: `Request`/`Challenge`/`Attestation` field names, `Tee`
  names, `ProtectedHeader::generate_aad` (serde re-serialisation of the parsed header) and
  its test vector, `Response` with base64url-no-pad members.

`TrusteeClient` below is a Trustee-style client written from those documents (its own JWE
code on `cryptography`, the header re-serialised as a Trustee client does); it gets keys from
our KBS. `TrusteeKbs` is a Trustee-style KBS (the same documents) that our client gets keys
from.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap
from joserfc.jwk import ECKey

from sealserve.attestation.sim import SimAttester
from sealserve.kbs.client import AttestedSession, KbsClient, KbsDenied
from sealserve.kbs.jwe import protected_header_bytes
from sealserve.kbs.protocol import report_data_for
from tests.kbs.conftest import RESOURCE, SECRET, Kbs

PROBLEM_PREFIX = "https://github.com/confidential-containers/kbs/errors/"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    assert "=" not in text, "base64url members carry no padding (kbs-types URL_SAFE_NO_PAD)"
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def serde_header(header: dict[str, Any]) -> bytes:
    """What `ProtectedHeader`'s serde serialisation yields: `alg`, `enc`, then the flattened
    other fields (serde_json's map: keys sorted), compact."""
    others = {k: header[k] for k in sorted(header) if k not in ("alg", "enc")}
    out = {"alg": header["alg"], "enc": header["enc"], **others}
    return json.dumps(out, separators=(",", ":"), sort_keys=False).encode()


def concat_kdf(z: bytes, alg: str) -> bytes:
    info = len(alg).to_bytes(4, "big") + alg.encode() + bytes(8) + (256).to_bytes(4, "big")
    return hashlib.sha256((1).to_bytes(4, "big") + z + info).digest()


def runtime_hash(nonce: str, jwk: dict[str, Any], additional: str) -> bytes:
    data = {"tee-pubkey": jwk, "nonce": nonce, "additional-evidence": additional}
    return hashlib.sha384(rfc8785.dumps(data)).digest().ljust(64, b"\0")


# --- a Trustee-style client against our KBS -------------------------------------------------


class TrusteeClient:
    """attestation-agent's RCAR flow as the documents describe it."""

    def __init__(self, kbs: Kbs, attester: SimAttester, key: str = "ec") -> None:
        self.client = KbsClient(kbs.url, ca_pem=kbs.ca, attempts=1)
        self.attester = attester
        if key == "ec":
            self.private: Any = ec.generate_private_key(ec.SECP256R1())
            n = self.private.public_key().public_numbers()
            self.jwk = {
                "kty": "EC",
                "crv": "P-256",
                "alg": "ECDH-ES+A256KW",
                "x": b64u(n.x.to_bytes(32, "big")),
                "y": b64u(n.y.to_bytes(32, "big")),
            }
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            n = self.private.public_key().public_numbers()
            self.jwk = {
                "kty": "RSA",
                "alg": "RSA-OAEP-256",
                "n": b64u(n.n.to_bytes(256, "big")),
                "e": b64u(n.e.to_bytes(3, "big")),
            }

    def auth(self, tee: str = "sim") -> tuple[str, str]:
        answer = self.client.call(
            "POST", "/kbs/v0/auth", json_body={"version": "0.4.0", "tee": tee, "extra-params": ""}
        )
        assert answer.status == 200, answer.body
        challenge = json.loads(answer.body)
        assert set(challenge) == {"nonce", "extra-params"}
        cookie = [v for k, v in answer.headers.items() if k.lower() == "set-cookie"]
        assert len(cookie) == 1 and cookie[0].startswith("kbs-session-id=")
        return cookie[0].split(";")[0].split("=", 1)[1], challenge["nonce"]

    def attest(self, tee: str = "sim", additional: str = "", **primary: Any) -> tuple[str, Any]:
        session, nonce = self.auth(tee)
        quote = self.attester.evidence(runtime_hash(nonce, self.jwk, additional)).quote
        body = {
            "runtime-data": {"nonce": nonce, "tee-pubkey": self.jwk},
            "tee-evidence": {
                "primary_evidence": {"quote": base64.b64encode(quote).decode(), **primary},
                "additional_evidence": additional,
            },
        }
        answer = self.client.call(
            "POST",
            "/kbs/v0/attest",
            json_body=body,
            headers={"Cookie": f"kbs-session-id={session}"},
        )
        return session, answer

    def resource(self, headers: dict[str, str], path: str = RESOURCE) -> Any:
        return self.client.call("GET", f"/kbs/v0/resource/{path}", headers=headers)

    def decrypt(self, body: bytes) -> bytes:
        """kbs-types `Response` + guest-components `decrypt_response`: the AAD is rebuilt from
        the parsed header (`generate_aad`), not taken from the bytes received."""
        response = json.loads(body)
        assert set(response) <= {"protected", "encrypted_key", "aad", "iv", "ciphertext", "tag"}
        header = json.loads(unb64u(response["protected"]))
        aad = b64u(serde_header(header)).encode()
        wrapped = unb64u(response["encrypted_key"])
        assert header["enc"] == "A256GCM"
        if header["alg"] == "ECDH-ES+A256KW":
            epk = header["epk"]
            assert epk["kty"] == "EC" and epk["crv"] == "P-256"
            peer = ec.EllipticCurvePublicNumbers(
                int.from_bytes(unb64u(epk["x"]), "big"),
                int.from_bytes(unb64u(epk["y"]), "big"),
                ec.SECP256R1(),
            ).public_key()
            z = self.private.exchange(ec.ECDH(), peer)
            cek = aes_key_unwrap(concat_kdf(z, "ECDH-ES+A256KW"), wrapped)
        else:
            assert header["alg"] == "RSA-OAEP-256"
            oaep = padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
            cek = self.private.decrypt(wrapped, oaep)
        ciphertext = unb64u(response["ciphertext"]) + unb64u(response["tag"])
        return AESGCM(cek).decrypt(unb64u(response["iv"]), ciphertext, aad)


@pytest.mark.parametrize("key", ["ec", "rsa"])
def test_a_trustee_client_gets_the_key_with_the_cookie(
    kbs: Kbs, attester: SimAttester, key: str
) -> None:
    trustee = TrusteeClient(kbs, attester, key)
    session, answer = trustee.attest()
    assert answer.status == 200, answer.body
    assert set(json.loads(answer.body)) == {"token"}
    released = trustee.resource({"Cookie": f"kbs-session-id={session}"})
    assert released.status == 200
    assert released.headers["Content-Type"].startswith("application/json")
    response = json.loads(released.body)
    assert set(response) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
    assert trustee.decrypt(released.body) == SECRET


def test_a_trustee_client_gets_the_key_with_the_token_alone(
    kbs: Kbs, attester: SimAttester
) -> None:
    trustee = TrusteeClient(kbs, attester)
    _, answer = trustee.attest()
    token = json.loads(answer.body)["token"]
    released = trustee.resource({"Authorization": f"Bearer {token}"})
    assert released.status == 200 and trustee.decrypt(released.body) == SECRET


def test_the_tdx_evidence_shape_with_an_event_log_is_read(kbs: Kbs, attester: SimAttester) -> None:
    trustee = TrusteeClient(kbs, attester)
    _, answer = trustee.attest(cc_eventlog=base64.b64encode(b"CCEL").decode())
    assert answer.status == 200, answer.body


@pytest.mark.parametrize("additional", ["", "{}"])
def test_empty_additional_evidence_is_bound_as_sent(
    kbs: Kbs, attester: SimAttester, additional: str
) -> None:
    trustee = TrusteeClient(kbs, attester)
    session, answer = trustee.attest(additional=additional)
    assert answer.status == 200, answer.body
    released = trustee.resource({"Cookie": f"kbs-session-id={session}"})
    assert trustee.decrypt(released.body) == SECRET


def test_evidence_binding_other_additional_evidence_is_refused(
    kbs: Kbs, attester: SimAttester
) -> None:
    """The hash covers `additional-evidence`: a quote made for "" does not pass as "{}"."""
    trustee = TrusteeClient(kbs, attester)
    session, nonce = trustee.auth()
    quote = attester.evidence(runtime_hash(nonce, trustee.jwk, "")).quote
    body = {
        "runtime-data": {"nonce": nonce, "tee-pubkey": trustee.jwk},
        "tee-evidence": {
            "primary_evidence": {"quote": base64.b64encode(quote).decode()},
            "additional_evidence": "{}",
        },
    }
    answer = trustee.client.call(
        "POST", "/kbs/v0/attest", json_body=body, headers={"Cookie": f"kbs-session-id={session}"}
    )
    assert answer.status == 401 and "does not bind" in json.loads(answer.body)["detail"]


@pytest.mark.parametrize(
    ("evidence", "words"),
    [
        (  # Trustee's sample attester: not a quote
            {"primary_evidence": {"svn": "1", "report_data": "AAAA"}, "additional_evidence": ""},
            "has no quote",
        ),
        (  # a GPU's evidence: nothing here can verify it
            {
                "primary_evidence": {"quote": "AAAA"},
                "additional_evidence": json.dumps({"nvidia": {"evidence": "x"}}),
            },
            "additional evidence (nvidia) cannot be verified",
        ),
        ({"primary_evidence": {"quote": "AAAA"}, "additional_evidence": {}}, "JSON string"),
    ],
)
def test_evidence_this_kbs_cannot_verify_is_a_clear_400(
    kbs: Kbs, attester: SimAttester, evidence: dict[str, Any], words: str
) -> None:
    trustee = TrusteeClient(kbs, attester)
    session, nonce = trustee.auth()
    body = {"runtime-data": {"nonce": nonce, "tee-pubkey": trustee.jwk}, "tee-evidence": evidence}
    answer = trustee.client.call(
        "POST", "/kbs/v0/attest", json_body=body, headers={"Cookie": f"kbs-session-id={session}"}
    )
    problem = json.loads(answer.body)
    assert answer.status == 400 and words in problem["detail"]
    assert problem["type"].startswith(PROBLEM_PREFIX)


def test_errors_are_rfc7807_with_trusts_type_prefix(kbs: Kbs, attester: SimAttester) -> None:
    trustee = TrusteeClient(kbs, attester)
    for answer, status in (
        (trustee.resource({}), 401),
        (
            trustee.client.call(
                "POST", "/kbs/v0/auth", json_body={"version": "0.1.1", "tee": "sgx"}
            ),
            400,
        ),
        (
            trustee.client.call(
                "POST", "/kbs/v0/auth", json_body={"version": "0.4.0", "tee": "snp"}
            ),
            400,
        ),
    ):
        problem = json.loads(answer.body)
        assert answer.status == status
        assert problem["type"].startswith(PROBLEM_PREFIX) and isinstance(problem["detail"], str)


def test_trustees_sample_tee_name_is_the_simulated_tee(kbs: Kbs, attester: SimAttester) -> None:
    trustee = TrusteeClient(kbs, attester)
    session, answer = trustee.attest(tee="sample")
    assert answer.status == 200, answer.body


# --- the pieces against Trustee's own vectors -----------------------------------------------


def test_runtime_data_hash_matches_trustees_vector() -> None:
    """attestation-service/src/lib.rs `parse_runtime_data` case: canonical JSON of
    {"b": 1, "a": "test", "c": {"d": "e"}}, SHA-384."""
    digest = hashlib.sha384(rfc8785.dumps({"b": 1, "a": "test", "c": {"d": "e"}})).hexdigest()
    assert digest == (
        "e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c"
        "4597480a186427c813ca941da78870c3"
    )


def test_report_data_is_the_runtime_data_hash_zero_padded() -> None:
    jwk = {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "eA", "y": "eQ"}
    for additional in ("", "{}"):
        expected = runtime_hash("bm9uY2U=", jwk, additional)
        assert report_data_for("bm9uY2U=", jwk, additional) == expected
        assert expected[48:] == bytes(16)


def test_protected_header_matches_kbs_types_generate_aad_vector() -> None:
    """kbs-types `protected_header_generate_aad`: {alg: fakealg, enc: fakeenc}."""
    header = protected_header_bytes({"alg": "fakealg", "enc": "fakeenc"})
    assert b64u(header) == "eyJhbGciOiJmYWtlYWxnIiwiZW5jIjoiZmFrZWVuYyJ9"


def test_protected_header_survives_serde_re_serialisation() -> None:
    header = {
        "epk": {"y": "Y", "x": "X", "kty": "EC", "crv": "P-256"},
        "enc": "A256GCM",
        "alg": "ECDH-ES+A256KW",
    }
    written = protected_header_bytes(header)
    assert serde_header(json.loads(written)) == written
    assert written.startswith(b'{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"crv":')


# --- our client against a Trustee-style KBS -------------------------------------------------


class TrusteeKbs:
    """A KBS that behaves as Trustee's does on the wire: RCAR with the `kbs-session-id`
    cookie, composite evidence whose runtime-data hash it checks itself (SGX quote layout:
    report_data at 368), an RS256 token, resources as Trustee's `jwe()` builds them (header
    via serde, no `aad`), the cookie's session first, 401 problem documents."""

    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.sessions: dict[str, dict[str, Any]] = {}
        self.attests = 0
        self.bodies: list[Any] = []
        self.signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        app = web.Application()
        app.router.add_post("/kbs/v0/auth", self.auth)
        app.router.add_post("/kbs/v0/attest", self.attest)
        app.router.add_get("/kbs/v0/resource/{repo}/{type}/{tag}", self.resource)
        self.runner = web.AppRunner(app)

        async def start() -> int:
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

        self.port = asyncio.run_coroutine_threadsafe(start(), self.loop).result(timeout=30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)

    @staticmethod
    def problem(kind: str, detail: str) -> web.Response:
        body = {"type": PROBLEM_PREFIX + kind, "detail": detail}
        return web.json_response(body, status=401)

    async def auth(self, request: web.Request) -> web.Response:
        body = await request.json()
        assert body["version"] == "0.4.0" and set(body) == {"version", "tee", "extra-params"}
        sid = secrets.token_hex(16)
        nonce = base64.b64encode(secrets.token_bytes(32)).decode()
        self.sessions[sid] = {"nonce": nonce, "token": None, "jwk": None}
        response = web.json_response({"nonce": nonce, "extra-params": ""})
        response.set_cookie("kbs-session-id", sid, max_age=300)
        return response

    async def attest(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.cookies.get("kbs-session-id", ""))
        if session is None:
            return self.problem("AttestationError", "session not found")
        body = await request.json()
        self.bodies.append(body)
        evidence = body["tee-evidence"]
        runtime = body["runtime-data"]
        assert runtime["nonce"] == session["nonce"]
        quote = base64.b64decode(evidence["primary_evidence"]["quote"])
        expected = runtime_hash(
            session["nonce"], runtime["tee-pubkey"], evidence["additional_evidence"]
        )
        if quote[368:432] != expected:
            return self.problem("AttestationError", "report data mismatch")
        self.attests += 1
        now = int(time.time())
        claims = {
            "iat": now,
            "exp": now + 300,
            "iss": "trustee-as",
            "tee-pubkey": runtime["tee-pubkey"],
        }
        head = b64u(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
        payload = b64u(json.dumps(claims).encode())
        signature = self.signer.sign(
            f"{head}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256()
        )
        session["token"] = f"{head}.{payload}.{b64u(signature)}"
        session["jwk"] = runtime["tee-pubkey"]
        return web.json_response({"token": session["token"]})

    async def resource(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.cookies.get("kbs-session-id", ""))
        if session is None or session["jwk"] is None:
            return self.problem("TokenNotFound", "no attested session")
        jwk = session["jwk"]
        peer = ec.EllipticCurvePublicNumbers(
            int.from_bytes(unb64u(jwk["x"]), "big"),
            int.from_bytes(unb64u(jwk["y"]), "big"),
            ec.SECP256R1(),
        ).public_key()
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        cek = AESGCM.generate_key(bit_length=256)
        wrapped = aes_key_wrap(
            concat_kdf(ephemeral.exchange(ec.ECDH(), peer), "ECDH-ES+A256KW"), cek
        )
        n = ephemeral.public_key().public_numbers()
        epk = {
            "crv": "P-256",
            "kty": "EC",
            "x": b64u(n.x.to_bytes(32, "big")),
            "y": b64u(n.y.to_bytes(32, "big")),
        }
        header = serde_header({"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "epk": epk})
        iv = secrets.token_bytes(12)
        sealed = AESGCM(cek).encrypt(iv, self.secret, b64u(header).encode())
        return web.json_response(
            {
                "protected": b64u(header),
                "encrypted_key": b64u(wrapped),
                "iv": b64u(iv),
                "ciphertext": b64u(sealed[:-16]),
                "tag": b64u(sealed[-16:]),
            }
        )


@pytest.fixture
def trustee_kbs() -> Any:
    server = TrusteeKbs(SECRET)
    yield server
    server.stop()


def test_our_client_gets_keys_from_a_trustee_kbs(
    trustee_kbs: TrusteeKbs, attester: SimAttester
) -> None:
    client = KbsClient(f"http://127.0.0.1:{trustee_kbs.port}", attempts=1)
    session = AttestedSession(client, attester)
    for tag in ("a", "b", "c"):
        assert session.get_resource(f"default/key/{tag}") == SECRET
    assert trustee_kbs.attests == 1 and session.attestations == 1
    (body,) = trustee_kbs.bodies
    assert set(body) == {"runtime-data", "tee-evidence"}
    assert set(body["runtime-data"]) == {"nonce", "tee-pubkey"}
    assert body["tee-evidence"]["additional_evidence"] == ""
    assert set(body["tee-evidence"]["primary_evidence"]) == {"quote"}
    assert body["runtime-data"]["tee-pubkey"]["alg"] == "ECDH-ES+A256KW"


def test_our_client_re_attests_when_a_trustee_kbs_forgets_the_session(
    trustee_kbs: TrusteeKbs, attester: SimAttester
) -> None:
    client = KbsClient(f"http://127.0.0.1:{trustee_kbs.port}", attempts=1)
    session = AttestedSession(client, attester)
    assert session.get_resource("default/key/a") == SECRET
    trustee_kbs.sessions.clear()  # a restarted Trustee KBS (sessions in memory)
    assert session.get_resource("default/key/a") == SECRET
    assert trustee_kbs.attests == 2


def test_our_client_reports_a_trustee_refusal(trustee_kbs: TrusteeKbs, sim_dir: Path) -> None:
    class Unbound:
        tee = "sgx"

        def evidence(self, report_data: bytes) -> Any:
            return SimAttester(sim_dir).evidence(bytes(64))

    client = KbsClient(f"http://127.0.0.1:{trustee_kbs.port}", attempts=1)
    with pytest.raises(KbsDenied, match="report data mismatch"):
        AttestedSession(client, Unbound()).get_resource("default/key/a")  # type: ignore[arg-type]


def test_our_client_still_reads_the_compact_jwe_of_older_sealserve_kbs() -> None:
    from joserfc import jwe

    from sealserve.kbs.jwe import open_resource

    key = ECKey.generate_key("P-256")
    public = ECKey.import_key(key.as_dict(private=False))
    compact = jwe.encrypt_compact({"alg": "ECDH-ES+A256KW", "enc": "A256GCM"}, SECRET, public)
    assert open_resource(compact, key) == SECRET


def test_an_rsa1_5_tee_key_is_refused_clearly(kbs: Kbs, attester: SimAttester) -> None:
    trustee = TrusteeClient(kbs, attester, "rsa")
    trustee.jwk["alg"] = "RSA1_5"
    _, answer = trustee.attest()
    assert answer.status == 400 and "RSA1_5 is not supported" in json.loads(answer.body)["detail"]
