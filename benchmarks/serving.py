"""Serving speed of `sealserve serve`, each figure against a reference measured in the same run.

Measured in one run, on generated models (nothing is downloaded):

(a) ResNet-50 (`make_model("resnet50")`, about 100 MB), encrypted and served as model
    `resnet50-v15-fp32` by `sealserve serve` in a process of its own, over gRPC with mutual
    TLS (certificates from `make_twoway`), batch 1, with 1 and with 4 concurrent clients,
    each on its own channel and connection, sending the seed client's request (one random
    float32 [1,224,224,3] `PredictRequest`, reused) through the real `tensorflow_serving`
    stubs: images/s. Reference: the same SavedModel, plain, loaded in this process with
    `tf.saved_model.load` and its `serving_default` signature called on the same array by 1
    and by 4 threads. Target: served >= 90% of in-process at each concurrency, i.e. serving
    (gRPC, TLS, tensor conversion, the thread hop) costs under a tenth of the model's time.
(b) half_plus_two with 16 concurrent clients, requests/s: our REST API
    (`{"instances": [[1.0], [2.0], [5.0]]}`) and our gRPC API, against a KServe `ModelServer`
    serving the same SavedModel through its v1 REST predict (`kserve_savedmodel.py`: KServe
    has no TensorFlow runtime in Python, so a minimal `kserve.Model` calls the same
    signature). Each server is a process of its own, plaintext, on loopback, driven by the
    same closed-loop load generator (`loadgen.py`), itself a separate process. Here the model
    costs almost nothing, so this measures the serving stacks. Targets: our REST >= 2x and
    our gRPC >= 3x KServe's REST. Our server is measured with its defaults and, where this
    sealserve has dynamic batching, once more with `--enable_batching` (TF Serving's
    default batching parameters). Targets with batching: REST >= 3x KServe, and gRPC no
    slower than gRPC without batching (>= 0.95x, the noise of alternated slices): a gRPC
    handler thread runs a quick signature's request at once rather than wait for a batch,
    since for a model this cheap the wait costs more than merging saves (see
    docs/benchmarks.md).
(c) Start-up: time from starting the process `sealserve serve` (mutual TLS, ResNet-50) until
    the model answers its first gRPC Predict, encrypted against plain, alternated, median of
    `--startup-repeats` each. Process start to first answer is what an operator waits for
    (Python and TensorFlow imports, key and TLS set-up, decryption, loading, first run), so
    it is the judged figure. Target: encrypted <= 1.15x plain. For context, the model load
    alone, as the same servers log it ("loaded in N s": key, decryption, TensorFlow's load),
    is shown as well: there the decryption is not diluted by the imports.

(d) ResNet-50 with dynamic batching: 16 concurrent clients of batch 1 over gRPC with mutual
    TLS against `sealserve serve --enable_batching` (max_batch_size 8, batch_timeout_micros
    20000, TF Serving's default of one batch thread per CPU), images/s. Reference: the same
    SavedModel in-process, its signature called by one thread on batches of 8. Target:
    served >= 90% of in-process.

Why ratios: benchmarks run on shared, noisy machines (here 2 cores shared by the server, the
clients and the reference), so each figure is judged against a reference measured in the same
run, on the same machine, with the same clients, rather than in absolute terms. A figure and
its reference are measured in `--rounds` alternating slices (A B, B A, ...) of the
`--duration`, so that load from elsewhere on the machine weighs on both alike.

Each slice warms up (`--warmup` s), then counts the requests completed in a fixed window.
Errors (failed requests, a wrong first answer) are counted over the whole run, warm-ups
included, and must be 0. The details table also gives latency percentiles, the CPU used by
the clients and by the server (1.0 = one core: which side is the bottleneck), and the
server's CPU time per request, which moves far less than a rate when other work shares the
machine (a rate falls when the server gets less CPU; its CPU per request barely changes).
KServe runs from its own venv, `.venv-bench` (`make bench-deps`): kserve 0.21 requires
protobuf < 7, and installing it here would downgrade the project's protobuf (7.36 -> 6.33)
and grpcio-health-checking (1.85 -> 1.81).

Usage: .venv/bin/python benchmarks/serving.py [--duration 10] [--json results.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from charts import add_charts_option, write_results
from loadgen import random_images

from sealserve.model_tree import encrypt_tree
from sealserve.serving.tensorflow_runtime import import_tensorflow
from sealserve.tools.certs import CertificateSet, make_twoway
from sealserve.tools.models import make_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESNET = "resnet50-v15-fp32"  # the name the seed's client asks for
H2 = "half_plus_two"
# TF Serving's half_plus_two takes x as [?,1]: rows of one value, which KServe's call of the
# signature (TensorFlow's shape-checked public call) accepts too
H2_BODY = {"instances": [[1.0], [2.0], [5.0]]}
H2_ANSWER = [[2.5], [3.0], [4.5]]
IMAGE_SHAPE = [1, 224, 224, 3]  # batch 1
MIN_SERVED_RATIO = 0.90  # (a) served >= 90% of in-process
MIN_KSERVE_RATIO = 2.0  # (b) ours >= 2x KServe
MIN_KSERVE_BATCHING_RATIO = 3.0  # (b) ours with --enable_batching >= 3x KServe
MIN_KSERVE_GRPC_RATIO = 3.0  # (b) our gRPC without batching >= 3x KServe's REST
# (b) our gRPC with batching no slower than without: the same request path for a quick
# signature, so equal within the noise of alternated slices (5%)
MIN_GRPC_BATCHING_RATIO = 0.95
MAX_STARTUP_RATIO = 1.15  # (c) encrypted <= 1.15x plain
PARTS = ("resnet", "batching", "kserve", "startup")
BATCH = 8  # (d): the server's batches and the in-process reference's
BATCHING_CLIENTS = 16
BATCH_TIMEOUT_MICROS = 20_000  # a batch waits at most 20 ms to fill (a run takes ~400 ms)
STARTED = time.monotonic()


def progress(message: str) -> None:
    """One line on stderr per step of a run that takes minutes (stdout keeps the tables)."""
    print(f"[{time.monotonic() - STARTED:4.0f} s] {message}", file=sys.stderr, flush=True)


@dataclass
class Measurement:
    """One throughput, accumulated over the rounds it was measured in (details table)."""

    name: str
    unit: str
    completed: int = 0
    seconds: float = 0.0
    errors: int = 0
    first_error: str = ""
    round_rates: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    client_cpu_s: float | None = None  # CPU seconds used in the measured windows
    server_cpu_s: float | None = None

    def add(self, run: dict[str, Any]) -> None:
        """Add one round: a result of `loadgen.py`, or the same fields from `in_process`."""
        self.completed += run["completed"]
        self.seconds += run["duration"]
        self.errors += run["errors"]
        self.first_error = self.first_error or run["first_error"]
        self.round_rates.append(run["completed"] / run["duration"])
        progress(f"{self.name}: {self.round_rates[-1]:,.1f} {self.unit}")
        self.latencies_ms += run["latencies_ms"]
        for attr, key in (("client_cpu_s", "client_cpu"), ("server_cpu_s", "server_cpu")):
            if run.get(key) is not None:
                setattr(self, attr, (getattr(self, attr) or 0.0) + run[key] * run["duration"])

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def cpu(self, side: str) -> float | None:
        """Cores used on average during the measured windows (1.0 = one core)."""
        used = self.client_cpu_s if side == "client" else self.server_cpu_s
        return None if used is None or not self.seconds else used / self.seconds

    def cpu_per_request(self) -> float | None:
        """The server's CPU seconds per completed request: unlike a rate, barely moved by
        other work on the machine, so it compares servers even on a busy machine."""
        if self.server_cpu_s is None or not self.completed:
            return None
        return self.server_cpu_s / self.completed

    def summary(self) -> dict[str, Any]:
        fields = asdict(self)
        del fields["latencies_ms"]
        return fields | {
            "rate": self.rate,
            "latency_ms": {f"p{q}": self.percentile(q) for q in (50, 90, 99)},
            "client_cpu": self.cpu("client"),
            "server_cpu": self.cpu("server"),
            "server_cpu_per_request_s": self.cpu_per_request(),
        }


@dataclass
class Row:
    """One line of the results table: a value judged against a reference of the same run."""

    measurement: str
    value: float
    unit: str
    reference: str
    reference_value: float
    ratio: float
    target: str = "—"
    errors: int | None = None
    passed: bool | None = None


def exit_status(rows: list[Row]) -> int:
    """1 when any judged target failed (as benchmarks/openvino_runtime.py), else 0: set once
    every result is printed and written, so a failing run still leaves its figures."""
    return 1 if any(row.passed is False for row in rows) else 0


# -- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server in a process of its own, its output in a log file; stopped with SIGTERM."""

    def __init__(self, name: str, argv: list[str], log: Path, port: int = 0) -> None:
        self.name, self.log, self.port = name, log, port
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(
                f"{self.name} exited with status {self.proc.returncode}; the end of its log "
                f"({self.log}):\n" + "\n".join(tail)
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_until(server: ServerProcess, ready: Callable[[], bool], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        server.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} not ready after {timeout:g} s (log: {server.log})")
        time.sleep(0.01)


def port_open(port: int) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    return probe


def http_ok(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    return probe


class LoadGenerator:
    """`loadgen.py` in a process of its own: one JSON run spec in, one JSON result out."""

    def __init__(self, log: Path) -> None:
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / "loadgen.py")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self._ready = False

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator exited; see {self.log}")
        return json.loads(line)

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        if not self._ready:
            self._reply()  # {"ready": true}: imports done
            self._ready = True
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the set-up ----------------------------------------------------------------------------


@dataclass
class Setup:
    work: Path
    resnet_plain: Path  # model base paths (version 1 inside)
    resnet_encrypted: Path
    h2: Path
    key_file: Path
    certs: CertificateSet
    sealserve: str


def prepare(work: Path, parts: set[str]) -> Setup:
    plain, encrypted = work / "plain" / RESNET, work / "encrypted" / RESNET
    key = os.urandom(16)
    key_file = work / "resnet.key"
    key_file.write_bytes(key)
    key_file.chmod(0o600)
    if parts & {"resnet", "startup", "batching"}:
        progress("making and encrypting ResNet-50")
        make_model("resnet50", plain / "1")
        encrypt_tree(plain / "1", str(encrypted / "1"), key)
    if "kserve" in parts:
        progress("making half_plus_two")
        make_model("half_plus_two", work / "plain" / H2 / "1")
    certs = make_twoway("localhost", "client.local", work / "certs", sans=["127.0.0.1"])
    sealserve = str(Path(sys.executable).with_name("sealserve"))
    if not os.access(sealserve, os.X_OK):
        raise SystemExit(f"no `sealserve` command beside {sys.executable}: run `make install`")
    return Setup(work, plain, encrypted, work / "plain" / H2, key_file, certs, sealserve)


def resnet_server_argv(
    setup: Setup, port: int, *, encrypted: bool, flags: tuple[str, ...] = ()
) -> list[str]:
    argv = [
        setup.sealserve,
        "serve",
        f"--port={port}",
        "--bind_address=127.0.0.1",
        f"--model_name={RESNET}",
        f"--model_base_path={setup.resnet_encrypted if encrypted else setup.resnet_plain}",
        f"--ssl_config_file={setup.certs.ssl_config}",
        "--file_system_poll_wait_seconds=0",  # load once, no polling during measurements
    ]
    if encrypted:
        argv.append(f"--model_key={RESNET}={setup.key_file}")
    return argv + list(flags)


def tls_files(setup: Setup) -> dict[str, str]:
    certs = setup.certs
    assert certs.ca_cert and certs.client_cert and certs.client_key
    return {"ca": str(certs.ca_cert), "cert": str(certs.client_cert), "key": str(certs.client_key)}


def first_answer(setup: Setup, port: int) -> None:
    """One ResNet-50 Predict over mutual TLS, waiting for the server to be ready."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    tf = import_tensorflow()
    files = {k: Path(v).read_bytes() for k, v in tls_files(setup).items()}
    credentials = grpc.ssl_channel_credentials(files["ca"], files["key"], files["cert"])
    request = predict_pb2.PredictRequest()
    request.model_spec.name = RESNET
    request.inputs["input"].CopyFrom(tf.make_tensor_proto(random_images(IMAGE_SHAPE)))
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=120, wait_for_ready=True
        )
    assert list(response.outputs["predict"].tensor_shape.dim)[1].size == 1001


# -- (c) start-up ------------------------------------------------------------------------


def start_resnet_server(
    setup: Setup, *, encrypted: bool, run: int, flags: tuple[str, ...] = ()
) -> tuple[float, float | None, ServerProcess]:
    """Start `sealserve serve`: seconds from process start to the first answer, the model
    load time the server logs ("loaded in N s", None if absent), and the running server."""
    port = free_port()
    kind = ("encrypted" if encrypted else "plain") + ("-batching" if flags else "")
    log = setup.work / f"sealserve-resnet-{kind}-{run}.log"
    started = time.perf_counter()
    server = ServerProcess(
        f"sealserve ({kind} ResNet-50)",
        resnet_server_argv(setup, port, encrypted=encrypted, flags=flags),
        log,
        port,
    )
    try:
        wait_until(server, port_open(port))  # ports open once the model is loaded
        first_answer(setup, port)
    except BaseException:
        server.stop()
        raise
    seconds = time.perf_counter() - started
    logged = re.search(r"is available \(loaded in ([0-9.]+) s\)", log.read_text(errors="replace"))
    return seconds, float(logged.group(1)) if logged else None, server


def bench_startup(setup: Setup, repeats: int) -> tuple[dict[str, list[float]], ServerProcess]:
    """Alternate plain and encrypted starts; the last encrypted server is left running."""
    runs: dict[str, list[float]] = {}
    last: ServerProcess | None = None
    for run in range(repeats):
        for encrypted in (False, True):
            kind = "encrypted" if encrypted else "plain"
            seconds, loaded_in, server = start_resnet_server(setup, encrypted=encrypted, run=run)
            progress(f"start-up {run + 1}/{repeats}, {kind}: {seconds:.2f} s")
            runs.setdefault(f"process_{kind}_s", []).append(seconds)
            if loaded_in is not None:
                runs.setdefault(f"server_logged_load_{kind}_s", []).append(loaded_in)
            if encrypted and run == repeats - 1:
                last = server
            else:
                server.stop()
    assert last is not None
    return runs, last


# -- (a) ResNet-50: served against in-process ------------------------------------------------


def in_process(
    function: Callable[..., Any],
    inputs: dict[str, Any],
    threads: int,
    warmup: float,
    duration: float,
    images_per_call: int = 1,
) -> dict[str, Any]:
    """`threads` threads calling `function` in a closed loop, as `loadgen.py` does with
    clients; the same result fields, counting `images_per_call` per call."""
    start = time.perf_counter() + warmup
    end = start + duration
    counts = [0] * threads
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[str] = []
    cpu: dict[str, float] = {}

    def worker(i: int) -> None:
        while (sent := time.perf_counter()) < end:
            try:
                outputs = function(**inputs)
                for tensor in outputs.values():
                    tensor.numpy()  # the result in hand, as a client has it
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            done = time.perf_counter()
            if start <= done < end:
                counts[i] += images_per_call
                latencies[i].append((done - sent) * 1000)

    def sample(edge: str) -> None:
        time.sleep(max(0.0, (start if edge == "start" else end) - time.perf_counter()))
        cpu[edge] = time.process_time()

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    pool += [threading.Thread(target=sample, args=(edge,)) for edge in ("start", "end")]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return {
        "completed": sum(counts),
        "duration": duration,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
        "latencies_ms": [x for xs in latencies for x in xs],
        "server_cpu": (cpu["end"] - cpu["start"]) / duration,  # this process runs the model
    }


def rounds_order(items: list[Any], rounds: int) -> list[Any]:
    """`items` once per round, every other round reversed (A B, B A, ...), so that a machine
    getting slower or faster during the run weighs on every item alike."""
    order: list[Any] = []
    for r in range(rounds):
        order += items if r % 2 == 0 else items[::-1]
    return order


def bench_resnet(
    setup: Setup, server: ServerProcess, loadgen: LoadGenerator, args: argparse.Namespace
) -> list[tuple[int, Measurement, Measurement]]:
    """(clients, served, in-process) for 1 and 4 concurrent clients, alternated round by
    round."""
    tf = import_tensorflow()
    model = tf.saved_model.load(str(setup.resnet_plain / "1"))
    function = model.signatures["serving_default"]
    inputs = {"input": random_images(IMAGE_SHAPE)}
    function(**inputs)  # the first call traces and allocates
    slice_s = args.duration / args.rounds
    pairs = []
    for clients in (1, 4):
        plural = "s" if clients > 1 else ""
        served = Measurement(f"ResNet-50 served, mTLS gRPC, {clients} client{plural}", "images/s")
        local = Measurement(f"ResNet-50 in-process, {clients} thread{plural}", "images/s")
        for which in rounds_order([local, served], args.rounds):
            if which is local:
                local.add(in_process(function, inputs, clients, args.warmup, slice_s))
                continue
            spec = resnet_spec(setup, server, clients, args)
            served.add(loadgen.run(spec))
        pairs.append((clients, served, local))
    return pairs


def resnet_spec(setup: Setup, server: ServerProcess, clients: int, args: argparse.Namespace):  # noqa: ANN201
    """The load generator's run: `clients` seed clients (batch 1) over mutual TLS."""
    return {
        "kind": "grpc",
        "target": f"127.0.0.1:{server.port}",
        "tls": tls_files(setup),
        "model": RESNET,
        "signature": "serving_default",
        "input": "input",
        "random_image": IMAGE_SHAPE,
        "output": "predict",
        "clients": clients,
        "warmup": args.warmup,
        "duration": args.duration / args.rounds,
        "server_pid": server.pid,
    }


def bench_resnet_batching(
    setup: Setup, loadgen: LoadGenerator, args: argparse.Namespace
) -> tuple[Measurement, Measurement]:
    """(d) 16 batch-1 clients against a server merging them into batches of 8, and the same
    SavedModel called in-process on batches of 8 by one thread: (served, in-process)."""
    parameters = setup.work / "batching.txt"
    enqueued = BATCHING_CLIENTS // BATCH + 1
    parameters.write_text(
        f"max_batch_size {{ value: {BATCH} }}\n"
        f"batch_timeout_micros {{ value: {BATCH_TIMEOUT_MICROS} }}\n"
        f"max_enqueued_batches {{ value: {enqueued} }}\n"
    )
    flags = ("--enable_batching", f"--batching_parameters_file={parameters}")
    _, _, server = start_resnet_server(setup, encrypted=True, run=0, flags=flags)
    try:
        tf = import_tensorflow()
        function = tf.saved_model.load(str(setup.resnet_plain / "1")).signatures["serving_default"]
        inputs = {"input": random_images([BATCH, *IMAGE_SHAPE[1:]])}
        function(**inputs)
        served = Measurement(
            f"ResNet-50 served, mTLS gRPC, batching, {BATCHING_CLIENTS} clients of batch 1",
            "images/s",
        )
        local = Measurement(f"ResNet-50 in-process, batch {BATCH}, 1 thread", "images/s")
        slice_s = args.duration / args.rounds
        for which in rounds_order([local, served], args.rounds):
            if which is local:
                local.add(in_process(function, inputs, 1, args.warmup, slice_s, BATCH))
            else:
                served.add(loadgen.run(resnet_spec(setup, server, BATCHING_CLIENTS, args)))
    finally:
        server.stop()
    return served, local


# -- (b) half_plus_two: ours against KServe ---------------------------------------------------


def batching_available() -> bool:
    """Whether this sealserve merges requests with `--enable_batching` (earlier releases
    accept the flag and ignore it)."""
    return importlib.util.find_spec("sealserve.serving.batching") is not None


@dataclass
class Target:
    """One server and API that (b) drives: a measurement and its load generator spec."""

    measurement: Measurement
    spec: dict[str, Any]


def bench_against_kserve(
    setup: Setup, loadgen: LoadGenerator, args: argparse.Namespace
) -> list[Measurement]:
    """KServe's REST, then ours: REST and gRPC, and with `--enable_batching` if available."""
    n = args.clients
    common = {"clients": n, "warmup": args.warmup, "duration": args.duration / args.rounds}
    rest = {"kind": "rest", "body": H2_BODY, "expect": {"predictions": H2_ANSWER}} | common
    grpc = {
        "kind": "grpc",
        "tls": None,
        "model": H2,
        "input": "x",
        "values": H2_BODY["instances"],
        "output": "y",
        "expect": H2_ANSWER,
    } | common
    servers: list[tuple[ServerProcess, str]] = []  # and the URL that answers when ready
    targets: list[Target] = []
    try:
        port = free_port()
        kserve = ServerProcess(
            "KServe (half_plus_two)",
            [
                str(args.kserve_python),
                str(HERE / "kserve_savedmodel.py"),
                f"--model_name={H2}",
                f"--model_dir={setup.h2 / '1'}",
                f"--http_port={port}",
            ],
            setup.work / "kserve-h2.log",
        )
        servers.append((kserve, f"http://127.0.0.1:{port}/v1/models/{H2}"))
        url = f"http://127.0.0.1:{port}/v1/models/{H2}:predict"
        targets.append(
            Target(
                Measurement(f"half_plus_two, KServe v1 REST, {n} clients", "req/s"),
                rest | {"url": url, "server_pid": kserve.pid},
            )
        )
        variants: list[tuple[str, list[str]]] = [("", [])]
        if batching_available():
            variants.append((" --enable_batching", ["--enable_batching"]))
        for label, flags in variants:
            grpc_port, rest_port = free_port(), free_port()
            ours = ServerProcess(
                f"sealserve{label} (half_plus_two)",
                [
                    setup.sealserve,
                    "serve",
                    f"--port={grpc_port}",
                    f"--rest_api_port={rest_port}",
                    "--bind_address=127.0.0.1",
                    f"--model_name={H2}",
                    f"--model_base_path={setup.h2}",
                    "--file_system_poll_wait_seconds=0",
                    *flags,
                ],
                setup.work / f"sealserve-h2{label.replace(' ', '_')}.log",
            )
            servers.append((ours, f"http://127.0.0.1:{rest_port}/v1/models/{H2}"))
            url = f"http://127.0.0.1:{rest_port}/v1/models/{H2}:predict"
            targets += [
                Target(
                    Measurement(f"half_plus_two, sealserve{label} REST, {n} clients", "req/s"),
                    rest | {"url": url, "server_pid": ours.pid},
                ),
                Target(
                    Measurement(f"half_plus_two, sealserve{label} gRPC, {n} clients", "req/s"),
                    grpc | {"target": f"127.0.0.1:{grpc_port}", "server_pid": ours.pid},
                ),
            ]
        progress(f"starting {len(servers)} half_plus_two servers")
        for server, ready_url in servers:
            wait_until(server, http_ok(ready_url))
        for target in rounds_order(targets, args.rounds):
            target.measurement.add(loadgen.run(target.spec))
    finally:
        for server, _ in servers:
            server.stop()
    return [target.measurement for target in targets]


# -- report --------------------------------------------------------------------------------


def _value(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "images/s":
        return f"{value:.1f} images/s"
    return f"{value:,.0f} {unit}"


def table(rows: list[Row]) -> str:
    lines = [
        "| measurement | value | reference | ratio | target | errors | status |",
        "| --- | ---: | --- | ---: | --- | ---: | --- |",
    ]
    for r in rows:
        status = "—" if r.passed is None else ("pass" if r.passed else "**FAIL**")
        errors = "—" if r.errors is None else str(r.errors)
        reference = f"{r.reference}: {_value(r.reference_value, r.unit)}"
        lines.append(
            f"| {r.measurement} | {_value(r.value, r.unit)} | {reference} | {r.ratio:.2f} "
            f"| {r.target} | {errors} | {status} |"
        )
    return "\n".join(lines)


def details(measurements: list[Measurement]) -> str:
    lines = [
        "| measurement | rate | p50 | p99 | errors | client CPU | server CPU | CPU/request |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def number(x: float | None, unit: str = "") -> str:
        return "—" if x is None else f"{x:.{1 if unit else 2}f}{unit}"

    def seconds(x: float | None) -> str:
        if x is None:
            return "—"
        return f"{x * 1000:.1f} ms" if x >= 0.01 else f"{x * 1e6:.0f} µs"

    for m in measurements:
        lines.append(
            f"| {m.name} | {_value(m.rate, m.unit)} | {number(m.percentile(50), ' ms')} "
            f"| {number(m.percentile(99), ' ms')} | {m.errors} | {number(m.cpu('client'))} "
            f"| {number(m.cpu('server'))} | {seconds(m.cpu_per_request())} |"
        )
    return "\n".join(lines)


def ratio_row(
    value: Measurement,
    reference: Measurement,
    label: str,
    ref_label: str,
    minimum: float,
    what: str,
) -> Row:
    ratio = value.rate / reference.rate if reference.rate else 0.0
    errors = value.errors + reference.errors
    return Row(
        label,
        value.rate,
        value.unit,
        ref_label,
        reference.rate,
        ratio,
        target=f"≥ {minimum:.2f}× {what}",
        errors=errors,
        passed=ratio >= minimum and errors == 0,
    )


def machine(kserve_python: Path | None) -> dict[str, object]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, object] = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    revision = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    info["sealserve_revision"] = revision.stdout.strip() or "unknown"
    for package in ("tensorflow", "grpcio", "aiohttp", "protobuf"):
        info[package] = metadata.version(package)
    if kserve_python is not None:
        versions = subprocess.run(
            [
                str(kserve_python),
                "-c",
                "from importlib.metadata import version as v; "
                "print(v('kserve'), v('uvicorn'), v('fastapi'), v('protobuf'))",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        info["kserve_venv"] = dict(
            zip(("kserve", "uvicorn", "fastapi", "protobuf"), versions, strict=True)
        )
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--duration", type=float, default=10, help="measured seconds per throughput (default 10)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=4,
        help="slices each duration is measured in, alternating with its reference (default 4)",
    )
    parser.add_argument(
        "--warmup", type=float, default=1, help="warm-up seconds before each slice (default 1)"
    )
    parser.add_argument(
        "--clients", type=int, default=16, help="concurrent clients for (b) (default 16)"
    )
    parser.add_argument(
        "--startup-repeats", type=int, default=5, help="starts of each kind, median (default 5)"
    )
    parser.add_argument(
        "--kserve-python",
        type=Path,
        default=ROOT / ".venv-bench" / "bin" / "python",
        help="python of the venv with kserve (default .venv-bench/bin/python: make bench-deps)",
    )
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"comma-separated subset of {','.join(PARTS)} (default: all)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    add_charts_option(parser)
    args = parser.parse_args()
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts <= set(PARTS):
        parser.error(f"--parts: unknown {', '.join(sorted(parts - set(PARTS)))}")
    if min(args.duration, args.rounds, args.clients, args.startup_repeats) <= 0 or args.warmup < 0:
        parser.error("durations, clients and repeats must be positive")
    if "kserve" in parts and not os.access(args.kserve_python, os.X_OK):
        parser.error(f"no KServe venv at {args.kserve_python}: run `make bench-deps` first")

    info = machine(args.kserve_python if "kserve" in parts else None)
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"{date}: {info['nproc']} × {info['cpu']}, Python {info['python']}, TensorFlow "
        f"{info['tensorflow']}, grpcio {info['grpcio']}, aiohttp {info['aiohttp']}"
        + (f", KServe {info['kserve_venv']['kserve']}" if "kserve_venv" in info else "")  # type: ignore[index]
    )
    print(
        f"throughputs: {args.duration:g} s measured in {args.rounds} rounds alternating with "
        f"the reference, each after {args.warmup:g} s of warm-up; "
        f"start-up: median of {args.startup_repeats}\n",
        flush=True,
    )

    load_before = os.getloadavg()[0]
    if load_before > len(os.sched_getaffinity(0)) / 2:
        print(
            f"warning: the machine is busy (load average {load_before:.2f} over the last minute):"
            " the ratios still compare figures measured alternately, but expect noise\n",
            flush=True,
        )
    work = Path(tempfile.mkdtemp(prefix="sealserve-bench-serving-", dir="/tmp"))
    rows: list[Row] = []
    measurements: list[Measurement] = []
    loadgen = LoadGenerator(work / "loadgen.log")  # imports while the models are made
    server: ServerProcess | None = None
    startup: dict[str, list[float]] = {}
    try:
        setup = prepare(work, parts)
        if "startup" in parts:
            startup, server = bench_startup(setup, args.startup_repeats)
        if "resnet" in parts:
            if server is None:
                _, _, server = start_resnet_server(setup, encrypted=True, run=0)
            pairs = bench_resnet(setup, server, loadgen, args)
            server.stop()
            server = None
            for clients, served, local in pairs:
                measurements += [local, served]
                plural = "s" if clients > 1 else ""
                rows.append(
                    ratio_row(
                        served,
                        local,
                        f"ResNet-50 encrypted, mTLS gRPC, batch 1, {clients} client{plural}",
                        f"in-process, {clients} thread{plural}",
                        MIN_SERVED_RATIO,
                        "in-process",
                    )
                )
        if server is not None:
            server.stop()
            server = None
        if "batching" in parts:
            served, local = bench_resnet_batching(setup, loadgen, args)
            measurements += [local, served]
            rows.append(
                ratio_row(
                    served,
                    local,
                    f"ResNet-50 encrypted, mTLS gRPC, batching, {BATCHING_CLIENTS} clients of "
                    "batch 1",
                    f"in-process, batch {BATCH}, 1 thread",
                    MIN_SERVED_RATIO,
                    "in-process",
                )
            )
        if "startup" in parts:
            figures = [("process start → first answer", "process", True)]
            if "server_logged_load_plain_s" in startup:  # the server's "loaded in N s"
                figures.append(
                    ("model load alone, as the server logs it", "server_logged_load", False)
                )
            for what, key, judged in figures:
                p = statistics.median(startup[f"{key}_plain_s"])
                e = statistics.median(startup[f"{key}_encrypted_s"])
                rows.append(
                    Row(
                        f"ResNet-50 start-up, encrypted: {what}",
                        e,
                        "s",
                        "plain",
                        p,
                        e / p,
                        target=f"≤ {MAX_STARTUP_RATIO:.2f}× plain" if judged else "—",
                        passed=(e / p <= MAX_STARTUP_RATIO) if judged else None,
                    )
                )
        if "kserve" in parts:
            theirs, *ours = bench_against_kserve(setup, loadgen, args)
            measurements += [theirs, *ours]
            for our in ours:
                batching = "--enable_batching" in our.name
                row = ratio_row(
                    our,
                    theirs,
                    our.name,
                    "KServe v1 REST",
                    MIN_KSERVE_BATCHING_RATIO if batching else MIN_KSERVE_RATIO,
                    "KServe",
                )
                if not batching and "gRPC" in our.name:
                    row = ratio_row(
                        our, theirs, our.name, "KServe v1 REST", MIN_KSERVE_GRPC_RATIO, "KServe"
                    )
                if batching and "gRPC" in our.name:  # judged against gRPC without batching
                    row = replace(row, target="—", passed=None)
                rows.append(row)
            grpc_runs = [our for our in ours if "gRPC" in our.name]
            if len(grpc_runs) == 2:
                unbatched, batched = grpc_runs
                rows.append(
                    ratio_row(
                        batched,
                        unbatched,
                        "half_plus_two, sealserve gRPC with --enable_batching",
                        "without",
                        MIN_GRPC_BATCHING_RATIO,
                        "without",
                    )
                )
    finally:
        if server is not None:
            server.stop()
        loadgen.close()
        shutil.rmtree(work, ignore_errors=True)

    load_after = os.getloadavg()[0]
    print(table(rows))
    print(
        "\nDetails (CPU: cores used during the measured windows, 1.00 = one core; for the "
        "in-process rows, this process):\n"
    )
    print(details(measurements))
    errors = [m for m in measurements if m.errors]
    for m in errors:
        print(f"\n{m.name}: {m.errors} errors, the first: {m.first_error}")
    if startup:
        print(
            "\nstart-up runs (s): "
            + "; ".join(f"{k} {', '.join(f'{x:.2f}' for x in v)}" for k, v in startup.items())
        )

    write_results(
        {
            "benchmark": "serving",
            "date": date,
            "machine": info,
            "parameters": {
                k: str(v) if isinstance(v, Path) else v
                for k, v in vars(args).items()
                if k not in ("json", "charts")
            },
            "results": [asdict(r) for r in rows],
            "measurements": [m.summary() for m in measurements],
            "startup_runs_s": startup,
            "load_average_1min": {"before": load_before, "after": load_after},
        },
        args,
    )
    sys.exit(exit_status(rows))


if __name__ == "__main__":
    main()
