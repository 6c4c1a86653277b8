"""CocoAttester against a stand-in for the Confidential Containers Attestation Agent's REST
endpoint (guest-components api-server-rest, openapi/api.json): `GET /aa/evidence` with
`runtime_data` (and `encoding=base64` for URL-safe base64 without padding), answered with the
TDX attester's evidence `{"cc_eventlog": ..., "quote": <base64>}`; 400 without runtime_data,
405 for other methods, 404 for other paths, 500 when the attester fails (more than 64 bytes
of report data). The quotes are real DCAP-format quotes from the simulated TEE, so the test
checks the binding the KBS checks: the verified quote's report_data is the caller's.
"""

from __future__ import annotations

import base64
import binascii
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sealserve.attestation import (
    AttestationUnavailable,
    AttestationUnsupported,
    CocoAttester,
    SimAttester,
    init_sim,
    verify_quote,
)
from sealserve.attestation.cli import attester_for
from sealserve.errors import FailedPrecondition, InvalidArgument
from tests.attestation.common import SIM_NOW


class _AttestationAgent(http.server.BaseHTTPRequestHandler):
    quote_for: Any = None  # report_data bytes -> quote bytes
    seen: list[dict[str, list[str]]]
    answer_with: tuple[int, bytes] | None = None  # override: (status, body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        parts = urllib.parse.urlsplit(self.path)
        if parts.path != "/aa/evidence":
            return self._send(404, b"")
        params = urllib.parse.parse_qs(parts.query)
        self.seen.append(params)
        if self.answer_with is not None:
            return self._send(*self.answer_with)
        if "runtime_data" not in params:
            return self._send(400, b"")
        data = params["runtime_data"][0]
        if params.get("encoding") == ["base64"]:
            try:
                runtime_data = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
            except binascii.Error:
                return self._send(400, b"")
        else:
            runtime_data = data.encode()
        if len(runtime_data) > 64:  # guest-components TdxAttester::get_evidence
            return self._send(500, b"TDX Attester: Report data must be no more than 64 bytes")
        quote = self.quote_for(runtime_data.ljust(64, b"\0"))
        evidence = {"cc_eventlog": None, "quote": base64.b64encode(quote).decode()}
        return self._send(200, json.dumps(evidence).encode())

    def do_POST(self) -> None:  # noqa: N802
        self._send(405, b"")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return init_sim(tmp_path_factory.mktemp("coco") / "sim", now=SIM_NOW)


@pytest.fixture
def agent(sim: Any) -> Iterator[tuple[str, type[_AttestationAgent]]]:
    quoting = SimAttester(sim.directory, mr_enclave=b"\x11" * 32)

    class Handler(_AttestationAgent):
        quote_for = staticmethod(lambda report_data: quoting.evidence(report_data).quote)
        seen: list[dict[str, list[str]]] = []
        answer_with = None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", Handler
    finally:
        server.shutdown()
        server.server_close()


def test_the_quote_binds_the_report_data(agent: tuple[str, Any], sim: Any) -> None:
    url, handler = agent
    report_data = bytes(range(64))  # not text: only encoding=base64 carries it intact
    evidence = CocoAttester(url).evidence(report_data)
    assert evidence.tee == "tdx"
    claims = verify_quote(evidence.quote, sim.collateral, now=SIM_NOW, root_ca_der=sim.root_ca_der)
    assert claims.report_data == report_data
    (params,) = handler.seen
    assert params["encoding"] == ["base64"]
    assert "=" not in params["runtime_data"][0]  # URL-safe, no padding, as the API says


def test_an_attestation_agent_without_base64_support_fails_loudly(agent: tuple[str, Any]) -> None:
    """An older AA takes the base64 text itself as report data: 86 bytes, refused by its TDX
    attester (never a quote binding something else)."""
    url, handler = agent

    def old_agent(self: Any) -> None:
        params = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        if len(params["runtime_data"][0].encode()) > 64:
            return self._send(500, b"TDX Attester: Report data must be no more than 64 bytes")
        return self._send(200, b"{}")

    handler.do_GET = old_agent
    with pytest.raises(AttestationUnavailable, match="HTTP 500: TDX Attester: Report data"):
        CocoAttester(url).evidence(b"\x01" * 64)


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (200, b'{"svn": "1", "report_data": "eHh4eA=="}', AttestationUnsupported, "not TDX"),
        (200, b"not json", AttestationUnsupported, "not TDX evidence"),
        (200, b'{"quote": "%%%"}', AttestationUnavailable, "not base64"),
        (200, b'{"quote": ""}', AttestationUnavailable, "empty quote"),
        (403, b"", AttestationUnavailable, "HTTP 403"),
        (500, b"attester failed", AttestationUnavailable, "HTTP 500: attester failed"),
    ],
)
def test_bad_answers_are_one_clear_error(
    agent: tuple[str, Any], status: int, body: bytes, error: type[Exception], message: str
) -> None:
    url, handler = agent
    handler.answer_with = (status, body)
    with pytest.raises(error, match=message):
        CocoAttester(url).evidence(b"\0" * 64)


def test_no_attestation_agent_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(AttestationUnavailable, match="cannot reach the Attestation Agent"):
        CocoAttester("http://127.0.0.1:1").evidence(b"\0" * 64)


@pytest.mark.parametrize(
    "url", ["https://127.0.0.1:8006", "http://10.0.0.5:8006", "http://aa.example.com:8006"]
)
def test_only_the_pods_loopback(url: str) -> None:
    with pytest.raises(FailedPrecondition, match="loopback"):
        CocoAttester(url)


def test_report_data_must_be_64_bytes(agent: tuple[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        CocoAttester(agent[0]).evidence(b"short")


def test_proxies_from_the_environment_are_ignored(
    agent: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:1")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert CocoAttester(agent[0]).evidence(b"\0" * 64).quote


def test_the_serve_flag_and_the_quote_command_know_it() -> None:
    attester = attester_for("coco", None)
    assert isinstance(attester, CocoAttester) and attester.url == "http://127.0.0.1:8006"
