"""Abuse without credentials (issue #13 §1), from the outside: floods, session exhaustion,
compressed bombs, malformed input, idle and excess connections, weak TLS — each refused
cheaply, counted rather than stored, and none of it keeps a real TEE from its key.

Attackers connect from other loopback addresses (127.0.0.2, ...) than the legitimate server
(127.0.0.1): the KBS limits anonymous work per client address.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import secrets
import socket
import ssl
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sealserve.attestation.sim import SimAttester, SimTee
from sealserve.kbs import http as kbs_http
from sealserve.kbs.client import KbsKeyProvider
from sealserve.kbs.limits import AnonymousBudget, client_key
from sealserve.kbs.logtext import LogThrottle, shown
from sealserve.kbs.protocol import PROTOCOL_VERSION, tee_pubkey_jwk
from sealserve.kbs.service import KbsService
from tests.harness import SEALSERVE, KbsProcess, RunningKbs
from tests.kbs.conftest import (
    POLICY,
    RESOURCE,
    SECRET,
    SIM_NOW,
    Clock,
    make_service,
)

AUTH_BODY = {"version": PROTOCOL_VERSION, "tee": "sim", "extra-params": ""}


class Abuser:
    """Raw HTTPS requests from a chosen loopback source address (a new connection whenever
    the KBS closes one)."""

    def __init__(self, port: int, ca: str, source: str) -> None:
        self.port = port
        self.source = source
        self.context = ssl.create_default_context(cafile=ca)
        self.connection: http.client.HTTPSConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        for _ in range(3):
            if self.connection is None:
                self.connection = http.client.HTTPSConnection(
                    "127.0.0.1",
                    self.port,
                    context=self.context,
                    timeout=30,
                    source_address=(self.source, 0),
                )
            try:
                self.connection.request(method, path, body=body, headers=headers or {})
                response = self.connection.getresponse()
                data = response.read()
                if response.will_close:
                    self.close()
                return response.status, data
            except (ConnectionError, http.client.HTTPException, ssl.SSLError, OSError):
                self.close()
        raise AssertionError("the KBS kept dropping the connection")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


@pytest.fixture(scope="module")
def abused(tmp_path_factory: pytest.TempPathFactory, sim: SimTee, certs) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    directory = tmp_path_factory.mktemp("abused")
    service = make_service(directory, sim, Clock(SIM_NOW + 60), admin=secrets.token_urlsafe(24))
    service.store.put_resource(RESOURCE, SECRET)
    service.store.set_policy(RESOURCE, POLICY, "toml")
    server = RunningKbs(
        service, certs.server_cert, certs.server_key, budget=AnonymousBudget(rate=2, burst=30)
    )
    server.service = service  # type: ignore[attr-defined]
    server.url = f"https://127.0.0.1:{server.port}"  # type: ignore[attr-defined]
    server.ca = str(certs.trust_anchor)  # type: ignore[attr-defined]
    server.db = directory / "kbs.db"  # type: ignore[attr-defined]
    try:
        yield server
    finally:
        server.stop()
        service.store.close()


def audit_size(service: KbsService) -> int:
    return len(service.store.audit_records(limit=100_000))


def metric(service: KbsService, name: str, *labels: str) -> float:
    return float(getattr(service.metrics, name).labels(*labels)._value.get())


def test_flood_of_long_paths_is_limited_counted_and_not_stored(abused: Any) -> None:
    service = abused.service
    records, size = audit_size(service), abused.db.stat().st_size
    abuser = Abuser(abused.port, abused.ca, "127.0.0.2")
    statuses = [abuser.request("GET", f"/kbs/v0/resource/{'x' * 8000}/b/c")[0] for _ in range(200)]
    abuser.close()
    assert set(statuses) <= {400, 429} and statuses.count(429) > 100
    assert audit_size(service) == records  # counted, not one row each
    assert abused.db.stat().st_size - size < 64 * 1024
    assert metric(service, "rate_limited", "anonymous_budget") > 100
    assert metric(service, "unauthenticated", "resource") >= 1


def test_url_encoded_newline_cannot_forge_a_log_line(
    abused: Any, caplog: pytest.LogCaptureFixture
) -> None:
    forged = (
        "x%0a2026-12-06%20INFO%20sealserve.kbs.service%20kbs%20release%20"
        "sealserve.model-key.m%20allowed%0d%0a"
    )
    abuser = Abuser(abused.port, abused.ca, "127.0.0.3")
    # a fresh log window: this module's earlier floods may have used up the current second's
    abused.service._log_throttle = LogThrottle()
    with caplog.at_level(logging.DEBUG, logger="sealserve"):
        for path in (f"/kbs/v0/resource/{forged}/b/c", f"/kbs/v0/resource/a/b/{forged}"):
            status, _ = abuser.request("GET", path)
            assert status == 400
    abuser.close()
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("sealserve")]
    assert messages and not any("\n" in m or "\r" in m for m in messages)


def test_shown_escapes_and_bounds_text() -> None:
    assert shown("a\nb\r\x1b\u2028é\\x0a") == "a\\x0ab\\x0d\\x1b\\u2028\\xe9\\\\x0a"
    assert shown("y" * 5000).startswith("y" * 400) and shown("y" * 5000).endswith("[5000 chars]")


def test_client_key_groups_ipv6_by_64_and_maps_ipv4() -> None:
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert client_key(None) == client_key("garbage") == "unknown"


def _attest(service: KbsService, attester: SimAttester, client: str) -> dict[str, Any]:
    from joserfc.jwk import ECKey

    from sealserve.kbs.protocol import b64encode, report_data_for

    sid, challenge = service.auth(AUTH_BODY, client=client)
    jwk = tee_pubkey_jwk(ECKey.generate_key("P-256"))
    quote = attester.evidence(report_data_for(challenge["nonce"], jwk)).quote
    body = {
        "runtime-data": {"nonce": challenge["nonce"], "tee-pubkey": jwk},
        "tee-evidence": {"quote": b64encode(quote)},
    }
    return service.attest(sid, body)


def test_anonymous_sessions_are_capped_per_client_and_oldest_evicted(
    tmp_path: Path, sim: SimTee, attester: SimAttester
) -> None:
    service = make_service(tmp_path, sim, Clock(SIM_NOW + 60), admin=None)
    service.config.max_sessions = 2_000
    first, _ = service.auth(AUTH_BODY, client="127.0.0.2")
    for _ in range(5_000):  # one client: never more than its cap
        service.auth(AUTH_BODY, client="127.0.0.2")
    assert service.session_count() == service.config.max_pending_per_client
    assert first not in service._sessions  # the oldest went first
    for i in range(10_000):  # many clients: the table stays bounded, oldest evicted
        service.auth(AUTH_BODY, client=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert service.session_count() == service.config.max_sessions
    # ... and a real TEE still attests and gets a session that lasts
    assert "token" in _attest(service, attester, "127.0.0.1")
    assert metric(service, "attestations", "sim", "verified") == 1
    service.store.close()


def _bomb(size: int, method: str = "deflate") -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31 if method == "gzip" else 15)
    chunk = bytes(1 << 20)
    return b"".join(packer.compress(chunk) for _ in range(size >> 20)) + packer.flush()


@pytest.mark.parametrize("encoding", ["deflate", "gzip", "br", "identity, gzip"])
def test_compressed_body_is_refused_without_inflating(abused: Any, encoding: str) -> None:
    # 32 MiB inflated, 32 KiB on the wire: the KBS closes the connection without reading the
    # body, so a body larger than the socket buffers could still be in the client's send
    # when it does (a reset, not the 415) on a busy machine
    bomb = _bomb(32 << 20, "gzip" if "gzip" in encoding else "deflate")
    abuser = Abuser(abused.port, abused.ca, "127.0.0.4")
    headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
    status, body = abuser.request("POST", "/kbs/v0/auth", bomb, headers)
    assert status == 415 and json.loads(body)["status"] == 415
    status, _ = abuser.request("GET", "/healthz")  # the KBS carries on
    assert status == 200
    abuser.close()


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 200_000 + b"]" * 200_000,
        b'{"version": ' + b"9" * 5000 + b"}",
        b'{"version": NaN, "tee": "sim"}',
        b'{"a": ' + b"[" * 33 + b"1" + b"]" * 33 + b"}",
        b"\xff\xfe not json",
    ],
    ids=["200k-deep", "5000-digits", "nan", "33-deep", "not-utf8"],
)
def test_malformed_json_is_a_400(abused: Any, body: bytes) -> None:
    abuser = Abuser(abused.port, abused.ca, "127.0.0.5")
    status, answer = abuser.request("POST", "/kbs/v0/auth", body)
    assert status == 400, answer
    abuser.close()


@pytest.mark.parametrize(
    "query", ["since=1e23", "since=100000000000000000000000", "limit=-5", "limit=0", "since=%D9%A1"]
)
def test_out_of_range_query_numbers_are_a_400(abused: Any, query: str) -> None:
    abuser = Abuser(abused.port, abused.ca, "127.0.0.6")
    token = abused.service.config.admin_token
    status, _ = abuser.request(
        "GET", f"/kbs/v0/audit?{query}", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 400
    abuser.close()


@pytest.mark.parametrize("path", [f"/kbs/v0/resource/{RESOURCE}", "/kbs/v0/audit", "/metrics"])
def test_non_ascii_bearer_token_is_a_4xx_without_traceback(
    abused: Any, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    abuser = Abuser(abused.port, abused.ca, "127.0.0.7")
    with caplog.at_level(logging.DEBUG):
        for token in ("é" * 10, "\u00ff\u00fe", "a\x7fb", "\u00a0x"):
            headers = {"Authorization": f"Bearer {token}"}
            status, _ = abuser.request("GET", path, headers=headers)
            assert status in (400, 401)  # HTTP's parser or our bearer check refuses it
    abuser.close()
    assert not [r for r in caplog.records if r.exc_info or r.exc_text]


def _tls12_client(ciphers: str, ca: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    return context


def test_tls12_cbc_suites_are_refused_aead_accepted(abused: Any) -> None:
    cbc = _tls12_client(
        "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:AES128-SHA:AES256-SHA256", abused.ca
    )
    with (
        pytest.raises(ssl.SSLError),
        socket.create_connection(("127.0.0.1", abused.port), timeout=10) as raw,
    ):
        cbc.wrap_socket(raw, server_hostname="127.0.0.1")
    aead = _tls12_client("ECDHE+AESGCM", abused.ca)
    with (
        socket.create_connection(("127.0.0.1", abused.port), timeout=10) as raw,
        aead.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert "GCM" in tls.cipher()[0]


def test_idle_and_excess_connections_are_closed(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    sim: SimTee,
    certs,  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setattr(kbs_http, "IDLE_TIMEOUT_SECONDS", 1.0)
    monkeypatch.setattr(kbs_http, "MAX_CONNECTIONS_PER_CLIENT", 3)
    service = make_service(tmp_path, sim, Clock(SIM_NOW + 60), admin=None)
    server = RunningKbs(service, certs.server_cert, certs.server_key)
    context = ssl.create_default_context(cafile=str(certs.trust_anchor))
    held = []
    try:
        # an idle TLS connection that never sends a request is closed by the KBS
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=30) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.recv(1) == b""
        # an idle TCP connection that never starts TLS holds a slot until the handshake
        # timeout; a client's 4th connection is dropped at once, another client gets in
        for _ in range(3):
            held.append(socket.create_connection(("127.0.0.1", server.port), 30, ("127.0.0.8", 0)))
        extra = socket.create_connection(("127.0.0.1", server.port), 30, ("127.0.0.8", 0))
        with extra, contextlib.suppress(ConnectionResetError):
            assert extra.recv(1) == b""
        other = Abuser(server.port, str(certs.trust_anchor), "127.0.0.9")
        assert other.request("GET", "/healthz")[0] == 200
        other.close()
        assert metric(service, "rate_limited", "connections") >= 1
    finally:
        for sock in held:
            sock.close()
        server.stop()
        service.store.close()


def test_a_server_gets_its_key_while_anonymous_abuse_runs(
    abused: Any, attester: SimAttester
) -> None:
    stop = threading.Event()
    failures: list[str] = []

    def flood(
        source: str, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> None:
        abuser = Abuser(abused.port, abused.ca, source)
        try:
            while not stop.is_set():
                status, _ = abuser.request(method, path, body, headers)
                if status >= 500:
                    failures.append(f"{path}: {status}")
        except AssertionError as err:
            failures.append(str(err))
        finally:
            abuser.close()

    auth = json.dumps(AUTH_BODY).encode()
    bogus = json.dumps(
        {"runtime-data": {"nonce": "AAAA", "tee-pubkey": {}}, "tee-evidence": {"quote": "AAAA"}}
    ).encode()
    jobs = [
        ("127.0.0.10", "POST", "/kbs/v0/auth", auth, {}),
        ("127.0.0.11", "POST", "/kbs/v0/attest", bogus, {}),
        ("127.0.0.12", "GET", f"/kbs/v0/resource/{'y' * 8000}/b/c", None, {}),
        ("127.0.0.13", "POST", "/kbs/v0/auth", _bomb(32 << 20), {"Content-Encoding": "deflate"}),
        ("127.0.0.14", "GET", "/kbs/v0/audit?since=1e23", None, {"Authorization": "Bearer é"}),
    ]
    idle = [
        socket.create_connection(("127.0.0.1", abused.port), 30, ("127.0.0.15", 0))
        for _ in range(20)
    ]
    threads = [threading.Thread(target=flood, args=job, daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    try:
        provider = KbsKeyProvider(abused.url, abused.ca, attester)
        for _ in range(5):
            assert provider.key_for("mnist") == SECRET
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        for sock in idle:
            sock.close()
    assert failures == []
    assert metric(abused.service, "rate_limited", "anonymous_budget") > 0


def test_low_fd_limit_gives_no_traceback_storm(tmp_path: Path, sim_dir: Path, certs) -> None:  # type: ignore[no-untyped-def]
    """`sealserve kbs serve` under a 64-descriptor limit, 200 connections at it: it stays up,
    answers, and logs a few lines, not a traceback per refused connection."""
    from sealserve.kbs.store import generate_master_key_file

    generate_master_key_file(tmp_path / "master.key")
    from joserfc.jwk import ECKey

    (tmp_path / "signing.pem").write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
    (tmp_path / "signing.pem").chmod(0o600)

    kbs = KbsProcess(
        [
            "prlimit",
            "--nofile=64:64",
            "--",
            SEALSERVE,
            "kbs",
            "serve",
            "--db",
            tmp_path / "kbs.db",
            "--master-key",
            tmp_path / "master.key",
            "--signing-key",
            tmp_path / "signing.pem",
            "--insecure-trust-sim-root",
            sim_dir,
            "--tls-cert",
            certs.server_cert,
            "--tls-key",
            certs.server_key,
            "--port",
            "0",
        ],
    )
    held: list[socket.socket] = []
    try:
        for i in range(200):
            with contextlib.suppress(OSError):
                held.append(
                    socket.create_connection(
                        ("127.0.0.1", kbs.port), 10, (f"127.0.1.{i % 4 + 1}", 0)
                    )
                )
        legit = Abuser(kbs.port, str(certs.trust_anchor), "127.0.0.1")
        assert legit.request("GET", "/healthz")[0] == 200
        legit.close()
    finally:
        for sock in held:
            sock.close()
        kbs.stop()
    text = kbs.stdout + kbs.stderr
    assert "Traceback" not in text
    assert len(text) < 20_000
    assert os.path.exists(tmp_path / "kbs.db")


def test_the_log_throttle_allows_so_many_lines_a_second() -> None:
    now = [100.0]
    throttle = LogThrottle(per_second=3, clock=lambda: now[0])
    assert [throttle.allow() for _ in range(5)] == [True, True, True, False, False]
    now[0] += 1
    assert throttle.allow()
