"""End to end: a real KBS over HTTPS, the simulated TEE, the client; and everything the issue
says must be refused — each refused over the wire and each recorded in the audit log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwe, jwt
from joserfc.jwk import ECKey

from sealserve.attestation.sim import SimAttester, SimTee
from sealserve.errors import Code, NotFound, SealserveError
from sealserve.kbs.client import KbsClient, KbsDenied, KbsKeyProvider
from sealserve.kbs.protocol import (
    PROTOCOL_VERSION,
    SESSION_COOKIE,
    Attestation,
    TeePubKey,
    b64encode,
    report_data_for,
    tee_pubkey_jwk,
)
from sealserve.kbs.service import Unauthenticated
from tests.kbs.conftest import (
    MR_ENCLAVE,
    POLICY,
    RESOURCE,
    SECRET,
    SIM_NOW,
    Clock,
    Kbs,
    make_service,
)


class Flow:
    """The protocol step by step, so a test can break any step."""

    def __init__(self, kbs: Kbs, tee: str = "sim") -> None:
        self.kbs = kbs
        self.client = KbsClient(kbs.url, ca_pem=kbs.ca, attempts=1)
        self.key = ECKey.generate_key("P-256")
        self.jwk = tee_pubkey_jwk(self.key)
        answer = self.client.call(
            "POST",
            "/kbs/v0/auth",
            json_body={"version": PROTOCOL_VERSION, "tee": tee, "extra-params": ""},
        )
        assert answer.status == 200, answer.body
        from sealserve.kbs.client import _session_cookie

        self.cookie = _session_cookie(answer)
        self.nonce = json.loads(answer.body)["nonce"]

    def headers(self) -> dict[str, str]:
        return {"Cookie": f"{SESSION_COOKIE}={self.cookie}"}

    def report_data(self, jwk: dict[str, Any] | None = None, nonce: str | None = None) -> bytes:
        return report_data_for(nonce or self.nonce, jwk or self.jwk)

    def attest(self, quote: bytes, *, jwk: dict[str, Any] | None = None, nonce: str | None = None):  # type: ignore[no-untyped-def]
        body = Attestation(
            nonce=nonce or self.nonce,
            tee_pubkey=TeePubKey.from_jwk(jwk or self.jwk),
            quote=quote,
        ).to_json()
        return self.client.call("POST", "/kbs/v0/attest", json_body=body, headers=self.headers())

    def resource(self, path: str = RESOURCE, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        return self.client.call(
            "GET",
            f"/kbs/v0/resource/{path}",
            headers=self.headers() if headers is None else headers,
        )


def last_audit(kbs: Kbs) -> dict[str, Any]:
    return kbs.store.audit_records(since_seq=0, limit=100_000)[-1].to_json()


def detail(answer: Any) -> str:
    body = json.loads(answer.body)
    assert body["status"] == answer.status and body["type"].startswith("https://")
    return str(body["detail"])


def assert_refused_attest(kbs: Kbs, answer: Any, words: str) -> None:
    assert answer.status == 401, answer.body
    assert words in detail(answer)
    record = last_audit(kbs)
    assert record["action"] == "attest" and record["decision"] == "denied"
    assert words in record["reason"]


def audit_size(kbs: Kbs) -> int:
    return len(kbs.store.audit_records(since_seq=0, limit=100_000))


def unauthenticated_count(kbs: Kbs, endpoint: str) -> float:
    return kbs.service.metrics.unauthenticated.labels(endpoint)._value.get()


def assert_counted_not_audited(kbs: Kbs, call: Any, status: int, words: str, endpoint: str) -> None:
    """A refusal without credentials (anyone can send it): the right status and reason,
    counted in the metrics, and no audit record."""
    records, counted = audit_size(kbs), unauthenticated_count(kbs, endpoint)
    answer = call()
    assert answer.status == status, answer.body
    assert words in detail(answer)
    assert audit_size(kbs) == records
    assert unauthenticated_count(kbs, endpoint) == counted + 1


def assert_refused_release(kbs: Kbs, answer: Any, status: int, words: str) -> None:
    assert answer.status == status, answer.body
    told = detail(answer)
    record = last_audit(kbs)
    assert record["action"] == "release" and record["decision"] == "denied"
    assert words in record["reason"]
    if status == 403:
        # Issue #13 §3: which rule failed is for the administrator, not for the TEE's host
        assert "denied this TEE" in told and words not in told
    else:
        assert words in told


def open_flattened(body: bytes, key: Any, algorithms: list[str] | None = None) -> Any:
    """A flattened JSON JWE, opened with joserfc (an implementation other than ours)."""
    data = json.loads(body)
    assert set(data) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
    return jwe.decrypt_json(data, key, algorithms=algorithms)


# --- the key is released ----------------------------------------------------------------------


def test_key_provider_gets_the_key(kbs: Kbs, attester: SimAttester) -> None:
    provider = KbsKeyProvider(kbs.url, kbs.ca, attester, lambda name: f"sealserve/model-key/{name}")
    assert provider.key_for("mnist") == SECRET
    records = kbs.store.audit_records(limit=100_000)
    attest, release = records[-2].to_json(), records[-1].to_json()
    assert (attest["action"], attest["decision"]) == ("attest", "verified")
    assert (release["action"], release["decision"]) == ("release", "allowed")
    assert release["resource"] == RESOURCE and release["tee"] == "sim"
    assert release["measurements"]["mr_enclave"] == MR_ENCLAVE.hex()
    assert release["tcb_status"] == "UpToDate"
    assert kbs.store.verify_chain().ok
    assert "13371337" not in repr(provider)


def test_rotated_secret_is_released(kbs: Kbs, attester: SimAttester) -> None:
    kbs.store.put_resource(RESOURCE, b"rotated-key-0123")
    try:
        assert KbsKeyProvider(kbs.url, kbs.ca, attester).key_for("mnist") == b"rotated-key-0123"
    finally:
        kbs.store.put_resource(RESOURCE, SECRET)


def test_bearer_token_releases_and_jwe_needs_the_ephemeral_key(
    kbs: Kbs, attester: SimAttester
) -> None:
    flow = Flow(kbs)
    answer = flow.attest(attester.evidence(flow.report_data()).quote)
    assert answer.status == 200
    token = json.loads(answer.body)["token"]
    header = jwt.decode(token, kbs.service.config.signing_key).header
    assert header["alg"] == "ES256"
    released = flow.resource(headers={"Authorization": f"Bearer {token}"})
    assert released.status == 200
    sealed = released.body
    protected_b64 = json.loads(sealed)["protected"]
    protected = json.loads(
        __import__("base64").urlsafe_b64decode(protected_b64 + "=" * (-len(protected_b64) % 4))
    )
    assert protected == {"alg": "ECDH-ES+A256KW", "enc": "A256GCM", "epk": protected["epk"]}
    assert open_flattened(sealed, flow.key).plaintext == SECRET
    with pytest.raises(Exception):  # noqa: B017 - any JOSE failure: another key cannot read it
        open_flattened(sealed, ECKey.generate_key("P-256"))


def test_rsa_tee_pubkey_gets_rsa_oaep_256(kbs: Kbs, attester: SimAttester) -> None:
    from joserfc.jwk import RSAKey

    flow = Flow(kbs)
    rsa = RSAKey.generate_key(2048)
    jwk = tee_pubkey_jwk(rsa)
    assert flow.attest(attester.evidence(flow.report_data(jwk)).quote, jwk=jwk).status == 200
    released = flow.resource()
    assert released.status == 200
    obj = open_flattened(released.body, rsa, algorithms=["RSA-OAEP-256", "A256GCM"])
    assert obj.protected["alg"] == "RSA-OAEP-256" and obj.plaintext == SECRET


# --- must be refused ---------------------------------------------------------------------------


def test_replayed_nonce_is_refused(kbs: Kbs, attester: SimAttester) -> None:
    flow = Flow(kbs)
    quote = attester.evidence(flow.report_data()).quote
    assert flow.attest(quote).status == 200
    assert_counted_not_audited(kbs, lambda: flow.attest(quote), 401, "already used", "attest")
    # the old nonce and quote in a fresh session: not that session's challenge
    other = Flow(kbs)
    assert_counted_not_audited(
        kbs, lambda: other.attest(quote, nonce=flow.nonce), 401, "not this session", "attest"
    )


def test_evidence_bound_to_another_public_key_is_refused(kbs: Kbs, attester: SimAttester) -> None:
    flow = Flow(kbs)
    quote = attester.evidence(flow.report_data()).quote
    attacker = tee_pubkey_jwk(ECKey.generate_key("P-256"))
    assert_refused_attest(kbs, flow.attest(quote, jwk=attacker), "does not bind")


def test_expired_session_is_refused(kbs: Kbs, attester: SimAttester) -> None:
    flow = Flow(kbs)
    quote = attester.evidence(flow.report_data()).quote
    kbs.clock.now += 301
    assert_counted_not_audited(kbs, lambda: flow.attest(quote), 401, "expired", "attest")


def test_pending_session_expires_fast(kbs: Kbs, attester: SimAttester) -> None:
    flow = Flow(kbs)
    quote = attester.evidence(flow.report_data()).quote
    kbs.clock.now += kbs.service.config.pending_session_ttl + 1
    assert_counted_not_audited(kbs, lambda: flow.attest(quote), 401, "expired", "attest")


def test_unknown_session_is_refused(kbs: Kbs, attester: SimAttester) -> None:
    flow = Flow(kbs)
    flow.cookie = "not-a-session"
    quote = attester.evidence(flow.report_data()).quote
    assert_counted_not_audited(kbs, lambda: flow.attest(quote), 401, "unknown session", "attest")
    flow.cookie = "also-unknown"
    assert_counted_not_audited(kbs, flow.resource, 401, "unknown session", "resource")


def test_session_that_did_not_attest_gets_nothing(kbs: Kbs) -> None:
    assert_counted_not_audited(kbs, Flow(kbs).resource, 401, "has not attested", "resource")


@pytest.mark.parametrize(
    ("identity", "words"),
    [
        ({"mr_enclave": bytes(32)}, "mr_enclave"),
        ({"mr_signer": bytes(32)}, "mr_signer"),
        ({"isv_prod_id": 7}, "isv_prod_id 7"),
        ({"isv_svn": 1}, "isv_svn 1 is below"),
    ],
)
def test_wrong_identity_is_refused_by_policy(
    kbs: Kbs, attester: SimAttester, identity: dict[str, Any], words: str
) -> None:
    flow = Flow(kbs)
    kwargs: dict[str, Any] = {"mr_enclave": MR_ENCLAVE, **identity}
    quote = attester.quote(flow.report_data(), **kwargs)
    assert flow.attest(quote).status == 200  # genuine evidence; the *policy* says no
    assert_refused_release(kbs, flow.resource(), 403, words)


def test_debug_enclave_is_refused(kbs: Kbs, attester: SimAttester) -> None:
    flow = Flow(kbs)
    quote = attester.quote(flow.report_data(), MR_ENCLAVE, debug=True)
    assert_counted_not_audited(
        kbs, lambda: flow.attest(quote), 401, "quote verification failed", "attest"
    )
    assert flow.resource().status == 401


def test_tcb_status_not_accepted_is_refused(kbs: Kbs, attester: SimAttester) -> None:
    kbs.store.set_policy(
        RESOURCE,
        POLICY.replace(
            'tee = ["sim"]', 'tee = ["sim"]\naccepted_tcb_statuses = ["SWHardeningNeeded"]'
        ),
        "toml",
    )
    flow = Flow(kbs)
    assert flow.attest(attester.evidence(flow.report_data()).quote).status == 200
    assert_refused_release(kbs, flow.resource(), 403, "TCB status UpToDate is not accepted")


def test_expired_collateral_is_refused(kbs: Kbs, sim: SimTee, attester: SimAttester) -> None:
    kbs.clock.now = sim.expires_at + 1
    flow = Flow(kbs)
    quote = attester.evidence(flow.report_data()).quote
    assert_counted_not_audited(kbs, lambda: flow.attest(quote), 401, "xpired", "attest")


def test_tampered_quote_is_refused(kbs: Kbs, attester: SimAttester) -> None:
    flow = Flow(kbs)
    quote = bytearray(attester.evidence(flow.report_data()).quote)
    quote[48 + 64] ^= 1  # one bit of MRENCLAVE (header 48 bytes, MRENCLAVE at body offset 64)
    assert_counted_not_audited(
        kbs, lambda: flow.attest(bytes(quote)), 401, "quote verification failed", "attest"
    )


def test_sim_evidence_claimed_as_sgx_is_refused(kbs: Kbs, attester: SimAttester) -> None:
    flow = Flow(kbs, tee="sgx")  # Intel's root is used for "sgx": the sim chain fails
    quote = attester.evidence(flow.report_data()).quote
    assert_counted_not_audited(
        kbs, lambda: flow.attest(quote), 401, "quote verification failed", "attest"
    )


def test_sim_evidence_is_refused_when_sim_is_not_trusted(
    tmp_path: Path, sim: SimTee, attester: SimAttester
) -> None:
    service = make_service(tmp_path, sim, Clock(SIM_NOW + 60), trust_sim=False, admin=None)
    sid, challenge = service.auth({"version": PROTOCOL_VERSION, "tee": "sim"})
    jwk = tee_pubkey_jwk(ECKey.generate_key("P-256"))
    quote = attester.evidence(report_data_for(challenge["nonce"], jwk)).quote
    body = {
        "runtime-data": {"nonce": challenge["nonce"], "tee-pubkey": jwk},
        "tee-evidence": {"quote": b64encode(quote)},
    }
    with pytest.raises(SealserveError, match="not trusted") as err:
        service.attest(sid, body)
    assert err.value.code == Code.UNAUTHENTICATED
    assert service.store.audit_records() == []  # nothing verified: counted, not audited
    assert service.metrics.attestations.labels("sim", "rejected")._value.get() == 1
    service.store.close()


def test_sim_tee_not_in_policy_is_refused(kbs: Kbs, attester: SimAttester) -> None:
    kbs.store.set_policy(
        RESOURCE,
        f'[[sgx]]\nmr_enclave = ["{MR_ENCLAVE.hex()}"]\nmr_signer = "any"\nisv_prod_id = "any"\n',
        "toml",
    )
    flow = Flow(kbs)
    assert flow.attest(attester.evidence(flow.report_data()).quote).status == 200
    assert_refused_release(kbs, flow.resource(), 403, "tee sim is not accepted")


def test_resource_without_policy_is_refused(kbs: Kbs, attester: SimAttester) -> None:
    kbs.store.put_resource("sealserve/model-key/nopolicy", b"0123456789abcdef")
    flow = Flow(kbs)
    assert flow.attest(attester.evidence(flow.report_data()).quote).status == 200
    assert_refused_release(
        kbs, flow.resource("sealserve/model-key/nopolicy"), 403, "no policy allows"
    )


def test_unknown_resource_is_refused(kbs: Kbs, attester: SimAttester) -> None:
    flow = Flow(kbs)
    assert flow.attest(attester.evidence(flow.report_data()).quote).status == 200
    assert_refused_release(kbs, flow.resource("sealserve/model-key/nope"), 404, "not found")
    provider = KbsKeyProvider(kbs.url, kbs.ca, attester)
    with pytest.raises(NotFound):
        provider.key_for("nope")


def test_missing_token_is_refused(kbs: Kbs) -> None:
    client = KbsClient(kbs.url, ca_pem=kbs.ca, attempts=1)
    assert_counted_not_audited(
        kbs,
        lambda: client.call("GET", f"/kbs/v0/resource/{RESOURCE}"),
        401,
        "no kbs-session-id",
        "resource",
    )


def test_forged_and_expired_tokens_are_refused(kbs: Kbs, attester: SimAttester) -> None:
    flow = Flow(kbs)
    answer = flow.attest(attester.evidence(flow.report_data()).quote)
    token = json.loads(answer.body)["token"]
    payload = jwt.decode(token, kbs.service.config.signing_key).claims
    payload["claims"]["mr_enclave"] = MR_ENCLAVE.hex()
    forged = jwt.encode({"alg": "ES256"}, payload, ECKey.generate_key("P-256"))
    client = KbsClient(kbs.url, ca_pem=kbs.ca, attempts=1)

    def fetch_with(bearer: str) -> Any:
        return lambda: client.call(
            "GET", f"/kbs/v0/resource/{RESOURCE}", headers={"Authorization": f"Bearer {bearer}"}
        )

    for bad in (forged, token[:-4] + "AAAA", "not.a.jwt"):
        assert_counted_not_audited(kbs, fetch_with(bad), 401, "token is invalid", "resource")
    kbs.clock.now += 301
    assert_counted_not_audited(kbs, fetch_with(token), 401, "expired", "resource")


def test_denied_client_is_not_told_which_pin_failed(kbs: Kbs, sim_dir: Path) -> None:
    wrong = SimAttester(sim_dir, mr_enclave=bytes(32), isv_svn=3)
    with pytest.raises(KbsDenied) as err:
        KbsKeyProvider(kbs.url, kbs.ca, wrong).key_for("mnist")
    assert err.value.code == Code.PERMISSION_DENIED
    assert f"the resource policy of {RESOURCE} denied this TEE" in err.value.reason
    assert "mr_enclave" not in str(err.value) and "0000000000" not in str(err.value)
    record = last_audit(kbs)  # the administrator sees it all
    assert record["decision"] == "denied" and "mr_enclave 0000000000000000" in record["reason"]


def test_unreachable_kbs_is_unavailable_after_retries(attester: SimAttester) -> None:
    sleeps: list[float] = []
    provider = KbsKeyProvider(
        "https://127.0.0.1:9", None, attester, attempts=4, backoff=0.5, sleep=sleeps.append
    )
    with pytest.raises(SealserveError, match="unavailable after 4 attempts") as err:
        provider.key_for("mnist")
    assert err.value.code == Code.UNAVAILABLE
    assert sleeps == [0.5, 1.0, 2.0]


def test_untrusted_kbs_certificate_is_refused(kbs: Kbs, attester: SimAttester) -> None:
    provider = KbsKeyProvider(kbs.url, None, attester, attempts=3, sleep=lambda _: None)
    with pytest.raises(SealserveError, match="not trusted") as err:
        provider.key_for("mnist")
    assert err.value.code == Code.UNAVAILABLE


def test_unauthenticated_error_type() -> None:
    assert Unauthenticated("x").code == Code.UNAUTHENTICATED


# --- real hardware evidence (Intel-signed DCAP vectors) -------------------------------------


def _real_service(tmp_path: Path, sim: SimTee, collateral_file: str, now: int) -> Any:
    from sealserve.attestation import load_collateral
    from tests.testvectors import TESTVECTORS

    service = make_service(tmp_path, sim, Clock(now), trust_sim=False, admin=None)
    service.config.collateral = load_collateral(TESTVECTORS / "dcap" / collateral_file)
    return service


def test_real_tdx_quote_verifies_under_intel_root_but_must_bind(
    tmp_path: Path, sim: SimTee
) -> None:
    """A genuine TDX quote passes verification (Intel's root, no sim trust needed) and is
    still refused: its report_data binds no nonce or key of ours."""
    from tests.testvectors import TESTVECTORS

    service = _real_service(tmp_path, sim, "tdx_quote_collateral.json", 1752919234)
    sid, challenge = service.auth({"version": PROTOCOL_VERSION, "tee": "tdx"})
    jwk = tee_pubkey_jwk(ECKey.generate_key("P-256"))
    body = {
        "runtime-data": {"nonce": challenge["nonce"], "tee-pubkey": jwk},
        "tee-evidence": {"quote": b64encode((TESTVECTORS / "dcap" / "tdx_quote").read_bytes())},
    }
    with pytest.raises(Unauthenticated, match="does not bind"):
        service.attest(sid, body)
    (record,) = service.store.audit_records()
    assert record.tee == "tdx" and record.tcb_status == "UpToDate"
    assert record.measurements["mr_td"].startswith("91eb2b44")
    service.store.close()


def test_real_sgx_quote_claimed_as_sim_is_refused(tmp_path: Path, sim: SimTee) -> None:
    from tests.testvectors import TESTVECTORS

    service = _real_service(tmp_path, sim, "sgx_quote_collateral.json", 1752919277)
    sid, challenge = service.auth({"version": PROTOCOL_VERSION, "tee": "sim"})
    body = {
        "runtime-data": {
            "nonce": challenge["nonce"],
            "tee-pubkey": tee_pubkey_jwk(ECKey.generate_key("P-256")),
        },
        "tee-evidence": {"quote": b64encode((TESTVECTORS / "dcap" / "sgx_quote").read_bytes())},
    }
    with pytest.raises(SealserveError, match="not trusted"):
        service.attest(sid, body)
    service.store.close()


def test_concurrent_clients_all_get_the_key_and_the_chain_stays_linear(
    kbs: Kbs, attester: SimAttester
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    provider = KbsKeyProvider(kbs.url, kbs.ca, attester)
    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = list(pool.map(lambda _: provider.key_for("mnist"), range(24)))
    assert keys == [SECRET] * 24
    assert kbs.store.verify_chain().ok
