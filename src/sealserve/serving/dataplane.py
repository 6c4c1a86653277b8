"""The data plane: requests on plain values, shared by the REST and gRPC adapters.

A request names a model (and optionally a version or label) and a signature; `resolve` turns
that into one loaded version and its signature (one lookup for both APIs; a `Resolved` the
adapter holds, `with`, for the whole request: it releases the version's `ServableHandle`;
work that may outlive the request, a batch or a thread, holds a share of it), and `predict`,
`classify` and `regress` run it on plain values: numpy arrays by alias in and out, serialized
tf.Examples in, classes/scores or regressions out. From the event loop (REST) a run goes to
the inference thread pool, except for quick signatures, which cost less than the trip to a
thread; from a gRPC handler thread it runs in that thread (`*_blocking`, `classify`,
`regress`). The adapters decode their wire formats into these values and encode the results:
the data plane calls nothing of theirs. Thread and async safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from sealserve.errors import InvalidArgument
from sealserve.serving.batching import BatchScheduler
from sealserve.serving.inference import (
    check_signature,
    classification,
    regression,
    run_inputs,
)
from sealserve.serving.manager import ModelManager, ServableHandle, VersionStatus
from sealserve.serving.model_config import ModelConfig
from sealserve.serving.servable import Servable
from sealserve.serving.signatures import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    REGRESS_METHOD,
    SignatureInfo,
)

T = TypeVar("T")
Classifications = list[list[tuple[str, float]]]  # per example: (label, score) per class


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: int | None = None
    label: str | None = None
    signature_name: str = ""


@dataclass(frozen=True)
class Resolved:
    """One request's model version and signature, fixed for the whole request; a context
    manager that releases the version's handle."""

    handle: ServableHandle
    signature_name: str
    signature: SignatureInfo

    @property
    def servable(self) -> Servable:
        return self.handle.servable

    def __enter__(self) -> Resolved:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.release()


Outputs = dict[str, np.ndarray]


class DataPlane:
    def __init__(
        self, manager: ModelManager, threads: int = 8, batcher: BatchScheduler | None = None
    ) -> None:
        self.manager = manager
        self.batcher = batcher
        self._executor = ThreadPoolExecutor(threads, "sealserve-infer")
        self._batches_soon: set[tuple[Servable, str]] = set()  # queues the event loop will run

    def resolve(self, spec: ModelSpec) -> Resolved:
        """The one lookup of both APIs: model, version or label, then signature
        (FAILED_PRECONDITION `Serving signature key "s" not found.` when it has none)."""
        handle = self.handle(spec)
        try:
            return self.resolve_signature(handle, spec.signature_name)
        except BaseException:
            handle.release()
            raise

    @staticmethod
    def resolve_signature(handle: ServableHandle, signature_name: str) -> Resolved:
        """`resolve`'s second step, for a request that names its signature in a body read
        after the version was looked up (REST). The Resolved releases `handle` when done
        (the caller releases it itself if this raises)."""
        key = signature_name or DEFAULT_SIGNATURE
        return Resolved(handle, key, handle.servable.signature(key))

    def handle(self, spec: ModelSpec) -> ServableHandle:
        """A handle to the version `spec` names; release it (`with`) when the request ends."""
        if not spec.name:
            raise InvalidArgument("ModelSpec has no name specified.")
        return self.manager.handle(spec.name, spec.version, spec.label)

    async def predict(
        self, resolved: Resolved, inputs: dict[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> Outputs:
        """Run one Predict request from the event loop without blocking it for long.

        A quick signature (`Servable.quick`) runs on the event loop itself: a trip to a
        thread costs about 80 µs of CPU and two GIL handoffs, more than such a run. Others
        run in the inference pool. With batching, the request waits in its version's batch
        queue without holding a thread, so a batch can gather far more requests than there
        are threads; a quick signature's batch is run by the event loop once this round of
        requests has been queued."""
        servable, key = resolved.servable, resolved.signature_name
        quick = servable.quick(key)
        if self.batcher is not None:
            future, wanted = self._submit(resolved.handle, key, inputs, output_filter, not quick)
            if quick:
                self._run_batch_soon(servable, key)
            batch_outputs = await asyncio.wrap_future(future)
            return {alias: batch_outputs[alias] for alias in wanted}
        if quick:
            return servable.run(key, inputs, output_filter)
        return await self._call(
            lambda: servable.run(key, inputs, output_filter), hold=resolved.handle
        )

    def predict_blocking(
        self,
        resolved: Resolved,
        inputs: dict[str, np.ndarray],
        output_filter: Sequence[str] = (),
        waiting: Callable[[], AbstractContextManager[object]] = nullcontext,
        may_wait: bool = True,
    ) -> Outputs:
        """`predict` in the caller's own thread (gRPC's handler threads): with batching, the
        thread waits for its batch, unless the signature is quick.

        A quick signature's request is checked as a batched one is, then run at once in
        this thread: a handler thread that waits for a batch costs a wake-up and two GIL
        hand-offs (measured on half_plus_two: 576 µs of server CPU per request batched
        against 407 µs run at once), more than merging quick runs can save. REST merges
        quick runs on the event loop instead, where waiting costs no thread. The wait for a
        batch happens inside `waiting()` (the thread pool's: see `handler_pool`); a caller that
        must not wait (`may_wait=False`: grpc's poller thread, see `grpc_inline`) has its
        request run at once."""
        servable, key = resolved.servable, resolved.signature_name
        if self.batcher is None:
            return servable.run(key, inputs, output_filter)
        if servable.quick(key) or not may_wait:
            self.batcher.check_task(inputs)
            return servable.run(key, inputs, output_filter)
        future, wanted = self._submit(resolved.handle, key, inputs, output_filter, True)
        with waiting():
            batch_outputs = future.result()
        return {alias: batch_outputs[alias] for alias in wanted}

    def _submit(
        self,
        handle: ServableHandle,
        key: str,
        inputs: dict[str, np.ndarray],
        output_filter: Sequence[str],
        wake_threads: bool,
    ) -> tuple[Future[Outputs], Sequence[str]]:
        """Queue a request for batching, checked first (a bad one must not spoil a batch);
        returns the batch's future and the outputs this request asked for. The queued task
        holds a share of the handle until its batch has run, even if the request is gone."""
        assert self.batcher is not None
        servable = handle.servable
        wanted = servable.check_request(key, inputs, output_filter)
        shared = handle.share()
        try:
            future = self.batcher.submit(servable, key, inputs, wake_threads)
        except BaseException:
            shared.release()
            raise
        future.add_done_callback(lambda _: shared.release())
        return future, wanted

    def _run_batch_soon(self, servable: Servable, signature: str) -> None:
        """Have the event loop run the ready batches of this queue once the requests it
        is handling now have been queued (once per queue and round)."""
        key = (servable, signature)
        if key in self._batches_soon:
            return
        self._batches_soon.add(key)

        def run() -> None:
            self._batches_soon.discard(key)
            assert self.batcher is not None
            self.batcher.run_ready(servable, signature)

        asyncio.get_running_loop().call_soon(run)

    async def classify_async(
        self, resolved: Resolved, serialized: Sequence[bytes]
    ) -> Classifications:
        return await self._call(lambda: self.classify(resolved, serialized), resolved.handle)

    async def regress_async(self, resolved: Resolved, serialized: Sequence[bytes]) -> list[float]:
        return await self._call(lambda: self.regress(resolved, serialized), resolved.handle)

    def classify(self, resolved: Resolved, serialized: Sequence[bytes]) -> Classifications:
        """Run a classification signature on serialized tf.Examples (blocking)."""
        check_signature(resolved.signature, CLASSIFY_METHOD, resolved.signature_name)
        return classification(
            resolved.servable.run(resolved.signature_name, run_inputs(serialized))
        )

    def regress(self, resolved: Resolved, serialized: Sequence[bytes]) -> list[float]:
        """Run a regression signature on serialized tf.Examples (blocking)."""
        check_signature(resolved.signature, REGRESS_METHOD, resolved.signature_name)
        return regression(resolved.servable.run(resolved.signature_name, run_inputs(serialized)))

    def ready(self) -> bool:
        """Every configured model has an available version (readiness probes)."""
        return self.manager.ready()

    def not_ready(self) -> dict[str, list[VersionStatus]]:
        """The versions of models that are not ready, by model (why a probe says 503)."""
        return self.manager.not_ready()

    def reload(self, configs: list[ModelConfig]) -> None:
        """Replace the model list (ReloadConfigRequest)."""
        self.manager.reload(configs)

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        if not name:
            raise InvalidArgument("ModelSpec has no name specified.")
        return self.manager.status(name, version)

    async def _call(self, work: Callable[[], T], hold: ServableHandle) -> T:
        """Run blocking work (TensorFlow) in the inference pool; a share of `hold` is kept
        until the work has ended (or was cancelled before it started), even if the awaiting
        request is cancelled meanwhile."""
        shared = hold.share()
        try:
            future = self._executor.submit(work)
        except BaseException:
            shared.release()
            raise
        future.add_done_callback(lambda _: shared.release())
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
