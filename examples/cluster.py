"""`make cluster-demo`: the confidential-serving cluster on one machine, for real, narrated.

Two key brokers (`sealserve kbs serve`) share one PostgreSQL (started here, as a throwaway
server) and one set of keys; three `sealserve serve` replicas each attest (simulated TEE) and
fetch their model key; nginx stands in front of both tiers:

- the brokers behind nginx `stream` (L4, TLS passthrough): a KBS session lives in the memory of
  one broker process, and a TCP connection stays on one broker, so a handshake does too (the
  client starts a handshake again when a broker dies under it: `kbs.client`);
- the replicas behind nginx `http` as an HTTPS (REST) and TLS gRPC load balancer, with mutual
  TLS on both sides and passive health checks (`max_fails`, `proxy_next_upstream`,
  `grpc_next_upstream`): a dead replica is skipped.

Load runs through nginx over REST and gRPC (the tensorflow-serving-api stubs) while one replica
and one broker are killed (SIGKILL); the replica is restarted with the same command, attests
again (to the surviving broker) and rejoins. Every request is recorded with its start and end,
so the failures can be placed against the kill: only requests in flight on the killed replica
may fail (nginx does not resend a POST that reached a replica).

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
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SEALSERVE = str(Path(sys.executable).with_name("sealserve"))
MODEL = "half_plus_two"
RESOURCE = f"sealserve/model-key/{MODEL}"
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
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                **as_user(user),
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


def as_user(user: str | None) -> dict[str, Any]:
    """`subprocess` arguments that run a command as `user` (None: as ourselves)."""
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


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


def tls_context(certs: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs / "ca_cert.pem"))
    context.load_cert_chain(str(certs / "client" / "cert.pem"), str(certs / "client" / "key.pem"))
    return context


def https_get(certs: Path, port: int, path: str) -> bytes:
    url = f"https://localhost:{port}{path}"
    with urllib.request.urlopen(url, timeout=10, context=tls_context(certs)) as response:
        return bytes(response.read())


def model_available(certs: Path, rest_port: int) -> bool:
    try:
        status = json.loads(https_get(certs, rest_port, f"/v1/models/{MODEL}"))
    except OSError:
        return False
    return any(s["state"] == "AVAILABLE" for s in status["model_version_status"])


def ok_request_count(certs: Path, rest_port: int) -> int:
    """`:tensorflow:serving:request_count{model_name=...,status="OK"}` of one replica."""
    text = https_get(certs, rest_port, METRICS_PATH).decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(":tensorflow:serving:request_count{") and 'status="OK"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


# --- load through the balancer -------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request through nginx; times are `time.monotonic()`; `error` empty when it
    succeeded with the right predictions."""

    protocol: str
    start: float
    end: float
    error: str


class Load:
    """`workers` threads per protocol, each sending one request at a time (with a short pause)
    through nginx: REST over HTTPS keep-alive connections, gRPC over one channel each."""

    def __init__(self, certs: Path, rest_port: int, grpc_port: int, workers: int = 2) -> None:
        self.certs, self.rest_port, self.grpc_port = certs, rest_port, grpc_port
        self.workers = workers
        self.pause = 0.01
        self.requests: list[Request] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def concurrency(self) -> int:
        return 2 * self.workers

    def start(self) -> None:
        from sealserve.serving.tensorflow_runtime import import_tensorflow

        import_tensorflow()  # the stubs import TensorFlow: quietly, please
        for i in range(self.workers):
            for target in (self._rest, self._grpc):
                thread = threading.Thread(target=target, name=f"load-{i}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _rest(self) -> None:
        context = tls_context(self.certs)
        body = json.dumps({"instances": XS}).encode()
        connection: http.client.HTTPSConnection | None = None
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                if connection is None:
                    connection = http.client.HTTPSConnection(
                        "localhost", self.rest_port, context=context, timeout=10
                    )
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
            self.requests.append(Request("REST", start, time.monotonic(), error))
            self._stop.wait(self.pause)
        if connection is not None:
            connection.close()

    def _grpc(self) -> None:
        import grpc
        import numpy as np
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        from sealserve.serving.tensor_proto import from_numpy, to_numpy

        credentials = grpc.ssl_channel_credentials(
            (self.certs / "ca_cert.pem").read_bytes(),
            (self.certs / "client" / "key.pem").read_bytes(),
            (self.certs / "client" / "cert.pem").read_bytes(),
        )
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        from_numpy(np.asarray(XS, np.float32), out=request.inputs["x"])
        with grpc.secure_channel(f"localhost:{self.grpc_port}", credentials) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    response = stub.Predict(request, timeout=10)
                    got = [float(v) for v in to_numpy(response.outputs["y"])]
                    error = "" if got == EXPECTED else "wrong predictions"
                except grpc.RpcError as err:
                    error = err.code().name  # type: ignore[attr-defined]
                except Exception as err:
                    error = type(err).__name__
                self.requests.append(Request("gRPC", start, time.monotonic(), error))
                self._stop.wait(self.pause)


# --- the report ----------------------------------------------------------------------------------


@dataclass
class ClusterReport:
    """What a run measured. Times are `time.monotonic()`."""

    requests: list[Request] = field(default_factory=list)
    concurrency: int = 0
    replica_killed: tuple[float, float] = (0.0, 0.0)  # signal sent, process gone
    broker_killed: tuple[float, float] = (0.0, 0.0)
    restarted: float = 0.0  # the restarted replica serves (model AVAILABLE)
    rejoined: float = 0.0  # nginx has sent it requests (its request_count > 0)
    #: `kbs audit` records of the model key (JSON), and the last seq before the restart
    audit: list[dict[str, Any]] = field(default_factory=list)
    seq_before_restart: int = 0
    audit_chain_ok: bool = False
    #: the replicas' own measurements, by name
    measurements: dict[str, str] = field(default_factory=dict)
    #: `:tensorflow:serving:request_count` (OK) of each replica at the end (the restarted one
    #: counts since its restart)
    replica_requests: dict[str, int] = field(default_factory=dict)
    #: nginx stream: connections to the brokers, (upstream address(es), when logged)
    broker_connections: list[str] = field(default_factory=list)
    broker_addresses: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def failures(self) -> list[Request]:
        return [r for r in self.requests if r.error]

    def in_flight_at_kill(self, request: Request, grace: float = 1.0) -> bool:
        """Started before the killed replica was gone (plus `grace`, for connections nginx had
        not yet seen close) and still running when the signal was sent."""
        sent, gone = self.replica_killed
        return request.start <= gone + grace and request.end >= sent

    def releases(self, decision: str = "allowed") -> list[dict[str, Any]]:
        return [r for r in self.audit if r["action"] == "release" and r["decision"] == decision]


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
    result = subprocess.run(initdb_argv, capture_output=True, text=True, **as_user(user))
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

    step("3. Two key brokers on it, sharing the master key, the signing key and the admin token")
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
        ]  # fmt: skip
        show(["sealserve", *argv])
        processes.spawn(f"kbs-{i}", [SEALSERVE, *argv], work / f"kbs-{i}.log")
        # one after the other: each creates the tables if missing
        processes.wait_for(f"kbs-{i}", log_says("KBS listening on https://"))
        report.broker_addresses[f"127.0.0.1:{port}"] = f"kbs-{i}"

    step(
        "4. nginx in front: TLS passthrough to the brokers (a connection, so a KBS session, stays "
        "on one broker); HTTPS and gRPC over TLS to the replicas, mutual TLS on both sides, a "
        "failed replica skipped (max_fails, proxy_next_upstream / grpc_next_upstream)"
    )
    kbs_lb, rest_lb, grpc_lb = free_port(), free_port(), free_port()
    replica_set = [
        Replica(f"replica-{i}", free_port(), free_port(), []) for i in range(1, replicas + 1)
    ]
    lb_dir = work / "nginx"
    (lb_dir / "tmp").mkdir(parents=True)
    (lb_dir / "nginx.conf").write_text(
        nginx_conf(
            lb_dir, stream_module, certs, broker_ports, kbs_lb, rest_lb, grpc_lb, replica_set
        )
    )
    nginx_argv = [nginx, "-p", str(lb_dir), "-c", "nginx.conf", "-e", "error.log"]
    checked = subprocess.run([*nginx_argv, "-t", "-q"], capture_output=True, text=True)
    if checked.returncode != 0:
        raise ClusterFailed(f"nginx refused its configuration: {checked.stderr.strip()}")
    show([*nginx_argv, "-g", "daemon off;"], f"config: {lb_dir / 'nginx.conf'}")
    processes.spawn("nginx", [*nginx_argv, "-g", "daemon off;"], lb_dir / "stdout.log",
                    stop_signal=signal.SIGQUIT)  # fmt: skip
    processes.wait_for("nginx", listening(kbs_lb, rest_lb, grpc_lb))
    say(
        f"  brokers at https://127.0.0.1:{kbs_lb}, REST at https://localhost:{rest_lb}, gRPC at "
        f"localhost:{grpc_lb}"
    )

    step(
        "5. The key and the policy, through the balancer: each replica's measurement is pinned "
        "(on one machine they differ by their ports; identical pods would share one)"
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
        ]
        echo = None if replica is replica_set[0] else ["measure", *replica.differs()]
        report.measurements[replica.name] = sealserve("measure", *replica.flags, echo=echo).strip()
    policy = work / "policy.toml"
    pinned = ", ".join(f'"{m}"' for m in report.measurements.values())
    policy.write_text(
        f'tee = ["sim"]\n[[sim]]\nmr_enclave = [{pinned}]\nmr_signer = "any"\nisv_prod_id = [0]\n'
    )
    sealserve("kbs", "policy", "set", RESOURCE, str(policy), *admin)

    step(f"6. {replicas} replicas: each attests to a broker and decrypts the model in memory")
    for replica in replica_set:
        start_replica(processes, replica, work / f"{replica.name}.log", verbose=replica is
                      replica_set[0])  # fmt: skip
    for replica in replica_set:
        wait_replica(processes, replica, certs)
    load = Load(certs, rest_lb, grpc_lb)
    report.concurrency = load.concurrency
    report.requests = load.requests

    step(
        f"7. Load through nginx: {load.workers} REST and {load.workers} gRPC clients, one "
        "request at a time each"
    )
    load.start()
    try:
        time.sleep(before)
        counts = {r.name: ok_request_count(certs, r.rest_port) for r in replica_set}
        say(f"  after {before:.0f} s: {summary(load.requests)}; per replica: {per(counts)}")
        if not all(counts.values()):
            raise ClusterFailed(f"nginx did not spread the load over every replica: {counts}")

        victim = replica_set[-1]
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
        wait_replica(processes, victim, certs)
        report.restarted = time.monotonic()
        deadline = time.monotonic() + 30
        while ok_request_count(certs, victim.rest_port) == 0:
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
    report.replica_requests = {r.name: ok_request_count(certs, r.rest_port) for r in replica_set}

    step("9. What happened")
    failures = report.failures()
    kill_sent = report.replica_killed[0]
    span = max(r.end for r in load.requests) - min(r.start for r in load.requests)
    say(f"  {summary(load.requests)} in {span:.1f} s (at most {report.concurrency} in flight)")
    for failure in failures:
        say(
            f"  failed: {failure.protocol} {failure.error}, started "
            f"{(failure.start - kill_sent) * 1000:+.0f} ms from the kill, ended "
            f"{(failure.end - kill_sent) * 1000:+.0f} ms"
        )
    outside = [r for r in failures if not report.in_flight_at_kill(r)]
    say(
        f"  failures in flight on {victim.name} when it was killed: {len(failures) - len(outside)}"
        f"; any other: {len(outside)}"
    )
    after_kbs = [r for r in load.requests if r.start > report.broker_killed[1]]
    say(f"  after kbs-1 was killed: {summary(after_kbs)}")
    say(f"  served per replica (Prometheus request_count): {per(report.replica_requests)}")

    records, chain_ok = audit_records(admin)
    report.audit, report.audit_chain_ok = records, chain_ok
    names = {m: n for n, m in report.measurements.items()}
    say("  the key broker's audit log (one chain, written by both brokers):")
    for record in report.releases() + report.releases("denied"):
        when = ", after the restart" if record["seq"] > report.seq_before_restart else ""
        to = names.get(record["measurements"].get("mr_enclave", ""), "?")
        say(
            f"    #{record['seq']:<3} release {record['decision']} to {to} (session "
            f"{record['session'][:8]}…{when})"
        )
    attested = sum(1 for r in records if r["action"] == "attest" and r["decision"] == "verified")
    say(
        f"  {attested} attestations verified; audit chain "
        f"{'verified' if chain_ok else 'BROKEN'} ({len(records)} records)"
    )


def start_replica(processes: Processes, replica: Replica, log: Path, *, verbose: bool) -> None:
    show(["sealserve", "serve", *(replica.flags if verbose else replica.differs())])
    processes.spawn(replica.name, [SEALSERVE, "serve", *replica.flags], log)


def wait_replica(processes: Processes, replica: Replica, certs: Path) -> None:
    processes.wait_for(replica.name, log_says(f"serving {MODEL}"))
    processes.wait_for(replica.name, lambda _: model_available(certs, replica.rest_port))
    line = next(
        (x for x in processes.running[replica.name].text().splitlines() if f"serving {MODEL}" in x),
        "",
    )
    say(f"  {replica.name}: serving {line.partition('serving ')[2].strip()}")


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
    certs: Path,
    broker_ports: list[int],
    kbs_lb: int,
    rest_lb: int,
    grpc_lb: int,
    replicas: list[Replica],
) -> str:
    """nginx.conf: the stream (brokers) and http (replicas) balancers."""

    def servers(ports: list[int], fail_timeout: str) -> str:
        return "\n".join(
            f"        server 127.0.0.1:{p} max_fails=1 fail_timeout={fail_timeout};" for p in ports
        )

    user = "user root;" if os.geteuid() == 0 else ""
    tmp = lb_dir / "tmp"
    client_cert, client_key = certs / "client" / "cert.pem", certs / "client" / "key.pem"
    return f"""# sealserve cluster-demo: nginx before the key brokers (L4) and the replicas (L7)
{user}
worker_processes 1;
pid {lb_dir}/nginx.pid;
error_log {lb_dir}/error.log notice;
{stream_module}
events {{ worker_connections 1024; }}

stream {{
    # TLS passthrough: the brokers' own certificate reaches the replicas, and a connection
    # (so a KBS session, which lives in one broker's memory) stays on one broker.
    log_format kbs '$upstream_addr|$status|$session_time';
    access_log {lb_dir}/kbs-stream.log kbs;
    upstream kbs {{
{servers(broker_ports, "5s")}
    }}
    server {{
        listen 127.0.0.1:{kbs_lb};
        proxy_pass kbs;
        proxy_connect_timeout 1s;
        proxy_next_upstream on;
    }}
}}

http {{
    log_format lb '$status $upstream_addr $upstream_status "$request" $request_time';
    access_log {lb_dir}/access.log lb;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 100000;

    # requesters: TLS with a client certificate of the owner's CA
    ssl_certificate {certs}/server/cert.pem;
    ssl_certificate_key {certs}/server/key.pem;
    ssl_client_certificate {certs}/ca_cert.pem;
    ssl_verify_client on;
    ssl_protocols TLSv1.2 TLSv1.3;

    # a failed replica is skipped for fail_timeout; a request it never received goes to the
    # next one (a POST it did receive is not resent: only those in flight can fail)
    upstream rest_replicas {{
{servers([r.rest_port for r in replicas], "2s")}
        keepalive 8;
    }}
    upstream grpc_replicas {{
{servers([r.grpc_port for r in replicas], "2s")}
        keepalive 8;
    }}

    server {{
        listen 127.0.0.1:{rest_lb} ssl;
        location / {{
            proxy_pass https://rest_replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_ssl_certificate {client_cert};
            proxy_ssl_certificate_key {client_key};
            proxy_ssl_trusted_certificate {certs}/ca_cert.pem;
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
            proxy_connect_timeout 1s;
            proxy_next_upstream error timeout;
        }}
    }}
    server {{
        listen 127.0.0.1:{grpc_lb} ssl http2;
        location / {{
            grpc_pass grpcs://grpc_replicas;
            grpc_ssl_certificate {client_cert};
            grpc_ssl_certificate_key {client_key};
            grpc_ssl_trusted_certificate {certs}/ca_cert.pem;
            grpc_ssl_verify on;
            grpc_ssl_name localhost;
            grpc_connect_timeout 1s;
            grpc_next_upstream error timeout;
        }}
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
        outside = [r for r in report.failures() if not report.in_flight_at_kill(r)]
        if outside:
            raise ClusterFailed(f"{len(outside)} requests failed outside the kill")
    except ClusterFailed as exc:
        print(f"\ncluster demo failed: {exc}", file=sys.stderr)
        return 1
    say(f"\nCluster demo complete in {report.seconds:.0f} s; its files are in {args.workdir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
