"""The suite's one harness for real servers on loopback.

- Our servers bind port 0 and say which port they got, so tests never probe for free ports:
  in-process, `RunningServer` (a `ModelServer`) and `RunningKbs` read the bound ports from
  the server objects; as child processes, `Child` reads them from the start-up line
  (`sealserve serve`: "serving M: gRPC on HOST:PORT, REST on port PORT"; `sealserve kbs
  serve`: "KBS listening on URL").
- `free_port()` is only for other programs that cannot report the port they bound (nginx,
  PostgreSQL): it is racy by nature (the port is free when probed, not when taken).

In-process servers run on their own event loop in a daemon thread (`LoopThread`); the tests
talk to them with real clients from their own threads. Not thread safe itself: one test
drives one harness object.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sealserve.kbs.http import bound_port, server_ssl_context, start_kbs
from sealserve.tools.certs import CertificateSet, make_twoway

if TYPE_CHECKING:  # the model server's modules import TensorFlow: only when a test needs them
    import grpc

    from sealserve.kbs.limits import AnonymousBudget
    from sealserve.kbs.service import KbsService
    from sealserve.serving.keys import KeyProvider
    from sealserve.serving.model_config import ModelConfig
    from sealserve.serving.server import ServerOptions

T = TypeVar("T")

#: The `sealserve` command of the environment running the tests.
SEALSERVE = str(Path(sys.executable).parent / "sealserve")

#: `sealserve serve`'s start-up line, once both ports are bound.
SERVING = re.compile(
    r"serving (?P<models>.*?): gRPC on (?P<host>[^\s,]+):(?P<grpc_port>\d+)"
    r"(?:, REST on port (?P<rest_port>\d+))?"
)
#: `sealserve kbs serve`'s start-up line.
KBS_LISTENING = re.compile(r"KBS listening on (?P<url>https?://[^\s:]+:(?P<port>\d+))")


def until(condition: Callable[[], object], seconds: float = 60.0) -> bool:
    """Whether `condition()` holds within `seconds` (polled every 10 ms)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(condition())


def free_port() -> int:
    """A loopback port free at the time of asking, for programs that cannot bind port 0 and
    report it (nginx, PostgreSQL). Our own servers bind port 0 instead."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 300) -> T:
        """Run `coroutine` on the loop; its result (or exception) here."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        self.loop.close()


# -- the model server, in-process ------------------------------------------------------------


def server_options(models: list[ModelConfig], **overrides: object) -> ServerOptions:
    """Test options: loopback, both ports chosen by the system, quick polls, no retries."""
    from sealserve.serving.loader import LoadOptions
    from sealserve.serving.manager import ManagerOptions
    from sealserve.serving.rest import RestOptions
    from sealserve.serving.server import ServerOptions

    settings: dict[str, object] = dict(
        models=models,
        grpc_port=0,
        rest_port=0,
        bind_address="127.0.0.1",
        manager=ManagerOptions(load=LoadOptions(), poll_seconds=0.2, max_load_retries=0),
        rest=RestOptions(max_body_bytes=1 << 20),
        grpc_max_message_bytes=4 << 20,
        grpc_health_check=True,
        inference_threads=4,
    )
    settings.update(overrides)
    return ServerOptions(**settings)  # type: ignore[arg-type]


class RunningServer:
    """A `ModelServer`, started on construction (after the models load), stopped on `stop()`;
    and the clients that talk to it (the real TF Serving stubs over a channel, HTTP)."""

    def __init__(self, options: ServerOptions, keys: KeyProvider) -> None:
        from sealserve.serving.server import ModelServer

        self.server = ModelServer(options, keys)
        self._loop = LoopThread()
        self._loop.run(self.server.start())
        self.grpc_port = self.server.grpc_port
        self.rest_port = self.server.rest_port

    @property
    def manager(self):  # noqa: ANN201
        return self.server.manager

    def stop(self) -> None:
        self._loop.run(self.server.stop(), timeout=60)
        self._loop.close()

    # -- REST ------------------------------------------------------------------------------

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.rest_port}{path}"

    def http(
        self,
        method: str,
        path: str,
        body: bytes | str | dict | None = None,
        *,
        headers: dict[str, str] | None = None,
        context: ssl.SSLContext | None = None,
    ) -> HttpResult:
        data = (
            json.dumps(body).encode()
            if isinstance(body, dict)
            else (body.encode() if isinstance(body, str) else body)
        )
        request = urllib.request.Request(
            self.url(path, "https" if context else "http"),
            data=data,
            method=method,
            headers=headers or {},
        )
        try:
            with urllib.request.urlopen(request, timeout=60, context=context) as response:
                return HttpResult(
                    response.status, response.read(), response.headers.get("Content-Type", "")
                )
        except urllib.error.HTTPError as error:
            return HttpResult(error.code, error.read(), error.headers.get("Content-Type", ""))

    # -- gRPC ------------------------------------------------------------------------------

    def channel(
        self,
        credentials: grpc.ChannelCredentials | None = None,
        target: str | None = None,
        options: list | None = None,
    ) -> grpc.Channel:
        import grpc

        address = target or f"127.0.0.1:{self.grpc_port}"
        if credentials is None:
            return grpc.insecure_channel(address, options=options or [])
        return grpc.secure_channel(address, credentials, options=options or [])


@dataclass
class HttpResult:
    status: int
    body: bytes
    content_type: str

    def json(self) -> Any:
        return json.loads(self.body)


# -- the key broker, in-process --------------------------------------------------------------


class RunningKbs:
    """A KBS served over HTTPS by aiohttp on loopback, on `port` (0: one the system picks),
    with `budget` for unauthenticated requests (None: the KBS's default); `stop()` is like the
    death of its process: listening socket and connections closed."""

    def __init__(
        self,
        service: KbsService,
        cert: Path,
        key: Path,
        port: int = 0,
        budget: AnonymousBudget | None = None,
    ) -> None:
        self._loop = LoopThread()
        context = server_ssl_context(str(cert), str(key))
        self.runner = self._loop.run(
            start_kbs(service, host="127.0.0.1", port=port, ssl_context=context, budget=budget),
            timeout=30,
        )
        self.port = bound_port(self.runner)
        self.url = f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._loop.run(self.runner.cleanup(), timeout=30)
        self._loop.close()


# -- our commands, as child processes --------------------------------------------------------


class Child:
    """A child process that is ready once it writes a line matching `ready` (on stdout or
    stderr): `self.ready` is that match, so the ports it bound are read from it. Both streams
    are collected in the background (no pipe fills up) for assertions after `stop()`. A
    process that exits, or stays silent for `timeout` seconds, fails the test with its
    output. (Nothing runs in the child before its exec: a fork of this process, whose gRPC
    threads run fork handlers, can die there. Wrap `argv` instead, e.g. in `prlimit`.)"""

    def __init__(
        self,
        argv: list[str | Path],
        ready: re.Pattern[str],
        *,
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ) -> None:
        self.process = subprocess.Popen(
            [str(a) for a in argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._out: list[str] = []
        self._err: list[str] = []
        self._ready_pattern = ready
        self._match: re.Match[str] | None = None
        self._seen = threading.Event()
        streams = ((self.process.stdout, self._out), (self.process.stderr, self._err))
        self._readers = [
            threading.Thread(target=self._read, args=stream, daemon=True) for stream in streams
        ]
        for reader in self._readers:
            reader.start()
        deadline = time.monotonic() + timeout
        while not self._seen.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                for reader in self._readers:  # what it wrote before it exited
                    reader.join(timeout=10)
                break
        if self._match is None:
            self.stop(signal.SIGKILL)
            raise AssertionError(
                f"{argv[0]} did not start (exit code {self.process.returncode}):\n"
                f"{self.stdout}{self.stderr}"
            )
        self.ready: re.Match[str] = self._match

    def _read(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)
            if self._match is None:
                found = self._ready_pattern.search(line)
                if found:
                    self._match = found
                    self._seen.set()

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def stdout(self) -> str:
        return "".join(self._out)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the process (SIGTERM: a clean shutdown), wait for it and its output; its
        exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
        finally:
            for reader in self._readers:
                reader.join(timeout=10)
        return self.process.returncode


class ServeProcess(Child):
    """`sealserve serve ARGS`, on the ports it chose (`--port=0 --rest_api_port=0` are
    added unless ARGS set the ports)."""

    def __init__(self, *args: str | Path, timeout: float = 120) -> None:
        argv: list[str | Path] = [SEALSERVE, "serve", *args]
        given = {str(a).split("=", 1)[0] for a in args}
        argv += [flag + "=0" for flag in ("--port", "--rest_api_port") if flag not in given]
        super().__init__(argv, SERVING, timeout=timeout)
        self.grpc_port = int(self.ready["grpc_port"])
        rest = self.ready["rest_port"]
        self.rest_port = int(rest) if rest is not None else None


def sim_kbs_argv(root: Path, tls: Any, *extra: str | Path) -> list[str | Path]:
    """`sealserve kbs serve` on a free port with the keys of `kbs init root/kbs`, a SQLite
    store in `root`, `tls`'s one-way certificate and the simulated TEE `root/sim` trusted."""
    keys = root / "kbs"
    return [
        SEALSERVE, "kbs", "serve", "--db", root / "kbs.db",
        "--master-key", keys / "master.key",
        "--signing-key", keys / "signing-key.pem",
        "--admin-token-file", keys / "admin.token",
        "--insecure-trust-sim-root", root / "sim",
        "--tls-cert", tls.server_cert, "--tls-key", tls.server_key,
        "--port", "0", *extra,
    ]  # fmt: skip


class KbsProcess(Child):
    """A key broker process (`argv`, e.g. `sealserve kbs serve ... --port 0`), on the port
    its start-up line names."""

    def __init__(
        self,
        argv: list[str | Path],
        timeout: float = 60,
    ) -> None:
        super().__init__(argv, KBS_LISTENING, timeout=timeout)
        self.url = self.ready["url"]
        self.port = int(self.ready["port"])


def mutual_tls_server(tmp_path: Path, plain_model: Path) -> tuple[ServeProcess, CertificateSet]:
    """`sealserve serve` on loopback over mutual TLS (`certs twoway` for localhost and
    127.0.0.1), serving a copy of `plain_model` as model `m` version 1; returns the server
    and its certificates. Stop the server when done."""
    shutil.copytree(plain_model, tmp_path / "m" / "1")
    certs = make_twoway("localhost", "client.local", tmp_path / "tls", sans=["127.0.0.1"])
    server = ServeProcess(
        "--model_name=m",
        f"--model_base_path={tmp_path / 'm'}",
        "--bind_address=127.0.0.1",
        f"--ssl_config_file={certs.ssl_config}",
    )
    return server, certs
