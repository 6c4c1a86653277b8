"""A closed-loop load generator for TF Serving's REST and gRPC predict APIs (and KServe's v1
REST predict, which has the same shape), run as a process of its own.

`serving.py` starts it once and sends it one run at a time, so the clients never share a
GIL, or an event loop, with the server they measure, and every server is driven by the very
same code. A run is a JSON object on one line of stdin; its result is one JSON line on stdout
(the process first writes `{"ready": true}` once its imports are done):

    {"kind": "rest", "url": "http://127.0.0.1:8501/v1/models/m:predict",
     "body": {"instances": [1.0, 2.0, 5.0]}, "expect": {"predictions": [2.5, 3.0, 4.5]},
     "clients": 16, "warmup": 2, "duration": 10, "server_pid": 1234}
    {"kind": "grpc", "target": "127.0.0.1:8500", "model": "m", "signature": "serving_default",
     "input": "x", "values": [1.0, 2.0, 5.0] | "random_image": [1, 224, 224, 3],
     "output": "y", "expect": [2.5, 3.0, 4.5],
     "tls": {"ca": PATH, "cert": PATH, "key": PATH} | null, ...}

Closed loop: each of `clients` clients has its own connection (REST: its own aiohttp session
holding one keep-alive connection; gRPC: its own channel on a subchannel of its own, so also
its own TCP/TLS connection) and sends its next request as soon as the previous one is
answered. All clients run through `warmup` seconds, then `duration` measured seconds; a
request counts if it completes inside the measured window. Errors (non-200 status, gRPC
error, a wrong answer) are counted over the whole run, warm-up included; each client's first
answer is checked against `expect`. The process's own CPU time and, given `server_pid`, the
server's are sampled at the edges of the window.

gRPC requests are built like the seed's benchmark client (`resnet_client_grpc.py`): one
`PredictRequest` made with `tf.make_tensor_proto`, reused for every call; `random_image` is
float32 random integers 0..254, drawn with a fixed seed (`random_images`).

Usage: .venv/bin/python benchmarks/loadgen.py < runs.jsonl
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

CLK_TCK = os.sysconf("SC_CLK_TCK")


def random_images(shape: list[int], seed: int = 0) -> np.ndarray:
    """The seed client's input: random integers 0..254 as float32 (here from a fixed seed, so
    the in-process reference can run on the very same array)."""
    return np.random.default_rng(seed).integers(0, 255, size=shape).astype(np.float32)


@dataclass
class RunResult:
    completed: int = 0  # answered inside the measured window
    errors: int = 0  # over the whole run, warm-up included
    first_error: str = ""
    duration: float = 0.0  # the measured window, seconds
    rate: float = 0.0  # completed / duration, per second
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p90, p99
    latencies_ms: list[float] = field(default_factory=list)  # of each completed request
    client_cpu: float = 0.0  # this process's CPU seconds / window seconds (1.0 = one core)
    server_cpu: float | None = None  # the server's, likewise


def _process_cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid`, all its threads, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class RestClient:
    def __init__(self, spec: dict[str, Any]) -> None:
        import aiohttp

        self.url = spec["url"]
        self.body = json.dumps(spec["body"]).encode()
        self.expect = spec.get("expect")
        # one keep-alive connection per client, as one user of the API would hold
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        self.headers = {"Content-Type": "application/json"}

    async def call(self, check: bool) -> None:
        async with self.session.post(self.url, data=self.body, headers=self.headers) as response:
            data = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")
        if check and self.expect is not None and json.loads(data) != self.expect:
            raise RuntimeError(f"unexpected answer {data[:200]!r}")

    async def close(self) -> None:
        await self.session.close()


class GrpcClient:
    def __init__(self, spec: dict[str, Any]) -> None:
        import grpc
        import tensorflow as tf  # tensorflow_serving.apis has imported it already
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        self.tf = tf
        # a subchannel pool of its own: each client gets its own connection, not a share of
        # one connection multiplexed by gRPC's global pool
        options = [("grpc.use_local_subchannel_pool", 1)]
        if spec.get("tls"):
            tls = spec["tls"]
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(tls["ca"]),
                private_key=_read(tls["key"]) if tls.get("key") else None,
                certificate_chain=_read(tls["cert"]) if tls.get("cert") else None,
            )
            self.channel = grpc.aio.secure_channel(spec["target"], credentials, options)
        else:
            self.channel = grpc.aio.insecure_channel(spec["target"], options)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        if "random_image" in spec:
            array = random_images(spec["random_image"], spec.get("seed", 0))
        else:
            array = np.asarray(spec["values"], np.float32)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = spec["model"]
        request.model_spec.signature_name = spec.get("signature", "serving_default")
        request.inputs[spec["input"]].CopyFrom(tf.make_tensor_proto(array))
        self.request = request
        self.output = spec["output"]
        self.expect = spec.get("expect")

    async def call(self, check: bool) -> None:
        response = await self.stub.Predict(self.request, timeout=60)
        if check:
            if self.output not in response.outputs:
                raise RuntimeError(f"no output {self.output!r} in the answer")
            if self.expect is not None:
                got = self.tf.make_ndarray(response.outputs[self.output]).tolist()
                if got != self.expect:
                    raise RuntimeError(f"unexpected answer {got!r}")

    async def close(self) -> None:
        await self.channel.close()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def run(spec: dict[str, Any]) -> RunResult:
    if spec["kind"] not in ("rest", "grpc"):
        raise ValueError(f"unknown kind {spec['kind']!r}: rest or grpc")
    client_type: type[RestClient] | type[GrpcClient] = (
        RestClient if spec["kind"] == "rest" else GrpcClient
    )
    clients = [client_type(spec) for _ in range(int(spec["clients"]))]
    loop = asyncio.get_running_loop()
    result = RunResult()
    latencies: list[float] = []
    start = loop.time() + float(spec["warmup"])
    end = start + float(spec["duration"])
    server_pid = spec.get("server_pid")
    samples: dict[str, tuple[float, float, float | None]] = {}

    def sample(edge: str) -> None:
        server = _process_cpu_seconds(server_pid) if server_pid else None
        samples[edge] = (loop.time(), _self_cpu_seconds(), server)

    loop.call_at(start, sample, "start")
    loop.call_at(end, sample, "end")

    async def drive(client: RestClient | GrpcClient) -> None:
        check = True
        while (sent := loop.time()) < end:
            try:
                await client.call(check)
            except Exception as exc:  # counted, and the client goes on
                result.errors += 1
                result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
            else:
                done = loop.time()
                if start <= done < end:
                    result.completed += 1
                    latencies.append(done - sent)
            check = False

    try:
        await asyncio.gather(*(drive(client) for client in clients))
    finally:
        await asyncio.gather(*(client.close() for client in clients))
    (t0, cpu0, server0), (t1, cpu1, server1) = samples["start"], samples["end"]
    result.duration = float(spec["duration"])
    result.rate = result.completed / result.duration
    result.client_cpu = (cpu1 - cpu0) / (t1 - t0)
    if server0 is not None and server1 is not None:
        result.server_cpu = (server1 - server0) / (t1 - t0)
    if latencies:
        ms = np.asarray(latencies) * 1000
        result.latency_ms = {f"p{q}": round(float(np.percentile(ms, q)), 3) for q in (50, 90, 99)}
        result.latencies_ms = [round(x, 3) for x in ms.tolist()]
    return result


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # import everything now, before the first run: gRPC, the TF Serving stubs (which import
    # TensorFlow) and aiohttp
    import aiohttp  # noqa: F401
    import grpc  # noqa: F401
    from tensorflow_serving.apis import predict_pb2  # noqa: F401

    out = sys.stdout
    sys.stdout = sys.stderr  # stdout carries the protocol only
    print(json.dumps({"ready": True}), file=out, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        started = time.perf_counter()
        result = asyncio.run(run(json.loads(line)))
        reply = asdict(result) | {"wall_s": round(time.perf_counter() - started, 3)}
        print(json.dumps(reply), file=out, flush=True)


if __name__ == "__main__":
    main()
