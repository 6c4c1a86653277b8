"""The composition root of `sealserve serve`: wires keys, loaders, manager, data plane, the
gRPC and REST servers and TLS, and runs them on one asyncio loop.

Start-up order follows TF Serving: every model's aspired versions are loaded (or have failed)
before the ports open, so a client never meets a server that answers "not found" for a model
that is merely still loading. Shutdown stops accepting, lets in-flight requests finish for a
grace period, then stops polling. Not reentrant: one `ModelServer` serves once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from dataclasses import dataclass, field

import grpc
from aiohttp import web

from sealserve.errors import SealserveError
from sealserve.serving import grpc_service, rest
from sealserve.serving.dataplane import DataPlane
from sealserve.serving.keys import KeyProvider
from sealserve.serving.manager import ManagerOptions, ModelManager, loader_factory
from sealserve.serving.model_config import ModelConfig, parse_model_config_text
from sealserve.serving.tensorflow_runtime import configure_threads, import_tensorflow
from sealserve.serving.tls import SSLConfig, grpc_server_credentials, server_ssl_context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerOptions:
    models: list[ModelConfig]
    grpc_port: int = 8500
    rest_port: int = 0  # 0: no REST API
    bind_address: str = "0.0.0.0"
    ssl: SSLConfig | None = None
    manager: ManagerOptions = field(default_factory=ManagerOptions)
    rest: rest.RestOptions = field(default_factory=rest.RestOptions)
    grpc_max_message_bytes: int = 256 << 20
    grpc_health_check: bool = False
    intra_op_threads: int = 0  # 0: TensorFlow decides
    inter_op_threads: int = 0
    inference_threads: int = 8
    shutdown_grace_seconds: float = 5.0
    model_config_file: str | None = None  # re-read when it changes, if polled
    model_config_poll_seconds: float = 0  # --model_config_file_poll_wait_seconds; 0: never


class ModelServer:
    def __init__(self, options: ServerOptions, keys: KeyProvider) -> None:
        self.options = options
        self.keys = keys
        self.manager = ModelManager(
            options.models, loader_factory(keys, options.manager.load), options.manager
        )
        self.dataplane = DataPlane(self.manager, options.inference_threads)
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self._grpc: grpc.aio.Server | None = None
        self._rest: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._config_watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        _configure_tensorflow(self.options)
        await asyncio.get_running_loop().run_in_executor(None, self.manager.start)
        await self._start_grpc()
        if self.options.rest_port:
            await self._start_rest()
        if self.options.model_config_file and self.options.model_config_poll_seconds > 0:
            self._config_watch = asyncio.create_task(self._watch_model_config())
        tls = (
            "mutual TLS"
            if self.options.ssl and self.options.ssl.client_verify
            else ("TLS" if self.options.ssl else "plaintext (no --ssl_config_file)")
        )
        log.warning(
            "serving %s: gRPC on %s:%s%s, %s",
            ", ".join(self.manager.model_names()),
            self.options.bind_address,
            self.grpc_port,
            f", REST on port {self.rest_port}" if self.rest_port else "",
            tls,
        )

    async def _start_grpc(self) -> None:
        limit = self.options.grpc_max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ]
        )
        await grpc_service.add_services(
            server, self.dataplane, health_check=self.options.grpc_health_check
        )
        address = f"{self.options.bind_address}:{self.options.grpc_port}"
        if self.options.ssl is not None:
            port = server.add_secure_port(address, grpc_server_credentials(self.options.ssl))
        else:
            port = server.add_insecure_port(address)
        await server.start()
        self._grpc, self.grpc_port = server, port

    async def _start_rest(self) -> None:
        runner = web.AppRunner(
            rest.build_app(self.dataplane, self.options.rest), access_log=None, handle_signals=False
        )
        await runner.setup()
        ssl_context = server_ssl_context(self.options.ssl) if self.options.ssl else None
        site = web.TCPSite(
            runner, self.options.bind_address, self.options.rest_port, ssl_context=ssl_context
        )
        await site.start()
        self._rest = runner
        self.rest_port = runner.addresses[0][1]

    async def _watch_model_config(self) -> None:
        """Reload the models when the config file changes (a bad file keeps the old list)."""
        path = self.options.model_config_file
        assert path is not None
        last = _read_quietly(path)
        while True:
            await asyncio.sleep(self.options.model_config_poll_seconds)
            text = _read_quietly(path)
            if text is None or text == last:
                continue
            last = text
            try:
                configs = parse_model_config_text(text, path)
                await self.dataplane.call(functools.partial(self.manager.reload, configs))
                log.warning("reloaded %s: serving %s", path, ", ".join(self.manager.model_names()))
            except SealserveError as exc:
                log.error("model config %s not applied: %s", path, exc)

    async def stop(self) -> None:
        if self._config_watch is not None:
            self._config_watch.cancel()
        grace = self.options.shutdown_grace_seconds
        if self._grpc is not None:
            await self._grpc.stop(grace)
        if self._rest is not None:
            await self._rest.cleanup()
        self.manager.stop()
        self.dataplane.close()

    def request_stop(self) -> None:
        self._stopping.set()

    async def serve_until_signalled(self) -> None:
        """Start, serve until SIGINT or SIGTERM, then stop gracefully."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        try:
            await self._stopping.wait()
        finally:
            log.warning("shutting down")
            await self.stop()


def _read_quietly(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _configure_tensorflow(options: ServerOptions) -> None:
    """Apply the thread settings if TensorFlow has not started yet (`sealserve serve`
    applies them itself, before anything imports TensorFlow)."""
    if not configure_threads(options.intra_op_threads, options.inter_op_threads):
        log.warning("TensorFlow had already started: its thread pool sizes are unchanged")
    import_tensorflow()
