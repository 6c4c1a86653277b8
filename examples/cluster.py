"""`make cluster-demo`: the confidential-serving cluster on one machine, for real, narrated.

Two key brokers (`sealserve kbs serve`) share one PostgreSQL (started here, as a throwaway
server), one set of keys and one server CA; three `sealserve serve` replicas each attest
(simulated TEE), fetch their model key on a short lease and get their own TLS certificate from
the brokers' server CA for a key made in their memory (`--key_broker_tls_name`). One nginx
balances both tiers at layer 4 only (`stream`, TLS passthrough): TLS ends inside a broker or a
replica, never in nginx, so the host running nginx sees ciphertext only:

- the brokers: a KBS session lives in the memory of one broker process, and a TCP connection
  stays on one broker, so a handshake does too (the client starts a handshake again when a
  broker dies under it: `kbs.client`);
- the replicas' REST and gRPC ports, with passive health checks (`max_fails`, `fail_timeout`,
  `proxy_next_upstream` for connections a dead replica refuses): a dead replica is skipped.

Requesters (REST workers over `http.client`, gRPC workers with the tensorflow-serving-api
stubs) verify the replica's attestation through the balancer with `sealserve.client.attested`
and the owner's policy before they send a byte, and open a new connection every few requests
so that load spreads over the replicas. Load runs while one replica and one broker are killed
(SIGKILL); the replica is restarted with the same command, attests again (to the surviving
broker), gets a new certificate and rejoins. Every request is recorded with its start, end and
connection, so the failures can be placed against the kill: only requests on connections to the
killed replica may fail (nginx at layer 4 cannot move a connection). Last, the owner revokes the
model key and every replica unloads the model within its lease.

`run(work)` returns a `ClusterReport` (tests/test_cluster.py asserts on it); `main()` is the
narrated command. Needs nginx with the stream module (Debian: nginx-light and
libnginx-mod-stream) and PostgreSQL's server binaries (initdb, postgres); psycopg for the
brokers. Everything lives under the work directory (default `.cluster-demo/`, recreated),
except PostgreSQL's data directory (a temporary directory, owned by the `postgres` user when
run as root, removed at the end). Every process started here is stopped at the end, whatever
happens.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sealserve.client import TlsFiles
    from sealserve.client.attested import ServerCheck

SEALSERVE = str(Path(sys.executable).with_name("sealserve"))
MODEL = "half_plus_two"
RESOURCE = f"sealserve/model-key/{MODEL}"
TLS_NAME = "sealserve-cluster"  # the name the brokers certify every replica under
TLS_RESOURCE = f"sealserve/tls-cert/{TLS_NAME}"
LEASE_SECONDS = 6  # the model key's lease: revocation reaches every replica within it
XS = [1.0, 2.0, 5.0]
EXPECTED = [2.5, 3.0, 4.5]
METRICS_PATH = "/monitoring/prometheus/metrics"  # serving.metrics.DEFAULT_PATH
START_TIMEOUT = 180.0


class ClusterFailed(Exception):
    pass


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say(f"\n== {title}")


def show(argv: list[str], note: str = "") -> None:
    say("$ " + " ".join(shlex.quote(a) for a in argv) + (f"   # {note}" if note else ""))


def sealserve(*args: str, quiet: bool = False, echo: list[str] | None = None) -> str:
    """Run the real CLI, echoing the command (or `echo`) and, unless `quiet`, what it
    printed."""
    show(["sealserve", *(args if echo is None else echo)])
    result = subprocess.run([SEALSERVE, *args], capture_output=True, text=True)
    shown = (result.stdout + result.stderr).strip()
    if shown and not quiet:
        say("  " + shown.replace("\n", "\n  "))
    if result.returncode != 0:
        raise ClusterFailed(f"`sealserve {' '.join(args)}` exited with {result.returncode}")
    return result.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- what the machine must have ----------------------------------------------------------------


def find_nginx() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else ""
    )
    if not found:
        raise ClusterFailed(
            "nginx is not installed: apt-get install -y nginx-light libnginx-mod-stream"
        )
    return found


def nginx_stream_module(nginx: str) -> str:
    """The `load_module` line the stream module needs ("" when it is built in)."""
    built = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    if re.search(r"--with-stream(\s|$)", built):
        return ""  # built in
    match = re.search(r"--modules-path=(\S+)", built)
    directory = Path(match.group(1) if match else "/usr/lib/nginx/modules")
    module = directory / "ngx_stream_module.so"
    if "--with-stream=dynamic" not in built or not module.exists():
        raise ClusterFailed(
            f"nginx has no stream module ({module} missing): apt-get install -y libnginx-mod-stream"
        )
    return f"load_module {module};"


def find_postgres(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if not versions:
        raise ClusterFailed(
            f"PostgreSQL server binaries ({name}) not found: apt-get install -y postgresql"
        )
    return str(versions[-1])


# --- processes -----------------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    stop_signal: int = signal.SIGTERM

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Processes:
    """Every process this module starts; `stop_all()` ends them (reverse order)."""

    def __init__(self) -> None:
        self.running: dict[str, Process] = {}

    def spawn(
        self,
        name: str,
        argv: list[str],
        log: Path,
        *,
        user: str | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> Process:
        if name in self.running:
            raise ClusterFailed(f"{name} is already running")
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                as_user(user, argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        process = Process(name, popen, log, stop_signal)
        self.running[name] = process
        return process

    def wait_for(self, name: str, ready: Callable[[Process], bool]) -> None:
        process = self.running[name]
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if ready(process):
                return
            if process.popen.poll() is not None:
                raise ClusterFailed(f"{name} exited ({process.popen.returncode}):\n{tail(process)}")
            time.sleep(0.1)
        raise ClusterFailed(f"{name} did not start within {START_TIMEOUT:.0f} s:\n{tail(process)}")

    def kill(self, name: str) -> tuple[float, float]:
        """SIGKILL: (when the signal was sent, when the process was gone)."""
        process = self.running.pop(name)
        show(["kill", "-9", str(process.popen.pid)], name)
        sent = time.monotonic()
        process.popen.kill()
        process.popen.wait()
        return sent, time.monotonic()

    def stop(self, name: str) -> None:
        process = self.running.pop(name)
        if process.popen.poll() is None:
            process.popen.send_signal(process.stop_signal)
            try:
                process.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()

    def stop_all(self) -> None:
        for name in reversed(list(self.running)):
            self.stop(name)


def as_user(user: str | None, argv: list[str]) -> list[str]:
    """`argv` run as `user` (None: as ourselves). setpriv drops the ids after an exec, so
    this process never forks: `subprocess`'s user= would fork() a process whose gRPC
    threads then run their fork handlers in the child, which can die before its exec."""
    if user is None:
        return argv
    entry = pwd.getpwnam(user)
    ids = [f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups"]
    return ["setpriv", *ids, "--", *argv]


def tail(process: Process, lines: int = 15) -> str:
    return "\n".join("  | " + line for line in process.text().splitlines()[-lines:])


def log_says(words: str) -> Callable[[Process], bool]:
    return lambda process: words in process.text()


def listening(*ports: int) -> Callable[[Process], bool]:
    def check(_: Process) -> bool:
        for port in ports:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
        return True

    return check


# --- TLS clients ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trust:
    """What requesters (and the operator's probes) hold: the owner's policy for servers, the
    brokers' server CA (it certifies attested replicas only, with their claims inside) and a
    client certificate of the owner's CA (the replicas require mutual TLS)."""

    policy: Path
    server_ca: Path
    client_cert: Path
    client_key: Path

    def check(self) -> ServerCheck:
        from sealserve.client.attested import ServerCheck

        return ServerCheck.from_files(str(self.policy), server_ca=str(self.server_ca))

    def client(self) -> TlsFiles:
        from sealserve.client import tls_files

        files = tls_files(None, str(self.client_cert), str(self.client_key))
        assert files is not None
        return files

    def operator_context(self) -> ssl.SSLContext:
        """The operator's own reads of one replica (status, metrics): the server CA only."""
        context = ssl.create_default_context(cafile=str(self.server_ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


class NamedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address whose certificate is checked for `server_name` (the name the
    brokers certified every replica under), not for the address. `on_connect(der)` judges the
    certificate of each new connection before a byte of any request is sent on it (raising
    closes the connection)."""

    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        server_name: str,
        *,
        timeout: float = 10.0,
        on_connect: Callable[[bytes], None] | None = None,
    ) -> None:
        super().__init__(host, port, context=context, timeout=timeout)
        self.tls_context, self.server_name, self.on_connect = context, server_name, on_connect

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        try:
            tls = self.tls_context.wrap_socket(raw, server_hostname=self.server_name)
        except BaseException:
            raw.close()
            raise
        try:
            if self.on_connect is not None:
                self.on_connect(tls.getpeercert(binary_form=True) or b"")
        except BaseException:
            tls.close()
            raise
        self.sock = tls


def https_get(trust: Trust, port: int, path: str) -> tuple[int, bytes]:
    connection = NamedHTTPSConnection("127.0.0.1", port, trust.operator_context(), TLS_NAME)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def model_status(trust: Trust, rest_port: int) -> dict[str, Any]:
    """The model's version status on one replica ({} while it does not answer)."""
    try:
        status, body = https_get(trust, rest_port, f"/v1/models/{MODEL}")
        versions: list[dict[str, Any]] = json.loads(body)["model_version_status"]
    except (OSError, ValueError, KeyError):
        return {}
    return versions[0] if status == 200 and versions else {}


def model_available(trust: Trust, rest_port: int) -> bool:
    return model_status(trust, rest_port).get("state") == "AVAILABLE"


def request_counts(trust: Trust, rest_port: int) -> Counter[str]:
    """`:tensorflow:serving:request_count{model_name=MODEL,...}` of one replica, by status."""
    _, body = https_get(trust, rest_port, METRICS_PATH)
    counts: Counter[str] = Counter()
    pattern = re.compile(
        r':tensorflow:serving:request_count\{model_name="' + MODEL + r'",status="(\w+)"\} (\S+)'
    )
    for match in pattern.finditer(body.decode()):
        counts[match.group(1)] += int(float(match.group(2)))
    return counts


def ok_request_count(trust: Trust, rest_port: int) -> int:
    return request_counts(trust, rest_port)["OK"]


def certificate_serial(der: bytes) -> str:
    from cryptography import x509

    return f"{x509.load_der_x509_certificate(der).serial_number:x}"


def served_certificate(trust: Trust, port: int) -> str:
    """The serial of the certificate a replica port presents (a handshake, nothing sent)."""
    from sealserve.client.attested import fetch_server_certificate

    return certificate_serial(fetch_server_certificate(f"127.0.0.1:{port}", port, trust.client()))


# --- load through the balancer -------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """One requester connection (REST) or channel (gRPC) through nginx. `certificate`: the
    serial of the replica certificate the requester verified on it (REST: the connection's
    own; gRPC: "", as a channel does not show its peer: it trusts the server CA for
    `TLS_NAME`, checked by its attested probe first)."""

    protocol: str
    opened: float
    certificate: str


@dataclass(frozen=True)
class Request:
    """One request through nginx; times are `time.monotonic()`; `error` empty when it
    succeeded with the right predictions; `connection` indexes `Load.connections` (-1: no
    connection could be opened)."""

    protocol: str
    start: float
    end: float
    error: str
    connection: int = -1


class Load:
    """`workers` threads per protocol, each sending one request at a time (with a short pause)
    through nginx, over a connection it opens anew every `reconnect_every` requests (nginx
    balances connections, not requests). Every connection is verified before use: the
    replica's certificate chains to the brokers' server CA for `TLS_NAME` and its claims
    satisfy the owner's policy (`sealserve.client.attested`)."""

    def __init__(
        self,
        trust: Trust,
        rest_port: int,
        grpc_port: int,
        workers: int = 2,
        reconnect_every: int = 20,
    ) -> None:
        self.trust, self.rest_port, self.grpc_port = trust, rest_port, grpc_port
        self.workers, self.reconnect_every = workers, reconnect_every
        self.pause = 0.01
        self.requests: list[Request] = []
        self.connections: list[Connection] = []
        self.check: ServerCheck | None = None  # made by start()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def concurrency(self) -> int:
        return 2 * self.workers

    def start(self) -> None:
        from sealserve.serving.tensorflow_runtime import import_tensorflow

        import_tensorflow()  # the stubs import TensorFlow: quietly, please
        self.check = self.trust.check()  # one for all workers (immutable, thread safe)
        for i in range(self.workers):
            for target in (self._rest, self._grpc):
                thread = threading.Thread(target=target, name=f"load-{i}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _connected(self, protocol: str, der: bytes) -> int:
        with self._lock:
            serial = certificate_serial(der) if der else ""
            self.connections.append(Connection(protocol, time.monotonic(), serial))
            return len(self.connections) - 1

    def _record(self, protocol: str, start: float, error: str, connection: int) -> None:
        self.requests.append(Request(protocol, start, time.monotonic(), error, connection))

    def _rest(self) -> None:
        from sealserve.client.attested import attested_ssl_context, verify_server_certificate

        check, client = self.check, self.trust.client()
        body = json.dumps({"instances": XS}).encode()
        verified: tuple[ssl.SSLContext, str] | None = None
        connection: NamedHTTPSConnection | None = None
        current, sent = -1, 0

        def judge(der: bytes) -> None:  # each new connection, before its first request
            nonlocal current
            verify_server_certificate(der, check)
            current = self._connected("REST", der)

        while not self._stop.is_set():
            start = time.monotonic()
            try:
                if verified is None:  # trust: the server CA, for the name it certified
                    verified = attested_ssl_context(f"127.0.0.1:{self.rest_port}", check, client)
                if connection is None:
                    context, name = verified
                    connection = NamedHTTPSConnection(
                        "127.0.0.1", self.rest_port, context, name, on_connect=judge
                    )
                    current, sent = -1, 0
                connection.request(
                    "POST",
                    f"/v1/models/{MODEL}:predict",
                    body,
                    {"Content-Type": "application/json"},
                )
                response = connection.getresponse()
                answer = response.read()
                if response.status != 200:
                    error = f"HTTP {response.status}"
                elif json.loads(answer)["predictions"] != EXPECTED:
                    error = "wrong predictions"
                else:
                    error = ""
            except Exception as err:  # counted, whatever it is: the run judges them all
                error = type(err).__name__
                if connection is not None:
                    connection.close()
                connection = None
            self._record("REST", start, error, current)
            sent += 1
            if connection is not None and sent >= self.reconnect_every:
                connection.close()
                connection = None
            self._stop.wait(self.pause)
        if connection is not None:
            connection.close()

    def _grpc(self) -> None:
        import grpc
        import numpy as np
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        from sealserve.client.attested import attested_grpc_channel
        from sealserve.serving.tensor_proto import from_numpy, to_numpy

        check, client = self.check, self.trust.client()
        target = f"127.0.0.1:{self.grpc_port}"
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        from_numpy(np.asarray(XS, np.float32), out=request.inputs["x"])
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                # verified (chain, name, claims against the policy) before it is returned
                channel = attested_grpc_channel(target, check, client)
            except Exception as err:
                self._record("gRPC", start, type(err).__name__, -1)
                self._stop.wait(self.pause)
                continue
            with channel:
                current = self._connected("gRPC", b"")
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                for _ in range(self.reconnect_every):
                    if self._stop.is_set():
                        break
                    start = time.monotonic()
                    try:
                        response = stub.Predict(request, timeout=10)
                        got = [float(v) for v in to_numpy(response.outputs["y"])]
                        error = "" if got == EXPECTED else "wrong predictions"
                    except grpc.RpcError as err:
                        error = err.code().name  # type: ignore[attr-defined]
                    except Exception as err:
                        error = type(err).__name__
                    self._record("gRPC", start, error, current)
                    self._stop.wait(self.pause)


# --- the report ----------------------------------------------------------------------------------


@dataclass
class ClusterReport:
    """What a run measured. Times are `time.monotonic()`."""

    requests: list[Request] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    concurrency: int = 0
    victim: str = ""  # the replica killed and restarted
    replica_killed: tuple[float, float] = (0.0, 0.0)  # signal sent, process gone
    broker_killed: tuple[float, float] = (0.0, 0.0)
    restarted: float = 0.0  # the restarted replica serves (model AVAILABLE)
    rejoined: float = 0.0  # nginx has sent it requests (its request_count > 0)
    #: `kbs audit` records (JSON), the last seq before the restart and the revoke's seq
    audit: list[dict[str, Any]] = field(default_factory=list)
    seq_before_restart: int = 0
    revoke_seq: int = 0
    audit_chain_ok: bool = False
    #: the replicas' own measurements, by name
    measurements: dict[str, str] = field(default_factory=dict)
    #: the serials of the certificates each replica presented on its REST and gRPC ports
    #: (the restarted one: its first, then its new one)
    replica_certificates: dict[str, list[str]] = field(default_factory=dict)
    #: `:tensorflow:serving:request_count` (OK) of each replica before the revocation (the
    #: restarted one counts since its restart)
    replica_requests: dict[str, int] = field(default_factory=dict)
    #: after the revocation: each replica's model status and request counts by status
    revoked_status: dict[str, dict[str, Any]] = field(default_factory=dict)
    revoked_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    #: nginx stream: connections to the brokers, (upstream address(es), when logged)
    broker_connections: list[str] = field(default_factory=list)
    broker_addresses: dict[str, str] = field(default_factory=dict)
    nginx_config: str = ""
    seconds: float = 0.0

    def failures(self) -> list[Request]:
        return [r for r in self.requests if r.error]

    def replica_of(self, serial: str) -> str:
        """Which replica a certificate (serial) belongs to ("" unknown)."""
        return next((n for n, s in self.replica_certificates.items() if serial in s), "")

    def on_killed_connection(self, request: Request, grace: float = 1.0) -> bool:
        """Whether `request` went over a connection the kill could break: one opened before
        the killed replica was gone, still in use when the signal was sent and, where the
        requester knows its peer (REST), to the killed replica. A gRPC request must also have
        started before the replica was gone (plus `grace`, for a connection nginx had not yet
        seen close): gRPC reconnects a channel by itself. A request whose connection was still
        being opened (no verified certificate yet) counts when it was in flight at the kill:
        its handshake may have been with the killed replica."""
        sent, gone = self.replica_killed
        in_flight = request.start <= gone + grace and request.end >= sent
        if not 0 <= request.connection < len(self.connections):
            return in_flight
        if request.end < sent:
            return False
        connection = self.connections[request.connection]
        if connection.opened > gone:
            return False
        if connection.certificate:
            return self.replica_of(connection.certificate) == self.victim
        return in_flight

    def releases(self, decision: str = "allowed") -> list[dict[str, Any]]:
        return [
            r
            for r in self.audit
            if r["action"] == "release"
            and r["decision"] == decision
            and r.get("resource") == RESOURCE
        ]

    def replica_named(self, record: dict[str, Any]) -> str:
        """The replica an audit record is about, by its measurement ("?" unknown)."""
        measured = (record.get("measurements") or {}).get("mr_enclave", "")
        return next((n for n, m in self.measurements.items() if m == measured), "?")


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    grpc_port: int
    rest_port: int
    flags: list[str]

    def differs(self) -> list[str]:
        """What tells its command from the others' (for the narration)."""
        return ["...", f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}", "..."]


def run(
    work: Path,
    *,
    model: Path | None = None,
    replicas: int = 3,
    before: float = 3.0,
    after: float = 3.0,
) -> ClusterReport:
    """The whole scenario; `model`: an existing half_plus_two SavedModel (else one is made)."""
    nginx = find_nginx()
    stream_module = nginx_stream_module(nginx)
    initdb, postgres = find_postgres("initdb"), find_postgres("postgres")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    work = work.resolve()
    report = ClusterReport()
    processes = Processes()
    started = time.monotonic()
    pg_dir = Path(tempfile.mkdtemp(prefix="sealserve-cluster-pg-"))
    try:
        _run(work, report, processes, nginx, stream_module, initdb, postgres, pg_dir, model,
             replicas, before, after)  # fmt: skip
    finally:
        processes.stop_all()
        shutil.rmtree(pg_dir, ignore_errors=True)
    # nginx logs a stream connection when it closes: complete once everything has stopped
    report.broker_connections = broker_log(
        work / "nginx" / "kbs-stream.log", report.broker_addresses
    )
    say(
        "  connections to the brokers through nginx stream (all processes stopped): "
        f"{per(Counter(report.broker_connections))}"
    )
    report.seconds = time.monotonic() - started
    return report


def _run(
    work: Path,
    report: ClusterReport,
    processes: Processes,
    nginx: str,
    stream_module: str,
    initdb: str,
    postgres: str,
    pg_dir: Path,
    model: Path | None,
    replicas: int,
    before: float,
    after: float,
) -> None:
    key = work / "keys" / f"{MODEL}.key"
    encrypted = work / "models" / MODEL / "1"
    certs = work / "ssl_configure"

    step("1. The owner: a model, its wrap key, the encrypted model, mutual-TLS certificates")
    if model is None:
        model = work / "plain" / MODEL / "1"
        sealserve("models", "make", MODEL, str(model))
    sealserve("keygen", "-w", str(key))
    sealserve("encrypt", "-w", str(key), "-i", str(model), "-o", str(encrypted))
    sealserve(
        "certs", "twoway", "localhost", "client.local", "-o", str(certs),
        "--san", "127.0.0.1", "--encrypt-ssl-cfg", str(key),
    )  # fmt: skip
    sealserve("sim", "init", str(work / "sim"))

    step("2. One PostgreSQL for both key brokers (a throwaway server, as user postgres)")
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        shutil.chown(pg_dir, user, user)
    pg_port = free_port()
    data = pg_dir / "data"
    initdb_argv = [initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"]
    show(initdb_argv)
    result = subprocess.run(as_user(user, initdb_argv), capture_output=True, text=True)
    if result.returncode != 0:
        raise ClusterFailed(f"initdb failed: {(result.stdout + result.stderr).strip()}")
    pg_argv = [postgres, "-D", str(data), "-k", str(pg_dir), "-h", "", "-p", str(pg_port),
               "-c", "fsync=off"]  # fmt: skip
    show(pg_argv)
    processes.spawn(
        "postgres", pg_argv, work / "postgres.log", user=user, stop_signal=signal.SIGINT
    )
    processes.wait_for("postgres", log_says("ready to accept connections"))
    db_url = f"postgresql://postgres@/postgres?host={pg_dir}&port={pg_port}"

    step(
        "3. Two key brokers on it, sharing the master key, the signing key, the admin token and "
        "the server CA"
    )
    kbs_keys = work / "kbs-keys"
    sealserve("kbs", "init", str(kbs_keys))
    kbs_tls = work / "kbs-tls"
    sealserve("certs", "oneway", "localhost", "-o", str(kbs_tls), "--san", "127.0.0.1")
    broker_ports = [free_port(), free_port()]
    for i, port in enumerate(broker_ports, 1):
        argv = [
            "kbs", "serve", "--db", db_url,
            "--master-key", str(kbs_keys / "master.key"),
            "--signing-key", str(kbs_keys / "signing-key.pem"),
            "--admin-token-file", str(kbs_keys / "admin.token"),
            "--tls-cert", str(kbs_tls / "server" / "cert.pem"),
            "--tls-key", str(kbs_tls / "server" / "key.pem"),
            "--port", str(port), "--insecure-trust-sim-root", str(work / "sim"),
            # the server CA (made by `kbs init`): both brokers certify attested replicas
            "--server-ca-key", str(kbs_keys / "server-ca-key.pem"),
            "--server-ca-cert", str(kbs_keys / "server-ca.pem"),
        ]  # fmt: skip
        show(["sealserve", *argv])
        processes.spawn(f"kbs-{i}", [SEALSERVE, *argv], work / f"kbs-{i}.log")
        # one after the other: each creates the tables if missing
        processes.wait_for(f"kbs-{i}", log_says("KBS listening on https://"))
        report.broker_addresses[f"127.0.0.1:{port}"] = f"kbs-{i}"

    step(
        "4. nginx in front, at layer 4 only (stream, TLS passthrough): TLS ends in a broker (a "
        "connection, so a KBS session, stays on one) or in a replica, never in nginx; a failed "
        "replica skipped (max_fails, proxy_next_upstream)"
    )
    kbs_lb, rest_lb, grpc_lb = free_port(), free_port(), free_port()
    replica_set = [
        Replica(f"replica-{i}", free_port(), free_port(), []) for i in range(1, replicas + 1)
    ]
    lb_dir = work / "nginx"
    lb_dir.mkdir(parents=True)
    report.nginx_config = nginx_conf(
        lb_dir, stream_module, broker_ports, kbs_lb, rest_lb, grpc_lb, replica_set
    )
    (lb_dir / "nginx.conf").write_text(report.nginx_config)
    nginx_argv = [nginx, "-p", str(lb_dir), "-c", "nginx.conf", "-e", "error.log"]
    checked = subprocess.run([*nginx_argv, "-t", "-q"], capture_output=True, text=True)
    if checked.returncode != 0:
        raise ClusterFailed(f"nginx refused its configuration: {checked.stderr.strip()}")
    show([*nginx_argv, "-g", "daemon off;"], f"config: {lb_dir / 'nginx.conf'}")
    processes.spawn("nginx", [*nginx_argv, "-g", "daemon off;"], lb_dir / "stdout.log",
                    stop_signal=signal.SIGQUIT)  # fmt: skip
    processes.wait_for("nginx", listening(kbs_lb, rest_lb, grpc_lb))
    say(
        f"  brokers at https://127.0.0.1:{kbs_lb}, REST at https://127.0.0.1:{rest_lb}, gRPC at "
        f"127.0.0.1:{grpc_lb}"
    )

    step(
        "5. The key and the policy, through the balancer: each replica's measurement is pinned "
        "(on one machine they differ by their ports; identical pods would share one); the key "
        f"is lent on a {LEASE_SECONDS} s lease; the same policy admits the replicas to a "
        f"certificate for {TLS_NAME}"
    )
    kbs_url = f"https://127.0.0.1:{kbs_lb}"
    admin = ["--url", kbs_url, "--ca", str(kbs_tls / "server" / "cert.pem"),
             "--admin-token-file", str(kbs_keys / "admin.token")]  # fmt: skip
    sealserve("kbs", "secret", "put", RESOURCE, "--file", str(key), *admin)
    monitoring = work / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
    for replica in replica_set:
        replica.flags = [
            f"--model_name={MODEL}",
            f"--model_base_path={encrypted.parent}",
            f"--port={replica.grpc_port}",
            f"--rest_api_port={replica.rest_port}",
            f"--ssl_config_file={certs / 'ssl.cfg'}",
            f"--ssl_config_key={MODEL}",
            f"--monitoring_config_file={monitoring}",
            "--bind_address=127.0.0.1",
            "--tensorflow_intra_op_parallelism=1",
            "--tensorflow_inter_op_parallelism=1",
            "--inference_threads=2",
            f"--key_broker={kbs_url}",
            f"--key_broker_ca={kbs_tls / 'server' / 'cert.pem'}",
            "--attestation=sim",
            f"--sim_dir={work / 'sim'}",
            f"--key_broker_tls_name={TLS_NAME}",  # its TLS key in memory, certified by the KBS
        ]
        echo = None if replica is replica_set[0] else ["measure", *replica.differs()]
        report.measurements[replica.name] = sealserve("measure", *replica.flags, echo=echo).strip()
    pinned = ", ".join(f'"{m}"' for m in report.measurements.values())
    replicas_policy = (
        f'tee = ["sim"]\n[[sim]]\nmr_enclave = [{pinned}]\nmr_signer = "any"\nisv_prod_id = [0]\n'
    )
    policy = work / "policy.toml"
    policy.write_text(f"key_lease_seconds = {LEASE_SECONDS}\n" + replicas_policy)
    sealserve("kbs", "policy", "set", RESOURCE, str(policy), *admin)
    certificate_policy = work / "certificate-policy.toml"
    certificate_policy.write_text(replicas_policy)
    sealserve("kbs", "policy", "set", TLS_RESOURCE, str(certificate_policy), *admin)
    # the requesters check each replica against the same pins, with the brokers' server CA
    requester_policy = work / "requester-policy.toml"
    requester_policy.write_text(replicas_policy)
    trust = Trust(
        requester_policy,
        kbs_keys / "server-ca.pem",
        certs / "client" / "cert.pem",
        certs / "client" / "key.pem",
    )

    step(
        f"6. {replicas} replicas: each attests to a broker, decrypts the model in memory and gets "
        f"its own certificate for {TLS_NAME} (its key made in its memory)"
    )
    for replica in replica_set:
        start_replica(processes, replica, work / f"{replica.name}.log", verbose=replica is
                      replica_set[0])  # fmt: skip
    for replica in replica_set:
        wait_replica(processes, replica, trust, report)
    load = Load(trust, rest_lb, grpc_lb)
    report.concurrency = load.concurrency
    report.requests, report.connections = load.requests, load.connections

    step(
        f"7. Load through nginx: {load.workers} REST and {load.workers} gRPC clients, one request "
        f"at a time each, a new connection every {load.reconnect_every} requests, each verified "
        "(the server CA, the name, the claims against the owner's policy) before it is used"
    )
    load.start()
    try:
        time.sleep(before)
        # until every replica has served requests and REST requesters have verified each one
        # (a condition, with a generous deadline for a loaded machine)
        deadline = time.monotonic() + 120
        while True:
            counts = {r.name: ok_request_count(trust, r.rest_port) for r in replica_set}
            verified = {report.replica_of(c.certificate) for c in list(load.connections)}
            if all(counts.values()) and verified >= set(counts):
                break
            if time.monotonic() > deadline:
                raise ClusterFailed(
                    f"nginx did not spread the load over every replica: {counts}; REST "
                    f"requesters verified {seen(report) or 'no replica'}"
                )
            time.sleep(0.5)
        say(f"  {summary(load.requests)}; per replica: {per(counts)}")
        say(f"  replica certificates the REST requesters verified: {seen(report)}")

        victim = replica_set[-1]
        report.victim = victim.name
        step(f"8. Kill {victim.name} and kbs-1 mid-run (SIGKILL), then restart {victim.name}")
        report.replica_killed = processes.kill(victim.name)
        sent, gone = report.replica_killed
        say(f"  ({victim.name} gone {(gone - sent) * 1000:.0f} ms after the signal)")
        time.sleep(1.0)
        report.broker_killed = processes.kill("kbs-1")
        time.sleep(1.0)
        records, _ = audit_records(admin, echo=False)
        report.seq_before_restart = max((r["seq"] for r in records), default=0)
        say(f"  {victim.name} restarts with the same command (so the same measurement):")
        start_replica(processes, victim, work / f"{victim.name}.restart.log", verbose=False)
        wait_replica(processes, victim, trust, report)
        report.restarted = time.monotonic()
        deadline = time.monotonic() + 60
        while ok_request_count(trust, victim.rest_port) == 0:
            if time.monotonic() > deadline:
                raise ClusterFailed(f"nginx sent {victim.name} no request after its restart")
            time.sleep(0.2)
        report.rejoined = time.monotonic()
        say(
            f"  {victim.name} rejoined: nginx sent it requests "
            f"{report.rejoined - report.restarted:.1f} s after it was ready"
        )
        time.sleep(after)
    finally:
        load.stop()
    report.replica_requests = {r.name: ok_request_count(trust, r.rest_port) for r in replica_set}

    step("9. What happened")
    failures = report.failures()
    span = max(r.end for r in load.requests) - min(r.start for r in load.requests)
    say(f"  {summary(load.requests)} in {span:.1f} s (at most {report.concurrency} in flight)")
    say(
        f"  {len(load.connections)} connections, each verified before use; replica "
        f"certificates the REST requesters verified: {seen(report)}"
    )
    for failure in failures:
        peer = ""
        if 0 <= failure.connection < len(load.connections):
            serial = load.connections[failure.connection].certificate
            peer = f" on a connection to {report.replica_of(serial) or '?'}" if serial else ""
        say(
            f"  failed: {failure.protocol} {failure.error}{peer}, started "
            f"{(failure.start - sent) * 1000:+.0f} ms from the kill, ended "
            f"{(failure.end - sent) * 1000:+.0f} ms"
        )
    outside = [r for r in failures if not report.on_killed_connection(r)]
    say(
        f"  failures on connections to {victim.name} when it was killed: "
        f"{len(failures) - len(outside)}; any other: {len(outside)}"
    )
    after_kbs = [r for r in load.requests if r.start > report.broker_killed[1]]
    say(f"  after kbs-1 was killed: {summary(after_kbs)}")
    say(f"  served per replica (Prometheus request_count): {per(report.replica_requests)}")

    step(
        "10. The owner revokes the model key: every replica's lease renewal is refused and it "
        f"unloads the model (within the {LEASE_SECONDS} s lease)"
    )
    records, _ = audit_records(admin, echo=False)
    before_revoke = max((r["seq"] for r in records), default=0)
    sealserve("kbs", "secret", "revoke", RESOURCE, *admin)
    deadline = time.monotonic() + 120  # generous: a loaded machine; the lease is what counts
    for replica in replica_set:
        while model_status(trust, replica.rest_port).get("state") != "END":
            if time.monotonic() > deadline:
                raise ClusterFailed(f"{replica.name} still serves {MODEL} after the revocation")
            time.sleep(0.5)
        status = model_status(trust, replica.rest_port)
        report.revoked_status[replica.name] = status
        say(f"  {replica.name}: {MODEL} {status['state']}: {status['status']['error_message']}")
    for replica in replica_set:
        refused = refused_predict(trust, replica.rest_port)
        report.revoked_counts[replica.name] = dict(request_counts(trust, replica.rest_port))
        say(
            f"  {replica.name}: a predict now answers {refused}; request_count "
            f"{dict(report.revoked_counts[replica.name])}"
        )

    records, chain_ok = audit_records(admin)
    report.audit, report.audit_chain_ok = records, chain_ok
    report.revoke_seq = next(
        (r["seq"] for r in records if r["seq"] > before_revoke and r.get("reason") == "revoke"), 0
    )
    say("  the key broker's audit log (one chain, written by both brokers), model key only:")
    for line in audit_story(report):
        say(f"    {line}")
    attested = sum(1 for r in records if r["action"] == "attest" and r["decision"] == "verified")
    issued = sum(1 for r in records if r["action"] == "certificate")
    say(
        f"  {attested} attestations verified, {issued} certificate records; audit chain "
        f"{'verified' if chain_ok else 'BROKEN'} ({len(records)} records)"
    )


def start_replica(processes: Processes, replica: Replica, log: Path, *, verbose: bool) -> None:
    show(["sealserve", "serve", *(replica.flags if verbose else replica.differs())])
    processes.spawn(replica.name, [SEALSERVE, "serve", *replica.flags], log)


def wait_replica(
    processes: Processes, replica: Replica, trust: Trust, report: ClusterReport
) -> None:
    processes.wait_for(replica.name, log_says(f"serving {MODEL}"))
    processes.wait_for(replica.name, lambda _: model_available(trust, replica.rest_port))
    line = next(
        (x for x in processes.running[replica.name].text().splitlines() if f"serving {MODEL}" in x),
        "",
    )
    serials = {served_certificate(trust, port) for port in (replica.rest_port, replica.grpc_port)}
    if len(serials) != 1:
        raise ClusterFailed(f"{replica.name} shows two certificates on its ports: {serials}")
    serial = serials.pop()
    report.replica_certificates.setdefault(replica.name, []).append(serial)
    say(
        f"  {replica.name}: serving {line.partition('serving ')[2].strip()}; certificate "
        f"{serial[:12]}… from the brokers' server CA"
    )


def refused_predict(trust: Trust, rest_port: int) -> str:
    """What one replica answers to a predict once the model is gone (e.g. "HTTP 404")."""
    connection = NamedHTTPSConnection("127.0.0.1", rest_port, trust.operator_context(), TLS_NAME)
    try:
        body = json.dumps({"instances": XS}).encode()
        connection.request("POST", f"/v1/models/{MODEL}:predict", body)
        response = connection.getresponse()
        return f"HTTP {response.status} {json.loads(response.read()).get('error', '')}".strip()
    finally:
        connection.close()


def audit_story(report: ClusterReport) -> list[str]:
    """The model key's audit records as lines: each attested release, the revoke and each
    refused renewal; the lease renewals in between counted per replica."""
    lines: list[str] = []
    sessions: set[str] = set()
    renewals: Counter[str] = Counter()
    for record in report.audit:
        if record.get("resource") != RESOURCE:
            continue
        name, session = report.replica_named(record), f"session {record.get('session', '')[:8]}…"
        if record["action"] == "admin":
            lines.append(f"#{record['seq']:<4} {record['reason']} {RESOURCE} (the owner)")
        elif record["action"] == "release" and record["decision"] == "denied":
            lines.append(f"#{record['seq']:<4} renewal refused: {name} ({session})")
        elif record["action"] == "release" and record["session"] not in sessions:
            when = ", after the restart" if record["seq"] > report.seq_before_restart else ""
            lines.append(f"#{record['seq']:<4} key released to {name} ({session}{when})")
            sessions.add(record["session"])
        elif record["action"] == "release":
            renewals[name] += 1
    lines.append(f"lease renewals allowed: {per(dict(sorted(renewals.items())))}")
    return lines


def seen(report: ClusterReport) -> str:
    """The replica certificates REST requesters verified, with how many connections each."""
    counts = Counter(c.certificate for c in report.connections if c.certificate)
    return ", ".join(
        f"{report.replica_of(serial) or '?'} {serial[:12]}… ({n})"
        for serial, n in sorted(counts.items(), key=lambda x: report.replica_of(x[0]))
    )


def per(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def summary(requests: list[Request]) -> str:
    parts = []
    for protocol in ("REST", "gRPC"):
        mine = [r for r in requests if r.protocol == protocol]
        failed = sum(1 for r in mine if r.error)
        parts.append(f"{protocol} {len(mine)} requests, {failed} failed")
    return "; ".join(parts)


def audit_records(admin: list[str], *, echo: bool = True) -> tuple[list[dict[str, Any]], bool]:
    """Every record of the (shared) audit log, and whether its hash chain verifies."""
    if echo:
        show(["sealserve", "kbs", "audit", *admin])
    result = subprocess.run(
        [SEALSERVE, "kbs", "audit", "--limit", "100000", *admin], capture_output=True, text=True
    )
    records = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    if result.returncode not in (0, 1) or not records:
        raise ClusterFailed(f"`sealserve kbs audit` failed: {result.stderr.strip()}")
    return records, result.returncode == 0


def broker_log(path: Path, names: dict[str, str]) -> list[str]:
    """nginx stream's log of broker connections: which broker(s) each one tried."""
    connections = []
    if path.exists():
        for line in path.read_text().splitlines():
            upstreams = line.split("|")[0].split(", ")
            connections.append(" then ".join(names.get(u, u) for u in upstreams))
    return connections


def nginx_conf(
    lb_dir: Path,
    stream_module: str,
    broker_ports: list[int],
    kbs_lb: int,
    rest_lb: int,
    grpc_lb: int,
    replicas: list[Replica],
) -> str:
    """nginx.conf: layer 4 balancers (stream, TLS passthrough) for the brokers and the
    replicas' REST and gRPC ports; no `http` block, no certificate, no key: nginx cannot read
    a byte of what it forwards."""

    def servers(ports: list[int], fail_timeout: str) -> str:
        return "\n".join(
            f"        server 127.0.0.1:{p} max_fails=1 fail_timeout={fail_timeout};" for p in ports
        )

    def balancer(port: int, upstream: str) -> str:
        return f"""    server {{
        listen 127.0.0.1:{port};
        proxy_pass {upstream};
        proxy_connect_timeout 1s;
        proxy_next_upstream on;
    }}"""

    user = "user root;" if os.geteuid() == 0 else ""
    return f"""# sealserve cluster-demo: nginx before the brokers and the replicas, layer 4 only
{user}
worker_processes 1;
pid {lb_dir}/nginx.pid;
error_log {lb_dir}/error.log notice;
{stream_module}
events {{ worker_connections 1024; }}

stream {{
    # TLS passthrough everywhere: TLS ends inside a broker or a replica (in its TEE), so the
    # requesters verify the replica's own attested certificate and this host sees ciphertext.
    # A connection stays on one upstream: a KBS session (in one broker's memory) too.
    # Passive health checks: an upstream that refuses a connection is skipped for
    # fail_timeout, and the connection goes to the next one (proxy_next_upstream); a
    # connection already on an upstream that dies is closed (nginx cannot move it).
    log_format upstreams '$upstream_addr|$status|$session_time';
    access_log {lb_dir}/kbs-stream.log upstreams;
    upstream kbs {{
{servers(broker_ports, "5s")}
    }}
{balancer(kbs_lb, "kbs")}

    upstream rest_replicas {{
{servers([r.rest_port for r in replicas], "2s")}
    }}
    upstream grpc_replicas {{
{servers([r.grpc_port for r in replicas], "2s")}
    }}
    server {{
        listen 127.0.0.1:{rest_lb};
        proxy_pass rest_replicas;
        proxy_connect_timeout 1s;
        proxy_next_upstream on;
        access_log {lb_dir}/replicas-stream.log upstreams;
    }}
    server {{
        listen 127.0.0.1:{grpc_lb};
        proxy_pass grpc_replicas;
        proxy_connect_timeout 1s;
        proxy_next_upstream on;
        access_log {lb_dir}/replicas-stream.log upstreams;
    }}
}}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(".cluster-demo"),
        help="where the demo's files go (recreated; default .cluster-demo)",
    )
    args = parser.parse_args(argv)
    try:
        report = run(args.workdir)
        outside = [r for r in report.failures() if not report.on_killed_connection(r)]
        if outside:
            raise ClusterFailed(f"{len(outside)} requests failed outside the kill")
    except ClusterFailed as exc:
        print(f"\ncluster demo failed: {exc}", file=sys.stderr)
        return 1
    say(f"\nCluster demo complete in {report.seconds:.0f} s; its files are in {args.workdir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
