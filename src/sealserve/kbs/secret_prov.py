"""Gramine's secret-provisioning endpoint, so that an unchanged Gramine enclave
(`libsecret_prov_attest.so`) gets its key from this KBS.

The protocol, as Gramine's `tools/sgx/ra-tls/secret_prov_verify.c` speaks it: mutual TLS in
which the server shows an ordinary certificate (the enclave checks it against
`SECRET_PROVISION_CA_CHAIN_PATH`) and the enclave a self-signed RA-TLS certificate carrying its
quote (`attestation.ratls`). The enclave then sends `SECRET_PROVISION_RA_TLS_REQUEST_V1\\0`
(35 bytes); the server answers `SECRET_PROVISION_RA_TLS_RESPONSE_V1:\\0` (37 bytes), the
secret's size as a big-endian u32, and the secret. Anything else closes the connection with
nothing released.

Which secret: the request names none, so the owner lists the resources this endpoint may
release (`sealserve kbs secret-prov map`, stored under the reserved policy key
`SECRET_PROV_MAP`); the first one whose own policy admits the enclave's claims is released.
Verification, policy, audit: the KBS's own (`KbsService.provision`).

Python's `ssl` cannot accept a self-signed client certificate and hand it over for checking,
so the TLS endpoint uses pyOpenSSL: the handshake accepts any client certificate (it proves
possession of the certificate's key), and the certificate is then judged here — validity
window, self-signature, RA-TLS evidence and its key binding, then the quote and the policy.
Abuse costs little, as on the HTTP port (`kbs.limits`): a connection cap per client and in
total, an anonymous budget per client (each connection costs one token, given back when the
enclave is served), a bounded thread pool, and socket timeouts, so a client that stalls costs
one thread for at most `timeout` seconds. Refusals before the evidence verifies are counted
(`kbs_unauthenticated_total{endpoint="secret-prov"}`), not audited.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL

from sealserve.errors import InvalidArgument, SealserveError
from sealserve.kbs.limits import AnonymousBudget, ConnectionCaps, client_key
from sealserve.kbs.protocol import check_resource_path

log = logging.getLogger(__name__)

REQUEST = b"SECRET_PROVISION_RA_TLS_REQUEST_V1\0"
RESPONSE = b"SECRET_PROVISION_RA_TLS_RESPONSE_V1:\0"
DEFAULT_PORT = 4433
# the serving ports' rule: forward-secret AEAD suites only (TLS 1.3's are all AEAD)
_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20"


@dataclass(frozen=True)
class SecretProvMap:
    """The resources the endpoint may release, tried in order."""

    resources: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> SecretProvMap:
        try:
            return cls.parse_json(json.loads(text))
        except json.JSONDecodeError:
            raise InvalidArgument("the secret-prov map is not valid JSON") from None

    @classmethod
    def parse_json(cls, data: Any) -> SecretProvMap:
        items = data.get("resources") if isinstance(data, dict) else None
        if not isinstance(items, list) or not items:
            raise InvalidArgument("the secret-prov map must list at least one resource")
        resources = tuple(check_resource_path(item) for item in items)
        if len(set(resources)) != len(resources):
            raise InvalidArgument("the secret-prov map lists a resource twice")
        return cls(resources)

    def to_text(self) -> str:
        return json.dumps({"resources": list(self.resources)})


def server_context(cert_file: str, key_file: str) -> SSL.Context:
    """TLS 1.2+ with AEAD suites; a client certificate is required but judged after the
    handshake (see the module docstring)."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_cipher_list(_CIPHERS)
    context.use_certificate_chain_file(cert_file)
    context.use_privatekey_file(key_file)
    context.check_privatekey()
    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _accept_any)
    context.set_options(SSL.OP_NO_RENEGOTIATION)
    return context


def _accept_any(_conn: Any, _cert: Any, _errno: int, _depth: int, _ok: int) -> bool:
    return True  # RA-TLS certificates are self-signed: `SecretProvServer._judge` decides


class SecretProvServer:
    """The endpoint, on its own threads beside the KBS's HTTP server."""

    def __init__(
        self,
        service: Any,  # KbsService
        context: SSL.Context,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        timeout: float = 10.0,
        max_connections: int = 64,
        max_connections_per_client: int = 8,
        budget: AnonymousBudget | None = None,
        threads: int = 8,
    ) -> None:
        self.service = service
        self._context = context
        self._timeout = timeout
        self._lock = threading.Lock()  # the limits below are not thread safe
        self._caps = ConnectionCaps(per_client=max_connections_per_client, total=max_connections)
        self._budget = budget or AnonymousBudget()
        self._pool = ThreadPoolExecutor(threads, "sealserve-secret-prov")
        self._listener = socket.create_server((host, port), reuse_port=False, backlog=128)
        self.port: int = self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    def start(self) -> SecretProvServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, address = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                continue  # e.g. EMFILE: drop this one, keep serving
            client = client_key(address[0])
            with self._lock:
                admitted = not self._budget.exhausted(client) and self._caps.admit(client)
                if admitted:
                    self._budget.charge(client)
            if not admitted:
                self.service.metrics.rate_limited.labels("secret-prov").inc()
                sock.close()
                continue
            self._pool.submit(self._serve_guarded, sock, address[0], client)

    def _serve_guarded(self, sock: socket.socket, peer: str, client: str) -> None:
        served = False
        try:
            served = self._serve(sock, peer)
        except Exception:  # noqa: BLE001 - one connection's failure must not end the server
            log.exception("secret-prov: unexpected error serving %s", peer)
        finally:
            sock.close()
            with self._lock:
                self._caps.release(client)
                if served:  # an attested enclave costs nothing
                    self._budget.refund(client, 1.0)

    def _serve(self, sock: socket.socket, peer: str) -> bool:
        """Serve one connection; True when a secret was released."""
        # SO_RCVTIMEO/SO_SNDTIMEO keep the socket blocking (pyOpenSSL cannot use Python's
        # socket timeouts) while bounding every read and write
        interval = struct.pack("ll", int(self._timeout), int(self._timeout % 1 * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, interval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, interval)
        conn = SSL.Connection(self._context, sock)
        conn.set_accept_state()
        try:
            conn.do_handshake()
            certificate = conn.get_peer_certificate(as_cryptography=True)
            request = _read_exactly(conn, len(REQUEST))
        except (SSL.Error, OSError) as err:
            self.service.refuse_provision(f"TLS handshake failed ({_brief(err)})")
            return False
        if certificate is None:  # VERIFY_FAIL_IF_NO_PEER_CERT makes this unreachable
            return False
        if request != REQUEST:
            self.service.refuse_provision("malformed secret-provisioning request")
            _close(conn)
            return False
        try:
            secret = self.service.provision(certificate, peer=peer)
        except SealserveError as err:
            # counted or audited by the service; the enclave learns nothing but a closed
            # connection, as from Gramine's own server
            log.debug("secret-prov: refused %s: %s", peer, err.message)
            _close(conn)
            return False
        try:
            conn.sendall(RESPONSE + struct.pack(">I", len(secret)) + secret)
        except (SSL.Error, OSError) as err:
            log.info("secret-prov: sending to %s failed: %s", peer, _brief(err))
        finally:
            del secret
        _close(conn)
        return True


def _read_exactly(conn: SSL.Connection, size: int) -> bytes:
    data = b""
    while len(data) < size:
        try:
            chunk = conn.recv(size - len(data))
        except SSL.ZeroReturnError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _close(conn: SSL.Connection) -> None:
    with contextlib.suppress(SSL.Error, OSError):
        conn.shutdown()


def _brief(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__
