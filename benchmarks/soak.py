"""Soak test: minutes of mixed REST and gRPC traffic, some of it malformed, at high concurrency.

Starts `sealserve serve` (encrypted half_plus_two, batching on, mutual TLS off so that the
load generator's CPU goes to requests) as a separate process, warms it up, records its
resident memory, then drives `--clients` concurrent clients for `--minutes`: valid REST
predicts, valid gRPC predicts, and a share of malformed requests of several kinds. It reports
requests served, errors by kind, and resident memory at start and end. Pass criteria: only
the malformed requests fail (and each with a 4xx / a client-error gRPC code), and resident
memory grows by less than 10%. Not part of the unit suite: it runs for minutes.

Usage: .venv/bin/python benchmarks/soak.py [--minutes 3] [--clients 64] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from charts import add_charts_option, write_results

MALFORMED_SHARE = 0.1
PROGRESS_SECONDS = 30
BAD_BODIES = [
    b"{",
    b"[]",
    b'{"instances": []}',
    b'{"instances": ["a"]}',
    b'{"inputs": {"z": [1.0]}}',
    b'{"instances": [[1.0], [1.0, 2.0]]}',
    b'{"instances": ' + b"[" * 5000 + b"]" * 5000 + b"}",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def prepare(work: Path) -> tuple[Path, Path]:
    from sealserve.model_tree import encrypt_tree
    from sealserve.tools.models import make_model

    plain = work / "plain"
    make_model("half_plus_two", plain)
    key = work / "key"
    key.write_bytes(os.urandom(16))
    key.chmod(0o600)
    encrypt_tree(plain, str(work / "models" / "hpt" / "1"), key.read_bytes())
    batching = work / "batching.cfg"
    batching.write_text(
        "max_batch_size { value: 32 }\nbatch_timeout_micros { value: 1000 }\n"
        "max_enqueued_batches { value: 1000 }\nnum_batch_threads { value: 2 }\n"
    )
    return key, batching


async def drive(
    rest_port: int, grpc_port: int, clients: int, seconds: float, counts: Counter[str]
) -> None:
    import aiohttp
    import grpc
    import numpy as np
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from sealserve.serving.tensor_proto import from_numpy, to_numpy

    url = f"http://127.0.0.1:{rest_port}/v1/models/hpt:predict"
    deadline = time.monotonic() + seconds
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

    async def rest_client(session: aiohttp.ClientSession, rng: random.Random) -> None:
        while time.monotonic() < deadline:
            if rng.random() < MALFORMED_SHARE:
                body = rng.choice(BAD_BODIES)
                async with session.post(url, data=body) as response:
                    await response.read()
                    kind = (
                        "malformed REST: 4xx"
                        if 400 <= response.status < 500
                        else f"malformed REST: UNEXPECTED {response.status}"
                    )
                counts[kind] += 1
                continue
            x = rng.random() * 10
            async with session.post(url, json={"instances": [x]}) as response:
                payload = await response.json(content_type=None)
            ok = response.status == 200 and abs(payload["predictions"][0] - (x / 2 + 2)) < 1e-4
            counts["REST ok" if ok else f"REST FAILED {response.status}"] += 1

    async def grpc_client(rng: random.Random) -> None:
        while time.monotonic() < deadline:
            request = predict_pb2.PredictRequest()
            malformed = rng.random() < MALFORMED_SHARE
            request.model_spec.name = "nope" if malformed and rng.random() < 0.5 else "hpt"
            x = np.asarray([rng.random() * 10], np.float32)
            if malformed and request.model_spec.name == "hpt":
                from_numpy(np.asarray(["a"], object), out=request.inputs["x"])
            else:
                from_numpy(x, out=request.inputs["x"])
            try:
                response = await stub.Predict(request, timeout=30)
            except grpc.aio.AioRpcError as error:
                prefix = "malformed gRPC" if malformed else "gRPC FAILED"
                counts[f"{prefix}: {error.code().name}"] += 1
                continue
            ok = abs(float(to_numpy(response.outputs["y"])[0]) - (float(x[0]) / 2 + 2)) < 1e-4
            counts["gRPC ok" if ok and not malformed else "gRPC WRONG ANSWER"] += 1

    async def report_progress() -> None:  # one stderr line every PROGRESS_SECONDS
        started = time.monotonic()
        while deadline - time.monotonic() > PROGRESS_SECONDS:
            await asyncio.sleep(PROGRESS_SECONDS)
            print(
                f"{time.monotonic() - started:.0f} of {seconds:.0f} s: "
                f"{sum(counts.values()):,} requests",
                file=sys.stderr,
                flush=True,
            )

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [rest_client(session, random.Random(i)) for i in range(clients // 2)]
        tasks += [grpc_client(random.Random(1000 + i)) for i in range(clients - clients // 2)]
        await asyncio.gather(*tasks, report_progress())
    await channel.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    add_charts_option(parser)
    args = parser.parse_args()

    from sealserve.serving.tensorflow_runtime import import_tensorflow

    import_tensorflow()
    work = Path(tempfile.mkdtemp(prefix="sealserve-soak-"))
    server = None
    try:
        key, batching = prepare(work)
        rest_port, grpc_port = free_port(), free_port()
        sealserve = Path(sys.executable).with_name("sealserve")
        server = subprocess.Popen(
            [
                sealserve,
                "serve",
                "--model_name=hpt",
                f"--model_base_path={work / 'models' / 'hpt'}",
                f"--port={grpc_port}",
                f"--rest_api_port={rest_port}",
                "--bind_address=127.0.0.1",
                f"--model_key=hpt={key}",
                "--enable_batching",
                f"--batching_parameters_file={batching}",
            ],
            stderr=subprocess.DEVNULL,
        )
        wait_until_serving(rest_port)
        warmup: Counter[str] = Counter()
        asyncio.run(drive(rest_port, grpc_port, args.clients, 10, warmup))
        rss_start = rss_bytes(server.pid)
        counts: Counter[str] = Counter()
        started = time.monotonic()
        asyncio.run(drive(rest_port, grpc_port, args.clients, args.minutes * 60, counts))
        elapsed = time.monotonic() - started
        rss_end = rss_bytes(server.pid)
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)

    growth = rss_end / rss_start - 1
    unexpected = {
        k: v for k, v in counts.items() if "FAILED" in k or "UNEXPECTED" in k or "WRONG" in k
    }
    served = sum(counts.values())
    print(
        f"{served} requests in {elapsed:.0f} s ({served / elapsed:.0f}/s), "
        f"{args.clients} concurrent clients"
    )
    print("| outcome | requests |\n| --- | ---: |")
    for kind, count in sorted(counts.items()):
        print(f"| {kind} | {count} |")
    print(
        f"\nresident memory: {rss_start / 2**20:.0f} MiB after warm-up, "
        f"{rss_end / 2**20:.0f} MiB at the end ({growth:+.1%}; target < +10%)"
    )
    passed = not unexpected and growth < 0.10
    print("PASS" if passed else f"FAIL: {unexpected or 'memory growth'}")
    write_results(
        {
            "benchmark": "soak",
            "seconds": elapsed,
            "clients": args.clients,
            "outcomes": dict(counts),
            "rss_start": rss_start,
            "rss_end": rss_end,
            "passed": passed,
        },
        args,
    )
    return 0 if passed else 1


def wait_until_serving(port: int) -> None:
    import urllib.request

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health/ready", timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("the server did not start")


if __name__ == "__main__":
    sys.exit(main())
