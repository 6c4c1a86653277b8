"""One attestation per server (issue #13 §5): the client attests once and fetches every key
with that session's cookie and token, re-attesting only when the token runs out or the KBS no
longer accepts it (401: a restarted or failed-over KBS without the signing key); it retries
429 with backoff; the KBS parses a policy once per change."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from joserfc.jwk import ECKey

from sealserve.attestation.sim import SimAttester, SimTee
from sealserve.errors import Code, SealserveError
from sealserve.kbs.client import AttestedSession, KbsClient, KbsDenied, KbsKeyProvider
from sealserve.kbs.service import KbsConfig, KbsService
from tests.harness import RunningKbs
from tests.kbs.conftest import POLICY, RESOURCE, SECRET, SIM_NOW, Clock, Kbs, make_service

MODELS = {"mnist": SECRET, "resnet": b"R" * 16, "digits": b"D" * 16}


def attestations(store) -> int:  # type: ignore[no-untyped-def]
    """Attestations as the KBS counts them: its audit log."""
    return sum(
        1
        for r in store.audit_records(limit=100_000)
        if r.action == "attest" and r.decision == "verified"
    )


def releases(store) -> list[str]:  # type: ignore[no-untyped-def]
    return [
        r.resource
        for r in store.audit_records(limit=100_000)
        if r.action == "release" and r.decision == "allowed"
    ]


@pytest.fixture
def models(kbs: Kbs) -> Iterator[Kbs]:
    for name, key in MODELS.items():
        kbs.store.put_resource(f"sealserve/model-key/{name}", key)
        kbs.store.set_policy(f"sealserve/model-key/{name}", POLICY, "toml")
    yield kbs


def test_three_models_cost_one_attestation(models: Kbs, attester: SimAttester) -> None:
    before = attestations(models.store)
    provider = KbsKeyProvider(models.url, models.ca, attester)
    for name, key in MODELS.items():
        assert provider.key_for(name) == key
    assert provider.key_for("mnist") == SECRET  # a reload: still the same session
    assert attestations(models.store) - before == 1
    assert provider.session.attestations == 1
    assert releases(models.store)[-4:] == [
        "sealserve/model-key/mnist",
        "sealserve/model-key/resnet",
        "sealserve/model-key/digits",
        "sealserve/model-key/mnist",
    ]


def test_concurrent_loads_share_one_attestation(models: Kbs, attester: SimAttester) -> None:
    from concurrent.futures import ThreadPoolExecutor

    before = attestations(models.store)
    provider = KbsKeyProvider(models.url, models.ca, attester)
    names = list(MODELS) * 8
    with ThreadPoolExecutor(max_workers=8) as pool:
        keys = list(pool.map(provider.key_for, names))
    assert keys == [MODELS[n] for n in names]
    assert attestations(models.store) - before == 1


def test_a_kbs_side_expiry_is_answered_by_one_new_attestation(
    kbs: Kbs, attester: SimAttester
) -> None:
    provider = KbsKeyProvider(kbs.url, kbs.ca, attester)
    assert provider.key_for("mnist") == SECRET
    kbs.clock.now += 301  # the session and the token have expired at the KBS
    assert provider.key_for("mnist") == SECRET
    assert provider.session.attestations == 2
    # the 401 that led to it: an expired token is no credential, so it is counted, not audited
    assert kbs.service.metrics.unauthenticated.labels("resource")._value.get() >= 1


def test_the_client_re_attests_before_its_token_runs_out(kbs: Kbs, attester: SimAttester) -> None:
    now = [1000.0]
    client = KbsClient(kbs.url, ca_pem=kbs.ca, attempts=1)
    session = AttestedSession(client, attester, clock=lambda: now[0])
    assert session.get_resource(RESOURCE) == SECRET
    assert session.expires_in == pytest.approx(300)  # exp - iat of the KBS's token
    now[0] += 291  # inside the last 10 s: attest again rather than risk a 401
    assert session.get_resource(RESOURCE) == SECRET
    assert session.attestations == 2
    now[0] += 100
    assert session.get_resource(RESOURCE) == SECRET
    assert session.attestations == 2


def test_a_restarted_kbs_with_the_same_key_accepts_the_token(
    tmp_path: Path, sim: SimTee, attester: SimAttester, certs
) -> None:  # type: ignore[no-untyped-def]
    first = make_service(tmp_path, sim, Clock(SIM_NOW + 60), admin=None)
    first.store.put_resource(RESOURCE, SECRET)
    first.store.set_policy(RESOURCE, POLICY, "toml")
    broker = RunningKbs(first, certs.server_cert, certs.server_key)
    provider = KbsKeyProvider(f"https://127.0.0.1:{broker.port}", str(certs.trust_anchor), attester)
    try:
        assert provider.key_for("mnist") == SECRET
        broker.stop()  # sessions gone with the process; keys and database stay
        broker = RunningKbs(
            KbsService(first.store, first.config), certs.server_cert, certs.server_key, broker.port
        )
        assert provider.key_for("mnist") == SECRET
    finally:
        broker.stop()
    assert provider.session.attestations == 1
    first.store.close()


def test_a_kbs_that_lost_the_session_and_the_key_gets_a_new_attestation(
    tmp_path: Path, sim: SimTee, attester: SimAttester, certs
) -> None:  # type: ignore[no-untyped-def]
    first = make_service(tmp_path, sim, Clock(SIM_NOW + 60), admin=None)
    first.store.put_resource(RESOURCE, SECRET)
    first.store.set_policy(RESOURCE, POLICY, "toml")
    broker = RunningKbs(first, certs.server_cert, certs.server_key)
    provider = KbsKeyProvider(f"https://127.0.0.1:{broker.port}", str(certs.trust_anchor), attester)
    try:
        assert provider.key_for("mnist") == SECRET
        broker.stop()
        other_key = KbsConfig(**{**vars(first.config), "signing_key": ECKey.generate_key("P-256")})
        second = KbsService(first.store, other_key)
        broker = RunningKbs(second, certs.server_cert, certs.server_key, broker.port)
        assert provider.key_for("mnist") == SECRET
    finally:
        broker.stop()
    assert provider.session.attestations == 2
    # the token the new key cannot verify is no credential: counted, not audited
    assert [r for r in first.store.audit_records(limit=100) if r.decision == "denied"] == []
    assert second.metrics.unauthenticated.labels("resource")._value.get() == 1
    first.store.close()


def test_a_policy_denial_is_not_answered_by_attesting_again(kbs: Kbs, sim_dir: Path) -> None:
    wrong = SimAttester(sim_dir, mr_enclave=bytes(32), isv_svn=3)
    provider = KbsKeyProvider(kbs.url, kbs.ca, wrong)
    for _ in range(2):
        with pytest.raises(KbsDenied) as err:
            provider.key_for("mnist")
        assert err.value.status == 403
    assert provider.session.attestations == 1


def test_the_policy_is_parsed_once_per_change(
    kbs: Kbs, attester: SimAttester, caplog: pytest.LogCaptureFixture
) -> None:
    changed = POLICY + "\n# changed\n"
    kbs.store.set_policy(RESOURCE, changed, "toml")
    provider = KbsKeyProvider(kbs.url, kbs.ca, attester)
    with caplog.at_level(logging.WARNING, logger="sealserve.attestation.policy"):
        for _ in range(3):
            assert provider.key_for("mnist") == SECRET
    warnings = [r for r in caplog.records if "accepts the simulated TEE" in r.getMessage()]
    assert len(warnings) == 1


# --- 429 ----------------------------------------------------------------------------------


class _Busy(http.server.BaseHTTPRequestHandler):
    """Answers 429 (Retry-After: 1) `busy` times, then 200."""

    busy = 2
    seen = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).seen += 1
        if type(self).seen <= type(self).busy:
            body = json.dumps({"detail": "rate limited"}).encode()
            self.send_response(429)
            self.send_header("Retry-After", "1")
        else:
            body = b"{}"
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> http.server.HTTPServer:
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_429_is_retried_with_backoff() -> None:
    _Busy.seen, _Busy.busy = 0, 2
    server = _serve(_Busy)
    sleeps: list[float] = []
    try:
        client = KbsClient(
            f"http://127.0.0.1:{server.server_port}", attempts=5, backoff=0.5, sleep=sleeps.append
        )
        assert client.call("GET", "/kbs/v0/resource/a/b/c").status == 200
    finally:
        server.shutdown()
    assert sleeps == [1.0, 1.0]  # Retry-After, not less; the backoff grows underneath


def test_429_until_the_attempts_run_out_is_unavailable() -> None:
    _Busy.seen, _Busy.busy = 0, 100
    server = _serve(_Busy)
    try:
        client = KbsClient(
            f"http://127.0.0.1:{server.server_port}", attempts=3, sleep=lambda _: None
        )
        with pytest.raises(SealserveError, match="HTTP 429") as err:
            client.call("GET", "/kbs/v0/resource/a/b/c")
    finally:
        server.shutdown()
    assert err.value.code == Code.UNAVAILABLE


def test_a_stored_policy_that_no_longer_loads_denies_without_detail(
    kbs: Kbs, attester: SimAttester
) -> None:
    """A policy stored before the workload-pin rules (here: mr_signer without isv_prod_id)
    is written straight into the store, as an older KBS did; releases are refused with 403,
    the reason only in the audit."""
    old = 'tee = ["sim"]\n[[sim]]\nmr_enclave = "any"\nmr_signer = ["' + "ab" * 32 + '"]\n'
    old += 'isv_prod_id = "any"\n'
    kbs.store.set_policy(RESOURCE, old, "toml")
    provider = KbsKeyProvider(kbs.url, kbs.ca, attester)
    with pytest.raises(KbsDenied) as err:
        provider.key_for("mnist")
    assert err.value.status == 403 and "isv_prod_id" not in str(err.value)
    record = kbs.store.audit_records(limit=100_000)[-1]
    assert record.decision == "denied" and "does not load" in record.reason
    assert "isv_prod_id" in record.reason
