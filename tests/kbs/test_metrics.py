"""`/metrics` (issue #13 §4): Prometheus text with the admin token on the KBS's port, or
without one on a separate metrics port; the series an operator needs, no secrets."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import pytest

from sealserve.attestation.sim import SimAttester, SimTee
from sealserve.errors import Code, SealserveError
from sealserve.kbs.client import KbsClient, KbsKeyProvider
from sealserve.kbs.http import bound_port, start_metrics
from tests.kbs.conftest import POLICY, RESOURCE, SECRET, SIM_NOW, Clock, Kbs, make_service


def scrape(kbs: Kbs, token: str | None) -> tuple[int, str]:
    client = KbsClient(kbs.url, ca_pem=kbs.ca, attempts=1)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = client.call("GET", "/metrics", headers=headers)
    return answer.status, answer.body.decode()


def test_metrics_need_the_admin_token_on_the_kbs_port(kbs: Kbs) -> None:
    assert scrape(kbs, None)[0] == 401
    assert scrape(kbs, "not-the-admin-token-at-all")[0] == 401


def test_metrics_count_attestations_releases_latency_and_sessions(
    kbs: Kbs, attester: SimAttester
) -> None:
    assert KbsKeyProvider(kbs.url, kbs.ca, attester).key_for("mnist") == SECRET
    status, text = scrape(kbs, kbs.admin_token)
    assert status == 200
    for series in (
        'sealserve_kbs_attestations_total{result="verified",tee="sim"}',
        'sealserve_kbs_releases_total{decision="allowed",resource="sealserve/model-key/mnist"}',
        'sealserve_kbs_evidence_verification_seconds_bucket{le="0.5",tee="sim"}',
        "sealserve_kbs_policy_evaluation_seconds_count",
        'sealserve_kbs_open_sessions{state="attested"}',
        'sealserve_kbs_open_sessions{state="pending"}',
        "sealserve_kbs_unauthenticated_failures_total",
        "sealserve_kbs_rate_limited_requests_total",
        "sealserve_kbs_store_errors_total",
        "sealserve_kbs_tampering_detected_total",
    ):
        assert series in text, series
    assert SECRET.hex() not in text and kbs.admin_token not in text


def test_metrics_port_serves_without_a_token(kbs: Kbs) -> None:
    loop = asyncio.new_event_loop()
    try:
        runner = loop.run_until_complete(start_metrics(kbs.service, host="127.0.0.1", port=0))
        url = f"http://127.0.0.1:{bound_port(runner)}/metrics"

        async def fetch() -> bytes:
            return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())

        assert b"sealserve_kbs_attestations_total" in loop.run_until_complete(fetch())
        loop.run_until_complete(runner.cleanup())
    finally:
        loop.close()


def test_store_failures_are_counted_and_answered_unavailable(
    tmp_path: Path, sim: SimTee, attester: SimAttester
) -> None:
    from joserfc.jwk import ECKey

    from sealserve.kbs.protocol import (
        PROTOCOL_VERSION,
        b64encode,
        report_data_for,
        tee_pubkey_jwk,
    )

    service = make_service(tmp_path, sim, Clock(SIM_NOW + 60), admin=None)
    service.store.put_resource(RESOURCE, SECRET)
    service.store.set_policy(RESOURCE, POLICY, "toml")
    sid, challenge = service.auth({"version": PROTOCOL_VERSION, "tee": "sim"})
    jwk = tee_pubkey_jwk(ECKey.generate_key("P-256"))
    quote = attester.evidence(report_data_for(challenge["nonce"], jwk)).quote
    body = {
        "runtime-data": {"nonce": challenge["nonce"], "tee-pubkey": jwk},
        "tee-evidence": {"quote": b64encode(quote)},
    }
    service.attest(sid, body)
    service.store._db.close()  # type: ignore[attr-defined]  # the database goes away
    with pytest.raises(SealserveError) as err:
        service.resource(RESOURCE, session_id=sid)
    assert err.value.code == Code.UNAVAILABLE
    assert service.metrics.store_errors.labels("resource_exists")._value.get() == 1
    assert service.metrics.store_errors.labels("append_audit")._value.get() == 1
