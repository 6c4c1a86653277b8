"""The OpenVINO runtime against TensorFlow: ResNet-50, encrypted, served over mutual-TLS gRPC.

One run, side by side, on the generated ResNet-50 (`make_model("resnet50")`, encrypted) and
the machinery of `serving.py` (its server processes, certificates, load generator and
in-process loop):

(a) Start-up and memory: `sealserve serve` with `--runtime=tensorflow`, `openvino` and
    `openvino:bf16`, each started from nothing until its first gRPC answer (process start,
    imports, key, decryption, load or conversion and accuracy gate, warm-up); then its
    resident memory (VmRSS) once it has served the throughput runs (every server, the
    TensorFlow one included, serves the same runs of (b)), and its peak (VmHWM).
    Targets: OpenVINO start-up <= TensorFlow's + 5 s; resident memory <= TensorFlow's.
(b) Throughput, batch 1, with 1 and 4 clients (each on its own mTLS channel, `loadgen.py`):
    the OpenVINO servers, against in-process TensorFlow (`tf.saved_model.load`, the signature
    called by as many threads) and against in-process OpenVINO of the same precision (the
    same runtime code as the server, `VersionLoader(...).load()` in this process). Targets:
    fp32 served >= 1.7x TensorFlow, bf16 served >= 3.0x (1 client and 4 clients); served >=
    0.90x in-process OpenVINO of its precision. The TensorFlow server is measured alongside
    (no target: the figure users compare with, and the load its memory is read after).
(c) What those ratios are measured against: the most a served model can reach here.
    `grpc_floor.py` answers the same Predict over the same mutual TLS with no model behind
    it (stock grpcio and protobuf: receive, parse, read the input, send a prepared answer),
    measured like the servers. With one client a served run follows the previous one by at
    least that round trip, and OpenVINO runs slower after such an idle gap (the CPU's state
    is colder; OpenVINO issue #31145), so the in-process runs are also measured paused for
    the floor's median round trip; with more clients, gRPC's and the model's CPU costs add
    (1/limit = 1/in-process + 1/floor). The rows against these have no target: they say how
    much of the gap to in-process is sealserve's and how much is the transport's.

All measurements of one concurrency are taken in alternating rounds (A B C ..., ... C B A), so
that other load on the machine weighs on all alike.

`--parts memory` measures (a) only: the servers serve the same runs of (b), without the
in-process references (a short run to check start-up and memory). `--parts served` measures
only (b)'s served OpenVINO against in-process OpenVINO, and (c) (no TensorFlow server or
reference, no start-up or memory rows); `--runtimes openvino:bf16` and `--clients 1` narrow
any run to those figures. The defaults measure everything above.

Usage: .venv/bin/python benchmarks/openvino_runtime.py [--duration 10] [--rounds 2] [--json F]
       [--parts all|memory|served] [--runtimes openvino,openvino:bf16] [--clients 1,4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from charts import add_charts_option, write_results
from loadgen import random_images

from sealserve.serving.keys import StaticKeyProvider
from sealserve.serving.loader import LoadOptions, VersionLoader
from sealserve.serving.runtimes import parse_runtime
from sealserve.serving.tensorflow_runtime import import_tensorflow
from serving import (
    HERE,
    IMAGE_SHAPE,
    LoadGenerator,
    Measurement,
    Row,
    ServerProcess,
    details,
    first_answer,
    free_port,
    in_process,
    port_open,
    prepare,
    ratio_row,
    resnet_server_argv,
    resnet_spec,
    rounds_order,
    table,
    wait_until,
)

RUNTIMES = ("tensorflow", "openvino", "openvino:bf16")
LABELS = {"tensorflow": "TensorFlow", "openvino": "OpenVINO fp32", "openvino:bf16": "OpenVINO bf16"}
MIN_OVER_TF = {"openvino": 1.7, "openvino:bf16": 3.0}
MIN_SERVED_RATIO = 0.90
CLIENTS = (1, 4)
MAX_EXTRA_STARTUP_S = 5.0
FLOOR = "floor"  # the load generator's target that is grpc_floor.py
OUTPUT, OUTPUT_SHAPE = "predict", (1, 1001)  # ResNet-50's answer, as grpc_floor.py sends it


class _Servable:
    """A loaded servable called as `in_process` expects: keyword inputs, `.numpy()` outputs."""

    class _Array:
        def __init__(self, array: np.ndarray) -> None:
            self._array = array

        def numpy(self) -> np.ndarray:
            return self._array

    def __init__(self, servable: object) -> None:
        self._servable = servable

    def __call__(self, **inputs: np.ndarray) -> dict[str, object]:
        outputs = self._servable.run("serving_default", inputs)  # type: ignore[attr-defined]
        return {alias: self._Array(array) for alias, array in outputs.items()}


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def start(setup, runtime: str) -> tuple[float, ServerProcess]:  # noqa: ANN001
    port = free_port()
    argv = resnet_server_argv(setup, port, encrypted=True, flags=(f"--runtime={runtime}",))
    log = setup.work / f"sealserve-{runtime.replace(':', '-')}.log"
    started = time.perf_counter()
    server = ServerProcess(f"sealserve ({LABELS[runtime]})", argv, log, port)
    try:
        wait_until(server, port_open(port), timeout=600)
        first_answer(setup, port)
    except BaseException:
        server.stop()
        raise
    return time.perf_counter() - started, server


def start_floor(setup) -> ServerProcess:  # noqa: ANN001
    """`grpc_floor.py`: TF Serving's Predict over the same mutual TLS, without a model."""
    port = free_port()
    argv = [sys.executable, str(HERE / "grpc_floor.py"), str(port), str(setup.certs.root)]
    argv += [OUTPUT, ",".join(map(str, OUTPUT_SHAPE))]
    server = ServerProcess("gRPC floor", argv, setup.work / "grpc-floor.log", port)
    wait_until(server, port_open(port), timeout=120)
    return server


def floor_latency(loadgen: LoadGenerator, setup, floor: ServerProcess, args) -> float:  # noqa: ANN001
    """The gRPC floor's median round trip, seconds (a short run of one client)."""
    spec = {**resnet_spec(setup, floor, 1, args), "warmup": 0.5, "duration": 1.0}
    return loadgen.run(spec)["latency_ms"]["p50"] / 1000


def after_pause(function: Callable[..., object], pause: float) -> Callable[..., object]:
    """`function`, called `pause` seconds after it is asked to: an in-process client whose
    runs are as far apart as a served client's, however fast the transport between them."""

    def call(**inputs: np.ndarray) -> object:
        time.sleep(pause)
        return function(**inputs)

    return call


def limit_row(
    served: Measurement,
    local: Measurement,
    floor: Measurement,
    paused: Measurement | None,
    label: str,
    clients: int,
) -> Row:
    """Served against the most it could reach here (no target: what the figures against
    in-process mean). One client: the in-process runs paused for the gRPC floor's round
    trip (the transport's time, and OpenVINO's slower run after an idle gap). More clients
    share the CPUs, so the costs of gRPC alone (`grpc_floor.py`) and the run add:
    1/limit = 1/in-process + 1/floor."""
    plural = "s" if clients > 1 else ""
    if paused is not None:
        limit, reference = paused.rate, "in-process, runs the gRPC floor apart"
    else:
        limit = 1 / (1 / local.rate + 1 / floor.rate) if local.rate and floor.rate else 0.0
        reference = "in-process + gRPC floor, CPU costs added"
    return Row(
        f"ResNet-50 {label}, served, batch 1, {clients} client{plural}",
        served.rate,
        served.unit,
        reference,
        limit,
        served.rate / limit if limit else 0.0,
        errors=served.errors + local.errors + floor.errors,
    )


def _subset(known: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a non-empty comma-separated subset of `known`, in `known`'s order."""

    def parse(text: str) -> tuple[str, ...]:
        asked = {t.strip() for t in text.split(",") if t.strip()}
        if not asked or not asked <= set(known):
            raise argparse.ArgumentTypeError(f"a non-empty subset of {','.join(known)}")
        return tuple(k for k in known if k in asked)

    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="measured s per figure")
    parser.add_argument("--rounds", type=int, default=2, help="alternating slices per figure")
    parser.add_argument("--warmup", type=float, default=2, help="warm-up s before each slice")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    parser.add_argument(
        "--parts",
        choices=("all", "memory", "served"),
        default="all",
        help="memory: start-up and resident memory only (the servers serve the same runs, "
        "no in-process references); served: served OpenVINO against in-process OpenVINO only",
    )
    parser.add_argument(
        "--runtimes",
        type=_subset(RUNTIMES[1:]),
        default=RUNTIMES[1:],
        help=f"comma-separated subset of {','.join(RUNTIMES[1:])} (default: both)",
    )
    parser.add_argument(
        "--clients",
        type=_subset(tuple(map(str, CLIENTS))),
        default=tuple(map(str, CLIENTS)),
        help=f"comma-separated subset of {','.join(map(str, CLIENTS))} (default: both)",
    )
    add_charts_option(parser)
    args = parser.parse_args()
    openvinos: tuple[str, ...] = args.runtimes
    with_tf = args.parts != "served"  # the TensorFlow server, reference and rows

    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()[0]
    print(f"{date}: {os.cpu_count()} CPUs, load average {load_before:.2f} at the start")
    work = Path(tempfile.mkdtemp(prefix="sealserve-bench-openvino-", dir="/tmp"))
    loadgen = LoadGenerator(work / "loadgen.log")
    servers: dict[str, ServerProcess] = {}
    rows: list[Row] = []
    measurements: list[Measurement] = []
    startup: dict[str, float] = {}
    memory: dict[str, dict[str, int]] = {}
    floor: ServerProcess | None = None
    try:
        setup = prepare(work, {"resnet"})
        # one at a time: start-up is measured on a quiet server set
        for runtime in (RUNTIMES[:1] if with_tf else ()) + openvinos:
            startup[runtime], servers[runtime] = start(setup, runtime)
            print(f"start-up {LABELS[runtime]}: {startup[runtime]:.1f} s", flush=True)
        references = args.parts != "memory"
        floor = start_floor(setup) if references else None
        tf_function: object = None
        inputs = {"input": random_images(IMAGE_SHAPE)}
        if references and with_tf:
            tf = import_tensorflow()
            tf_function = tf.saved_model.load(str(setup.resnet_plain / "1")).signatures[
                "serving_default"
            ]
            tf_function(**inputs)  # type: ignore[operator]
        local_ov = {}
        for runtime in openvinos if references else ():
            loader = VersionLoader(
                "resnet",
                1,
                setup.resnet_plain / "1",
                StaticKeyProvider({}),
                LoadOptions(),
                runtime=parse_runtime(runtime),
            )
            local_ov[runtime] = _Servable(loader.load())
        slice_s = args.duration / args.rounds
        for clients in map(int, args.clients):
            plural = "s" if clients > 1 else ""
            local_tf = Measurement(f"TensorFlow in-process, {clients} thread{plural}", "images/s")
            served_tf = Measurement(
                f"TensorFlow served, mTLS gRPC, {clients} client{plural}", "images/s"
            )
            items: list[tuple[Measurement, object]] = []
            if with_tf:
                items += [(local_tf, tf_function), (served_tf, "tensorflow")]
            served, local = {}, {}
            for runtime in openvinos:
                label = LABELS[runtime]
                local[runtime] = Measurement(
                    f"{label} in-process, {clients} thread{plural}", "images/s"
                )
                served[runtime] = Measurement(
                    f"{label} served, mTLS gRPC, {clients} client{plural}", "images/s"
                )
                items += [(local[runtime], local_ov.get(runtime)), (served[runtime], runtime)]
            floor_rate = Measurement(
                f"gRPC floor (no model), mTLS gRPC, {clients} client{plural}", "images/s"
            )
            paused: dict[str, Measurement] = {}
            if floor is not None:
                items.append((floor_rate, FLOOR))
                if clients == 1:  # the in-process runs as far apart as a served client's
                    pause = floor_latency(loadgen, setup, floor, args)
                    for runtime in openvinos:
                        paused[runtime] = Measurement(
                            f"{LABELS[runtime]} in-process, runs {pause * 1000:.1f} ms apart "
                            "(the gRPC floor)",
                            "images/s",
                        )
                        items.append((paused[runtime], after_pause(local_ov[runtime], pause)))
            if not references:  # served runs only
                items = [(measurement, how) for measurement, how in items if isinstance(how, str)]
            for measurement, how in rounds_order(items, args.rounds):
                if isinstance(how, str):
                    server = floor if how == FLOOR else servers[how]
                    measurement.add(loadgen.run(resnet_spec(setup, server, clients, args)))
                else:
                    measurement.add(in_process(how, inputs, clients, args.warmup, slice_s))  # type: ignore[arg-type]
            measurements += [m for m, _ in items]
            for runtime in openvinos if references else ():
                label = LABELS[runtime]
                minimum = MIN_OVER_TF[runtime] if clients == 1 or runtime.endswith("bf16") else 0
                if with_tf:
                    row = ratio_row(
                        served[runtime],
                        local_tf,
                        f"ResNet-50 {label}, served, batch 1, {clients} client{plural}",
                        f"TensorFlow in-process, {clients} thread{plural}",
                        minimum,
                        "TensorFlow",
                    )
                    rows.append(row if minimum else replace(row, target="—", passed=None))
                rows.append(
                    ratio_row(
                        served[runtime],
                        local[runtime],
                        f"ResNet-50 {label}, served, batch 1, {clients} client{plural}",
                        f"{label} in-process",
                        MIN_SERVED_RATIO,
                        "in-process",
                    )
                )
                if floor is not None:
                    rows.append(
                        limit_row(
                            served[runtime],
                            local[runtime],
                            floor_rate,
                            paused.get(runtime),
                            label,
                            clients,
                        )
                    )
        for runtime, server in servers.items():
            memory[runtime] = memory_kib(server.pid)
        for runtime in openvinos if with_tf else ():
            tf_start, tf_rss = startup["tensorflow"], memory["tensorflow"]["VmRSS"]
            label = LABELS[runtime]
            rows.append(
                Row(
                    f"start-up, encrypted, {label}: process start → first answer",
                    startup[runtime],
                    "s",
                    "TensorFlow",
                    tf_start,
                    startup[runtime] / tf_start,
                    target=f"≤ TensorFlow + {MAX_EXTRA_STARTUP_S:g} s",
                    passed=startup[runtime] <= tf_start + MAX_EXTRA_STARTUP_S,
                )
            )
            rss = memory[runtime]["VmRSS"]
            rows.append(
                Row(
                    f"resident memory after serving, {label}",
                    rss / 1024,
                    "MiB",
                    "TensorFlow",
                    tf_rss / 1024,
                    rss / tf_rss,
                    target="≤ TensorFlow",
                    passed=rss <= tf_rss,
                )
            )
    finally:
        for server in (*servers.values(), *([floor] if floor else [])):
            server.stop()
        loadgen.close()
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()[0]
    print(f"\nload average {load_before:.2f} at the start, {load_after:.2f} at the end\n")
    print(table(rows))
    print()
    print(details(measurements))
    print("\nmemory (KiB): " + json.dumps(memory))
    write_results(
        {
            "benchmark": "openvino",
            "date": date,
            "load_average": [load_before, load_after],
            "rows": [r.__dict__ for r in rows],
            "measurements": [m.summary() for m in measurements],
            "startup_s": startup,
            "memory_kib": memory,
        },
        args,
    )
    if any(r.passed is False for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
