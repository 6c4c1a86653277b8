"""The benchmark client: `sealserve client` and the seed-compatible `resnet_client_grpc`.

Re-creates the seed's `resnet_client_grpc.py` (its single-dash flags, its defaults, its
output lines) and goes beyond it: REST as well as gRPC, latency percentiles, failures
counted by status code instead of crashing the run, a machine-readable summary, a progress
bar, and a clean summary on Ctrl-C.

What a run does (as the seed): one asyncio loop; `cnum` connections, each its own gRPC
channel (with a private subchannel pool, so each really is its own TCP/TLS connection) or its
own HTTP connection; each sends `loop` Predict requests one after the other. The request is
built and serialised once and the same bytes are sent every time (random integers 0..254 as
`--dtype`, or an image). First a silent warm-up of `--warmup` requests per connection (which
also opens the connections and does the TLS handshakes), then the timed run.

Output, exactly the seed's formats (stdout):
    query: {secure|insecure} channel, task {i}, batch {b}, loop_idx {k}, latency(ms) {:.1f}, \
tps: {:.1f}
    summary: cnum {c}, batch {b}, e2e time(s) {t}, average latency(ms) {l}, tps: {x}
The summary numbers are printed with Python's `str` as the seed's `format` does; tps =
successful requests x batch / wall time of the timed run, which is the seed's
cnum x loop x batch / time when every request succeeds. Then our lines:
    latency(ms): min ..., p50 ..., p90 ..., p99 ..., max ...
    errors: 0 | errors: N (CODE: n, ...)
Differences from the seed, on purpose: the warm-up prints nothing (the seed printed its query
lines and a summary of its own); the first response is not dumped; `-loop 0` lines keep
`loop_idx`; with `-img` the picture is decoded as RGB and resized to the input size
(shorter side, then a centre crop) instead of the seed's raw reshape of a BGR buffer, and
batches of it are allowed.

Exit status: 0 when the run finished and every request succeeded; 1 when a request failed
(each distinct error is printed once on stderr, and the run goes on), or on a set-up error
(one line); on SIGINT/SIGTERM the summary of the requests completed so far is printed and the
status is 128 + the signal (130 for Ctrl-C) when a finite `-loop` was cut short, while with
`-loop 0` (run until interrupted) stopping is the normal end and the status is 0 or 1 as
above, like ping's. If every warm-up request fails, the run stops there with that error.

Concurrency: everything runs on one event loop in one thread; the statistics are plain
objects touched only by that loop's tasks. Not thread safe, and needs no locks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

import numpy as np

from sealserve.client import (
    GRPC_DEFAULT_PORT,
    PREDICT_METHOD,
    REST_DEFAULT_PORT,
    TlsFiles,
    attested,
    client_certificate_error,
    grpc_channel_options,
    grpc_credentials,
    grpc_error_text,
    grpc_target,
    model_path,
    needs_client_certificate,
    rest_base_url,
    ssl_context,
)
from sealserve.client.attested import requester_tls
from sealserve.errors import InvalidArgument, SealserveError

__all__ = ["BenchmarkConfig", "BenchmarkResult", "add_arguments", "run", "run_benchmark"]

DEFAULT_MODEL = "resnet50-v15-fp32"
DEFAULT_SHAPE = (224, 224, 3)
MAX_ERRORS_SHOWN = 10  # distinct error messages printed on stderr; the rest are only counted

EXIT_OK = 0
EXIT_FAILED = 1


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class BenchmarkConfig:
    target: str  # gRPC host:port, or a REST base URL
    rest: bool = False
    tls: TlsFiles | None = None
    model_name: str = DEFAULT_MODEL
    model_version: int | None = None
    signature_name: str = "serving_default"
    input_name: str = "input"
    batch: int = 1
    cnum: int = 16
    loop: int = 200  # 0: until stopped
    warmup: int = 5
    timeout: float | None = 60.0
    shape: tuple[int, ...] = DEFAULT_SHAPE
    dtype: str = "float32"
    image: str | None = None

    @property
    def secure(self) -> bool:
        return self.tls is not None


@dataclass
class BenchmarkResult:
    """What the timed run measured. Latencies are of successful requests, in seconds."""

    config: BenchmarkConfig
    latencies: array = field(default_factory=lambda: array("d"))
    #: when each successful request completed, in seconds since the timed run started
    completed_at: array = field(default_factory=lambda: array("d"))
    errors: Counter[str] = field(default_factory=Counter)
    wall_seconds: float = 0.0
    stopped_by: int | None = None  # the signal that stopped the run

    @property
    def succeeded(self) -> int:
        return len(self.latencies)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    @property
    def tps(self) -> float:
        if self.wall_seconds <= 0:
            return 0.0
        return self.succeeded * self.config.batch / self.wall_seconds

    @property
    def average_latency_ms(self) -> float:
        if not self.latencies:
            return float("nan")
        return 1000 * sum(self.latencies) / len(self.latencies)

    def percentiles_ms(self) -> dict[str, float] | None:
        if not self.latencies:
            return None
        values = np.frombuffer(self.latencies, dtype=np.float64) * 1000
        p50, p90, p99 = np.percentile(values, (50, 90, 99))
        return {
            "min": float(values.min()),
            "p50": float(p50),
            "p90": float(p90),
            "p99": float(p99),
            "max": float(values.max()),
        }

    def exit_code(self) -> int:
        if self.stopped_by is not None and self.config.loop != 0:
            return 128 + self.stopped_by
        return EXIT_OK if self.failed == 0 and self.succeeded > 0 else EXIT_FAILED

    def summary_line(self) -> str:
        c = self.config
        return (
            f"summary: cnum {c.cnum}, batch {c.batch}, e2e time(s) {self.wall_seconds}, "
            f"average latency(ms) {self.average_latency_ms}, tps: {self.tps}"
        )

    def detail_lines(self) -> list[str]:
        lines = []
        stats = self.percentiles_ms()
        if stats is not None:
            lines.append("latency(ms): " + ", ".join(f"{k} {v:.1f}" for k, v in stats.items()))
        if self.errors:
            by_code = ", ".join(f"{code}: {n}" for code, n in self.errors.most_common())
            lines.append(f"errors: {self.failed} ({by_code})")
        else:
            lines.append("errors: 0")
        return lines

    def as_json(self) -> dict[str, Any]:
        c = self.config
        return {
            "protocol": "rest" if c.rest else "grpc",
            "target": c.target,
            "tls": "none" if c.tls is None else ("mutual" if c.tls.mutual else "one-way"),
            "model_name": c.model_name,
            "model_version": c.model_version,
            "signature_name": c.signature_name,
            "cnum": c.cnum,
            "batch": c.batch,
            "loop": c.loop,
            "warmup": c.warmup,
            "requests": self.succeeded + self.failed,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "errors": dict(self.errors.most_common()),
            "e2e_time_s": self.wall_seconds,
            "average_latency_ms": None if not self.latencies else self.average_latency_ms,
            "latency_ms": self.percentiles_ms(),
            "tps": self.tps,
            "interrupted": self.stopped_by is not None,
        }


# ---------------------------------------------------------------------------------------------
# The request


def input_array(config: BenchmarkConfig, rng: np.random.Generator | None = None) -> np.ndarray:
    """The batch sent in every request, as integers 0..255 in an int64 array (converted to
    `dtype` when encoded): the seed's random integers 0..254, or the image repeated."""
    shape = (config.batch, *config.shape)
    if config.image is None:
        rng = rng or np.random.default_rng()
        return rng.integers(0, 255, size=shape, dtype=np.int64)
    picture = load_image(config.image, config.shape)
    return np.broadcast_to(picture, shape).astype(np.int64)


def load_image(path: str, shape: Sequence[int]) -> np.ndarray:
    """An image file as [height, width, channels] uint8: RGB for 3 channels, grey for 1,
    resized to cover the size with its aspect ratio kept, then centre-cropped (the usual
    ImageNet preparation), so a non-square photo is not distorted."""
    if len(shape) != 3 or shape[2] not in (1, 3):
        raise InvalidArgument(
            f"an image needs an input shape HEIGHT,WIDTH,3 (or ,1 for grey), not "
            f"{','.join(map(str, shape))}"
        )
    try:
        from PIL import Image, ImageOps, UnidentifiedImageError
    except ImportError:  # pragma: no cover - pillow is a dependency
        raise InvalidArgument("reading images needs Pillow: pip install pillow") from None
    height, width, channels = shape
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image = image.convert("RGB" if channels == 3 else "L")
            image = ImageOps.fit(image, (width, height), method=Image.Resampling.BILINEAR)
    except FileNotFoundError:
        raise InvalidArgument(f"image {path} not found") from None
    except UnidentifiedImageError:
        raise InvalidArgument(f"{path} is not an image Pillow can read") from None
    except OSError as exc:
        raise InvalidArgument(f"cannot read image {path}: {exc}") from None
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels.reshape(height, width, channels)


def _numpy_dtype(name: str) -> np.dtype[Any]:
    from sealserve.serving.tensor_proto import DTYPE_NAMES, dtype_name

    if name.upper() in DTYPE_NAMES:
        dtype = DTYPE_NAMES[name.upper()]
    else:
        try:
            dtype = np.dtype(name)
        except TypeError:
            raise InvalidArgument(f"unknown dtype {name!r} (e.g. float32, uint8)") from None
        dtype_name(dtype)  # raises for dtypes TensorFlow has no DataType for
    if dtype.kind not in "fiub":
        raise InvalidArgument(f"--dtype {name}: the benchmark sends numbers; use a numeric dtype")
    return dtype


def grpc_request_bytes(config: BenchmarkConfig, values: np.ndarray) -> bytes:
    """A serialised PredictRequest (the input as tensor_content, as tf.make_tensor_proto)."""
    from sealserve.serving.tensor_proto import from_numpy
    from sealserve.serving.tensorflow_runtime import protos_importable

    protos_importable()
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = config.model_name
    request.model_spec.signature_name = config.signature_name
    if config.model_version is not None:
        request.model_spec.version.value = config.model_version
    tensor = values.astype(_numpy_dtype(config.dtype))
    from_numpy(tensor, tensor_content=True, out=request.inputs[config.input_name])
    return request.SerializeToString()


def rest_request_body(config: BenchmarkConfig, values: np.ndarray) -> bytes:
    """TF Serving's columnar REST body, the input named explicitly. The values are whole
    numbers, written as JSON integers, which TF Serving converts to the signature's dtype."""
    _numpy_dtype(config.dtype)
    body = {
        "signature_name": config.signature_name,
        "inputs": {config.input_name: values.tolist()},
    }
    return json.dumps(body, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------
# Connections


class RequestFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class Connection(Protocol):
    async def predict(self) -> None:
        """Send the request once; raises RequestFailed."""

    async def close(self) -> None: ...


class GrpcConnection:
    """One channel, its own TCP (and TLS) connection; requests and responses stay bytes:
    the benchmark measures the server, so the client neither re-serialises the request nor
    parses the response."""

    def __init__(self, config: BenchmarkConfig, request: bytes) -> None:
        import grpc

        self._grpc = grpc
        options = grpc_channel_options(config.tls, own_connection=True)
        if config.tls is None:
            self._channel = grpc.aio.insecure_channel(config.target, options=options)
        else:
            credentials = grpc_credentials(config.tls)
            self._channel = grpc.aio.secure_channel(config.target, credentials, options=options)
        self._call = self._channel.unary_unary(PREDICT_METHOD)  # bytes in, bytes out
        self._request = request
        self._timeout = config.timeout

    async def predict(self) -> None:
        try:
            await self._call(self._request, timeout=self._timeout)
        except self._grpc.aio.AioRpcError as error:
            raise RequestFailed(*grpc_error_text(error)) from None

    async def close(self) -> None:
        await self._channel.close()


class RestConnection:
    """One HTTP keep-alive connection (a connector limited to one)."""

    def __init__(self, config: BenchmarkConfig, body: bytes, url: str) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        context = ssl_context(config.tls) if config.tls is not None else None
        connector = aiohttp.TCPConnector(limit=1, ssl=context if context is not None else True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=config.timeout),
            headers={"Content-Type": "application/json"},
        )
        self._url, self._body = url, body
        self._server_name = config.tls.server_name if config.tls else None

    async def predict(self) -> None:
        try:
            async with self._session.post(
                self._url, data=self._body, server_hostname=self._server_name
            ) as response:
                payload = await response.read()
                if response.status != 200:
                    raise RequestFailed(f"HTTP {response.status}", _rest_error(payload))
        except TimeoutError:
            raise RequestFailed("DEADLINE_EXCEEDED", "no response in time") from None
        except self._aiohttp.ClientError as exc:
            raise RequestFailed("UNAVAILABLE", " ".join(str(exc).split())) from None

    async def close(self) -> None:
        await self._session.close()


def _rest_error(payload: bytes) -> str:
    try:
        message = json.loads(payload).get("error")
    except (ValueError, AttributeError):
        message = None
    text = message if isinstance(message, str) else payload[:200].decode("utf-8", "replace")
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# The run


class Reporter:
    """Where results go as they come: the seed's per-request lines, or a progress bar."""

    def __init__(
        self,
        config: BenchmarkConfig,
        *,
        per_request: bool,
        progress: bool,
        out: TextIO,
        err: TextIO,
    ) -> None:
        self._channel = "secure" if config.secure else "insecure"
        self._batch = config.batch
        self._per_request = per_request
        self._out, self._err = out, err
        self._shown: set[tuple[str, str]] = set()
        self._bar: Any = None
        if progress:
            from tqdm import tqdm

            total = config.cnum * config.loop or None
            # disable=None: only on a terminal, so a pipe or a log file stays clean
            self._bar = tqdm(total=total, unit="req", file=err, disable=None, leave=False)

    def success(self, task: int, index: int, latency: float) -> None:
        if self._per_request:
            self._out.write(
                f"query: {self._channel} channel, task {task}, batch {self._batch}, "
                f"loop_idx {index}, latency(ms) {1000 * latency:.1f}, "
                f"tps: {self._batch / latency:.1f}\n"
            )
        if self._bar is not None:
            self._bar.update(1)

    def failure(self, task: int, index: int, error: RequestFailed, warmup: bool = False) -> None:
        key = (error.code, error.message)
        if key not in self._shown and len(self._shown) < MAX_ERRORS_SHOWN:
            self._shown.add(key)
            when = "warm-up" if warmup else f"loop_idx {index}"
            self._err.write(f"error: task {task}, {when}: {error.code}: {error.message}\n")
            self._err.flush()
        if self._bar is not None and not warmup:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _Stopper:
    """SIGINT/SIGTERM stop the run: the tasks of the current phase are cancelled (requests in
    flight are dropped, not counted). A second signal restores the default handling, so a
    run stuck in a close can still be killed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.signum: int | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self._installed: list[int] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                continue
            self._installed.append(signum)

    def _on_signal(self, signum: int) -> None:
        if self.signum is not None:
            self.uninstall()
            signal.raise_signal(signum)
            return
        self.signum = signum
        self.stop()

    def stop(self, signum: int = signal.SIGINT) -> None:
        """Stop as if `signum` had arrived (also for callers without signals)."""
        if self.signum is None:
            self.signum = signum
        for task in self.tasks:
            task.cancel()

    def uninstall(self) -> None:
        for signum in self._installed:
            self._loop.remove_signal_handler(signum)
        self._installed = []


async def run_benchmark(
    config: BenchmarkConfig,
    reporter: Reporter,
    *,
    on_start: Callable[[_Stopper], None] | None = None,
) -> BenchmarkResult:
    """Warm up, then run the timed requests; returns what was measured. `on_start` receives
    the stopper (tests stop a run with it as a signal would)."""
    values = input_array(config)
    if config.rest:
        url = f"{config.target}{model_path(config.model_name, config.model_version)}:predict"
        body = rest_request_body(config, values)

        def connect() -> Connection:
            return RestConnection(config, body, url)
    else:
        request = grpc_request_bytes(config, values)

        def connect() -> Connection:
            return GrpcConnection(config, request)

    result = BenchmarkResult(config)
    stopper = _Stopper(asyncio.get_running_loop())
    if on_start is not None:
        on_start(stopper)
    connections = [connect() for _ in range(config.cnum)]
    warm_ok = [0]
    warm_errors: list[tuple[int, int, RequestFailed]] = []
    run_started = [0.0]

    async def warm_up(task: int) -> None:
        for index in range(config.warmup):
            if stopper.signum is not None:
                break
            try:
                await connections[task].predict()
            except RequestFailed as error:
                warm_errors.append((task, index, error))
            else:
                warm_ok[0] += 1

    async def timed(task: int) -> None:
        connection = connections[task]
        index = 0
        # The stop check matters when a stop reaches a request as a CANCELLED status rather
        # than as the task's CancelledError: such a request is dropped, not an error.
        while stopper.signum is None and (config.loop == 0 or index < config.loop):
            start = time.perf_counter()
            try:
                await connection.predict()
            except RequestFailed as error:
                if stopper.signum is not None:
                    break
                result.errors[error.code] += 1
                reporter.failure(task, index, error)
            else:
                done = time.perf_counter()
                latency = done - start
                result.latencies.append(latency)
                result.completed_at.append(done - run_started[0])
                reporter.success(task, index, latency)
            index += 1

    try:
        if config.warmup:
            await _phase(stopper, [warm_up(i) for i in range(config.cnum)])
            if stopper.signum is not None:
                result.stopped_by = stopper.signum
                return result
            if warm_ok[0] == 0:  # one line says it all (and spares a -loop 0 from spinning)
                first = warm_errors[0][2]
                _refused_for_want_of_a_certificate(config, {first.code})
                raise SealserveError(f"every warm-up request failed: {first.code}: {first.message}")
            for task, index, error in warm_errors:  # some failed: worth knowing, not fatal
                reporter.failure(task, index, error, warmup=True)
        start = run_started[0] = time.perf_counter()
        await _phase(stopper, [timed(i) for i in range(config.cnum)])
        result.wall_seconds = time.perf_counter() - start
        result.stopped_by = stopper.signum
        if not result.latencies and result.errors:  # --warmup 0: the run itself says why
            _refused_for_want_of_a_certificate(config, set(result.errors))
    finally:
        stopper.uninstall()
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
    return result


def _refused_for_want_of_a_certificate(config: BenchmarkConfig, codes: set[str]) -> None:
    """Raise the one-line "requires a client certificate" error if every request failed
    UNAVAILABLE because the server's TLS handshake wants a certificate this client lacks."""
    if codes == {"UNAVAILABLE"} and needs_client_certificate(config.target, config.tls):
        raise client_certificate_error(("-crt", "-key"))


async def _phase(stopper: _Stopper, coroutines: list[Any]) -> None:
    stopper.tasks = [asyncio.ensure_future(c) for c in coroutines]
    if stopper.signum is not None:
        for task in stopper.tasks:
            task.cancel()
    outcomes = await asyncio.gather(*stopper.tasks, return_exceptions=True)
    stopper.tasks = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
            raise outcome


# ---------------------------------------------------------------------------------------------
# Command line


def _positive(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _non_negative(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 224,224,3, got {text!r}") from None
    if any(d < 1 for d in dims):  # an empty shape is a scalar per instance
        raise argparse.ArgumentTypeError(f"expected positive sizes like 224,224,3, got {text!r}")
    return dims


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The seed's single-dash flags (each with a `--` alias) and ours."""
    seed = parser.add_argument_group("the seed's flags (resnet_client_grpc.py)")
    seed.add_argument(
        "-url",
        "--url",
        metavar="ADDRESS",
        help="gRPC server HOST:PORT (default localhost:8500); with --rest, HOST:PORT or an "
        "http(s):// URL (default localhost:8501)",
    )
    seed.add_argument(
        "-img",
        "--img",
        "--image",
        dest="img",
        metavar="FILE",
        help="send this image (RGB, resized to --shape) instead of random pixels",
    )
    seed.add_argument("-ca", "--ca", metavar="PEM", help="CA certificate that signed the server's")
    seed.add_argument(
        "-crt",
        "--crt",
        "--cert",
        dest="crt",
        metavar="PEM",
        help="client certificate (with -key); alone: the server's own certificate to trust "
        "(one-way TLS, as the seed)",
    )
    seed.add_argument("-key", "--key", metavar="PEM", help="client private key (mutual TLS)")
    seed.add_argument("-batch", "--batch", type=_positive, default=1, help="batch size (1)")
    seed.add_argument(
        "-cnum", "--cnum", type=_positive, default=16, help="concurrent connections (16)"
    )
    seed.add_argument(
        "-loop",
        "--loop",
        type=_non_negative,
        default=200,
        help="requests per connection (200); 0: until interrupted",
    )
    ours = parser.add_argument_group("beyond the seed")
    ours.add_argument("--rest", action="store_true", help="use TF Serving's REST API, not gRPC")
    ours.add_argument("--model_name", default=DEFAULT_MODEL, help=f"(default {DEFAULT_MODEL})")
    ours.add_argument("--model_version", type=_positive, help="a version (default: the latest)")
    ours.add_argument("--signature_name", default="serving_default")
    ours.add_argument("--input_name", default="input", help="input alias (default input)")
    ours.add_argument(
        "--shape",
        type=_shape,
        default=DEFAULT_SHAPE,
        metavar="DIMS",
        help="shape of one instance (default 224,224,3; --shape= for scalars); the batch "
        "size is prepended",
    )
    ours.add_argument("--dtype", default="float32", help="input dtype (default float32)")
    ours.add_argument(
        "--warmup",
        type=_non_negative,
        default=5,
        metavar="N",
        help="untimed requests per connection first (default 5)",
    )
    ours.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="deadline of each request (default 60)",
    )
    ours.add_argument(
        "--tls_server_name",
        metavar="NAME",
        help="name to check the server certificate against (default: the host of -url)",
    )
    ours.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no per-request lines (a progress bar on a terminal instead)",
    )
    ours.add_argument(
        "--json",
        action="store_true",
        help="print the summary as one JSON object instead of text (implies --quiet)",
    )
    ours.add_argument(
        "--plot",
        metavar="FILE",
        help="draw the latency distribution and the throughput over the run (.png or .svg)",
    )
    attested.add_arguments(parser)


def config_from_args(args: argparse.Namespace) -> BenchmarkConfig:
    tls = requester_tls(
        args,
        args.url or "localhost",
        REST_DEFAULT_PORT if args.rest else GRPC_DEFAULT_PORT,
        flags=("-ca", "-crt", "-key"),
        ca=args.ca,
        cert=args.crt,
        key=args.key,
        server_name=args.tls_server_name,
    )
    if args.rest:
        target = rest_base_url(args.url or "localhost:8501", secure=tls is not None)
    else:
        target = grpc_target(args.url or "localhost:8500")
    if args.timeout is not None and args.timeout <= 0:
        raise InvalidArgument("--timeout must be positive")
    return BenchmarkConfig(
        target=target,
        rest=args.rest,
        tls=tls,
        model_name=args.model_name,
        model_version=args.model_version,
        signature_name=args.signature_name,
        input_name=args.input_name,
        batch=args.batch,
        cnum=args.cnum,
        loop=args.loop,
        warmup=args.warmup,
        timeout=args.timeout,
        shape=tuple(args.shape),
        dtype=args.dtype,
        image=args.img,
    )


def run(
    args: argparse.Namespace,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
    on_start: Callable[[Any], None] | None = None,
) -> int:
    """`sealserve client`: run the benchmark, print the seed's lines and ours; the exit
    status of the module docstring. Set-up errors raise SealserveError (one line)."""
    from sealserve.serving.tensorflow_runtime import defer_runtime

    defer_runtime()  # a client needs TF Serving's protos, never TensorFlow's runtime
    out = out or sys.stdout
    err = err or sys.stderr
    config = config_from_args(args)
    if args.plot:
        from sealserve.client.plot import check_plot_path

        check_plot_path(args.plot)  # before the run, not after it
    quiet = args.quiet or args.json
    reporter = Reporter(config, per_request=not quiet, progress=quiet, out=out, err=err)
    try:
        result = asyncio.run(run_benchmark(config, reporter, on_start=on_start))
    finally:
        reporter.close()
    if args.plot:
        from sealserve.client.plot import plot_run

        plot_run(result, args.plot)
    if args.json:
        out.write(json.dumps(result.as_json()) + "\n")
    else:
        out.write(result.summary_line() + "\n")
        for line in result.detail_lines():
            out.write(line + "\n")
    out.flush()
    if result.stopped_by is not None:
        err.write(
            f"stopped by {signal.Signals(result.stopped_by).name} after "
            f"{result.succeeded + result.failed} timed requests\n"
        )
    return result.exit_code()


def build_seed_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnet_client_grpc",
        description="Benchmark a TF Serving (or sealserve) model server with concurrent "
        "Predict requests; a drop-in for the seed's resnet_client_grpc.py.",
        allow_abbrev=False,
    )
    add_arguments(parser)
    return parser


def seed_main(argv: Sequence[str] | None = None) -> int:
    """Console script `resnet_client_grpc`: the seed's command line, our exit statuses."""
    args = build_seed_parser().parse_args(argv)
    try:
        return run(args)
    except SealserveError as exc:
        print(f"resnet_client_grpc: error: {exc}", file=sys.stderr)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"resnet_client_grpc: error: {exc.strerror or exc}{where}", file=sys.stderr)
    except KeyboardInterrupt:  # before the run installed its handlers (e.g. during start-up)
        print("resnet_client_grpc: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(BrokenPipeError):
        sys.exit(seed_main())
