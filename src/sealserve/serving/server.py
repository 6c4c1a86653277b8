"""The composition root of `sealserve serve`: wires keys, loaders, manager, data plane, the
gRPC and REST servers and TLS. REST, polling and shutdown run on one asyncio loop; gRPC
calls run in grpc's own handler threads.

Start-up order follows TF Serving: every model's aspired versions are loaded (or have failed)
before the ports open, so a client never meets a server that answers "not found" for a model
that is merely still loading. As TF Serving's ServerCore, a start where any model ends up
with no available version fails (`ModelsUnavailable`, one reason per model) before a port
opens, unless `allow_unavailable_models` keeps the server up to report the failures in the
model status and to keep polling for versions that load. Shutdown first turns readiness off
(the REST probe answers 503, gRPC health NOT_SERVING) so that load balancers stop sending,
stops accepting, lets in-flight requests finish for a grace period, then stops polling. Not
reentrant: one `ModelServer` serves once.

Metrics (`options.monitoring`) are one `Metrics` per server, fed by the loaders, the adapters
and the servables' run observers; the gRPC health service follows the manager's readiness
through its change notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from aiohttp import web
from grpc_health.v1 import health

from sealserve.errors import Code, SealserveError
from sealserve.serving import attested_identity, grpc_delivery, grpc_inline, grpc_service, rest
from sealserve.serving.attested_identity import AttestedIdentity, BrokeredIdentity
from sealserve.serving.batching import BatchingOptions, BatchScheduler
from sealserve.serving.dataplane import DataPlane
from sealserve.serving.handler_pool import HandlerPool
from sealserve.serving.keys import KeyProvider
from sealserve.serving.manager import ManagerOptions, ModelManager, loader_factory
from sealserve.serving.metrics import Metrics, MonitoringConfig
from sealserve.serving.model_config import ModelConfig, ModelTrust, parse_model_config_text
from sealserve.serving.model_management import ModelManagementPolicy
from sealserve.serving.request_budget import BudgetOptions, RequestBudget
from sealserve.serving.runtimes import OPENVINO
from sealserve.serving.tensorflow_runtime import configure_threads, import_tensorflow
from sealserve.serving.tls import (
    SSLConfig,
    grpc_server_credentials,
    reload_server_certificate,
    server_ssl_context,
)
from sealserve.serving.tls_site import AlertingTLSSite

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BATCH_WAITERS = 64  # gRPC handler threads waiting for a batch, at most, by default


@dataclass(frozen=True)
class ServerOptions:
    models: list[ModelConfig]
    grpc_port: int = 8500
    rest_port: int | None = None  # None: no REST API; 0: any free port (see `rest_port`)
    bind_address: str = "0.0.0.0"
    ssl: SSLConfig | None = None
    attested: AttestedIdentity | None = None  # --attested_tls: ssl carries its key and cert
    brokered: BrokeredIdentity | None = None  # --key_broker_tls_name: renewed certificates
    manager: ManagerOptions = field(default_factory=ManagerOptions)
    rest: rest.RestOptions = field(default_factory=rest.RestOptions)
    grpc_max_message_bytes: int = 256 << 20
    # --grpc_channel_arguments: (key, value) for grpc's server, over the ones set here
    grpc_channel_arguments: tuple[tuple[str, int | str], ...] = ()
    grpc_health_check: bool = False
    grpc_threads: int = 0  # --grpc_max_threads; 0: `grpc_threads(batching)`
    # RPCs in progress at once, beyond which grpc refuses new ones (RESOURCE_EXHAUSTED)
    # before reading them. Clients keep many calls open on one connection (a load balancer,
    # a pool of channels), waiting in grpc's queue for a handler thread; memory is bounded
    # by the byte budget, so this only bounds their number.
    grpc_max_concurrent_rpcs: int = 1024
    # a large answer its client has not taken this long after it was ready is dropped; a
    # connection that answers no keepalive ping within as long is closed (`grpc_delivery`)
    grpc_send_timeout_seconds: float = grpc_delivery.SEND_TIMEOUT_SECONDS
    request_budget: BudgetOptions = BudgetOptions()  # request bytes per request / in flight
    intra_op_threads: int = 0  # 0: TensorFlow decides
    inter_op_threads: int = 0
    inference_threads: int = 8
    shutdown_grace_seconds: float = 5.0
    model_config_file: str | None = None  # re-read when it changes, if polled
    model_config_poll_seconds: float = 0  # --model_config_file_poll_wait_seconds; 0: never
    monitoring: MonitoringConfig = MonitoringConfig()  # --monitoring_config_file; off
    batching: BatchingOptions | None = None  # --enable_batching; None: each request alone
    # who may call HandleReloadConfigRequest; the default: nobody
    model_management: ModelManagementPolicy = ModelManagementPolicy()
    trust: ModelTrust | None = None  # keyed / plain models and pins; None: from the keys
    # --allow_unavailable_models: start (and poll) even if some model's initial load failed
    allow_unavailable_models: bool = False


class ModelsUnavailable(SealserveError):
    """The initial load left models with no available version: `reasons` maps each such
    model to one line saying why."""

    def __init__(self, reasons: dict[str, str]) -> None:
        super().__init__(
            "; ".join(f"model {name}: {why}" for name, why in reasons.items()),
            code=Code.UNAVAILABLE,
        )
        self.reasons = reasons


class ModelServer:
    def __init__(self, options: ServerOptions, keys: KeyProvider) -> None:
        self.options = options
        self.keys = keys
        self.metrics = Metrics() if options.monitoring.enable else None
        if self.metrics is not None:
            self.metrics.admit_models(c.name for c in options.models)
        self.manager = ModelManager(
            options.models,
            loader_factory(keys, options.manager.load, self.metrics, options.trust),
            options.manager,
        )
        batcher = None
        if options.batching is not None:
            batcher = BatchScheduler(
                options.batching,
                on_batch=self.metrics.record_batch if self.metrics else None,
                on_queue_depth=self.metrics.set_queue_depth if self.metrics else None,
            )
        self.request_budget = RequestBudget(options.request_budget)
        self.dataplane = DataPlane(self.manager, options.inference_threads, batcher)
        # the ports bound (port 0 in the options: a free one), once started; in the start-up
        # line too
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self._grpc: grpc.Server | None = None
        self._deliveries = grpc_delivery.Deliveries(options.grpc_send_timeout_seconds)
        self._rest: web.AppRunner | None = None
        self._stopping = asyncio.Event()
        self._draining = False
        self._config_watch: asyncio.Task[None] | None = None
        self._health: health.HealthServicer | None = None
        self._health_changed = asyncio.Event()
        self._health_watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        _configure_tensorflow(self.options)
        loop = asyncio.get_running_loop()
        self.manager.add_listener(functools.partial(self._models_changed, loop))
        # on a daemon thread: a load waiting on an unresponsive key broker must not keep a
        # server that was told to stop (SIGTERM) from exiting
        # the models left unavailable are reported once, by `_check_initial_load`
        await _on_daemon_thread(
            functools.partial(self.manager.start, report_unavailable=False), "sealserve-start"
        )
        self._check_initial_load()
        await self._start_grpc()
        if self.options.rest_port is not None:
            await self._start_rest()
        if self.options.model_config_file and self.options.model_config_poll_seconds > 0:
            self._config_watch = asyncio.create_task(self._watch_model_config())
        tls = (
            "mutual TLS"
            if self.options.ssl and self.options.ssl.client_verify
            else ("TLS" if self.options.ssl else "plaintext (no --ssl_config_file)")
        )
        if self.options.attested is not None:
            tls += f" with an attested certificate ({self.options.attested.tee} evidence)"
        elif self.options.brokered is not None:
            tls += f" with a certificate from the key broker for {self.options.brokered.name}"
        log.info(
            "serving %s: gRPC on %s:%s%s, %s",
            ", ".join(self.manager.model_names()),
            self.options.bind_address,
            self.grpc_port,
            f", REST on port {self.rest_port}" if self.rest_port is not None else "",
            tls,
        )

    def _check_initial_load(self) -> None:
        """Fail the start if a model has no available version (TF Serving's behaviour),
        unless `allow_unavailable_models`: then say which, and serve the others."""
        reasons = self.manager.unavailable_reasons()
        if not reasons:
            return
        if not self.options.allow_unavailable_models:
            raise ModelsUnavailable(reasons)
        for name, why in reasons.items():
            log.warning("model %s is not available (serving anyway): %s", name, why)

    async def _start_grpc(self) -> None:
        limit = self.options.grpc_max_message_bytes
        threads = self.options.grpc_threads or grpc_threads(self.options.batching)
        # with batching, threads beyond one per CPU start only for requests that wait for a
        # batch (see `handler_pool`)
        runners = min(threads, grpc_threads(None)) if self.options.batching else threads
        pool = HandlerPool(runners, threads, "sealserve-grpc")
        arguments: dict[str, int | str] = {
            "grpc.max_receive_message_length": limit,
            "grpc.max_send_message_length": limit,
            **dict(grpc_delivery.keepalive_options(self.options.grpc_send_timeout_seconds)),
            **dict(self.options.grpc_channel_arguments),  # the operator's last: they win
        }
        server = grpc.server(
            pool,
            options=list(arguments.items()),
            maximum_concurrent_rpcs=self.options.grpc_max_concurrent_rpcs,
        )
        self._health = grpc_service.add_services(
            server,
            self.dataplane,
            pool,
            health_check=self.options.grpc_health_check,
            metrics=self.metrics,
            management=self.options.model_management,
            budget=self.request_budget,
            max_response_bytes=limit,
            deliveries=self._deliveries,
        )
        if self._health is not None:
            self._health_watch = asyncio.create_task(self._follow_readiness(self._health))
        if self.options.attested is not None:
            attestation = attested_identity.grpc_attestation_handler(self.options.attested)
            server.add_generic_rpc_handlers((grpc_inline.message_first(attestation, pool),))
        address = f"{self.options.bind_address}:{self.options.grpc_port}"
        try:
            if self.options.ssl is not None:
                current = self.options.brokered.current if self.options.brokered else None
                port = server.add_secure_port(
                    address, grpc_server_credentials(self.options.ssl, current)
                )
            else:
                port = server.add_insecure_port(address)
        except RuntimeError:  # grpcio's "Failed to bind to address"
            raise SealserveError(
                f"cannot serve gRPC on {address}: the address is in use or not available",
                code=Code.UNAVAILABLE,
            ) from None
        server.start()
        self._grpc, self.grpc_port = server, port

    async def _start_rest(self) -> None:
        monitoring = self.options.monitoring
        app = rest.build_app(
            self.dataplane,
            self.options.rest,
            metrics=self.metrics,
            metrics_path=monitoring.path if monitoring.enable else None,
            draining=lambda: self._draining,
            budget=self.request_budget,
        )
        if self.options.attested is not None:
            app.router.add_get(
                attested_identity.REST_PATH, attested_identity.rest_handler(self.options.attested)
            )
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, **rest.runner_settings(self.options.rest)
        )
        await runner.setup()
        ssl_context = server_ssl_context(self.options.ssl) if self.options.ssl else None
        if ssl_context is not None and self.options.brokered is not None:
            self.options.brokered.add_listener(
                functools.partial(reload_server_certificate, ssl_context)
            )
        # TLS: a site whose failed handshakes still send their alert ("certificate required")
        site = (web.TCPSite if ssl_context is None else AlertingTLSSite)(
            runner, self.options.bind_address, self.options.rest_port, ssl_context=ssl_context
        )
        await site.start()
        self._rest = runner
        self.rest_port = runner.addresses[0][1]

    def _models_changed(self, loop: asyncio.AbstractEventLoop) -> None:
        """Manager listener (any thread): names for metrics, and wake the health follower."""
        if self.metrics is not None:
            self.metrics.admit_models(self.manager.model_names())
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody left to tell
            loop.call_soon_threadsafe(self._health_changed.set)

    async def _follow_readiness(self, servicer: health.HealthServicer) -> None:
        """Keep grpc.health.v1 in step with `manager.ready()`. One task applies every change
        in turn, reading readiness afresh each time, so the last state written is current."""
        while True:
            await self._health_changed.wait()
            self._health_changed.clear()
            grpc_service.set_health(servicer, self.manager.ready())

    async def _watch_model_config(self) -> None:
        """Reload the models when the config file changes (a bad file keeps the old list).
        The first poll compares the file with the models the server started with, not with
        the file as it then is: an edit made while the server started is applied too."""
        path = self.options.model_config_file
        assert path is not None
        last: str | None = None
        while True:
            await asyncio.sleep(self.options.model_config_poll_seconds)
            text = _read_quietly(path)
            if text is None or text == last:
                continue
            first, last = last is None, text
            try:
                configs = parse_model_config_text(text, path)
                if first and configs == self.options.models:
                    continue
                # off the loop and the inference threads; the loads go on in the background
                reload = functools.partial(self.manager.reload, configs, wait=False)
                await _on_daemon_thread(reload, "sealserve-reload")
                log.info("reloaded %s: serving %s", path, ", ".join(self.manager.model_names()))
            except SealserveError as exc:
                log.error("model config %s not applied: %s", path, exc)

    async def stop(self) -> None:
        if self._config_watch is not None:
            self._config_watch.cancel()
        self._draining = True  # readiness off first: load balancers stop sending
        if self._health_watch is not None:
            self._health_watch.cancel()
        if self._health is not None:
            self._health.enter_graceful_shutdown()
        grace = self.options.shutdown_grace_seconds
        if self._grpc is not None:
            stopped = self._grpc.stop(grace)  # a threading.Event, set once calls have ended
            await asyncio.get_running_loop().run_in_executor(None, stopped.wait)
        self._deliveries.close()
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
        # a signal during start-up (loads still waiting for a key broker) stops at once
        signalled = asyncio.create_task(self._stopping.wait())
        started = False
        try:  # a failed start (e.g. a port in use) still stops what did start
            starting = asyncio.create_task(self.start())
            await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                log.info("stop requested during start-up: not waiting for the model loads")
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
            else:
                starting.result()  # a failed start raises here
                started = True
                await signalled
        finally:
            signalled.cancel()
            # a failed start is not a shutdown: its error, said by the caller, is the news
            if started or self._stopping.is_set():
                log.info("shutting down")
            await self.stop()


async def _on_daemon_thread(work: Callable[[], T], name: str) -> T:
    """`work()` on a daemon thread of its own, awaited (unlike the default executor's
    threads, it cannot hold up the interpreter's exit if it never returns)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # the awaiting task was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = work(), None
        except BaseException as exc:  # handed to the awaiting task
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


def grpc_threads(batching: BatchingOptions | None) -> int:
    """Default gRPC handler threads: one per CPU, as each handler runs its request in
    Python (more threads only contend for the GIL: on 2 cores, 8 threads cut half_plus_two's
    requests/s by a third); with batching, enough more to wait for two full batches, one
    running and the next forming (started only while requests wait: `HandlerPool`)."""
    cpus = os.cpu_count() or 1
    if batching is None:
        return cpus
    return cpus + min(2 * batching.max_batch_size, MAX_BATCH_WAITERS)


def _read_quietly(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _configure_tensorflow(options: ServerOptions) -> None:
    """Apply the thread settings if TensorFlow has not started yet, and start it now if a
    model of the start's config runs on it: before the loads and the ports, while no other
    thread logs. A server whose models all run on OpenVINO starts it only if one needs it
    later (a signature that falls back, a reload adding a TensorFlow model), with the same
    settings."""
    if not configure_threads(options.intra_op_threads, options.inter_op_threads):
        log.warning("TensorFlow had already started: its thread pool sizes are unchanged")
    if any(model.runtime.platform != OPENVINO for model in options.models):
        import_tensorflow()
