"""The data plane: requests on plain values, shared by the REST and gRPC adapters.

A request names a model (and optionally a version or label) and a signature; `resolve` turns
that into a handle to one loaded version and its signature (a `ServableHandle` the adapter
holds, `with`, for the whole request; work that may outlive the request, a batch or a thread,
holds a share of it), and `predict` runs it on numpy
arrays: from the event loop (REST) in the inference thread pool, except small requests for
quick signatures, which cost less than the trip to a thread; from a gRPC handler thread in
that thread (`predict_blocking`). The adapters only convert their wire formats to and from
these values. Thread and async safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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
from sealserve.serving.servable import Servable
from sealserve.serving.signatures import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    REGRESS_METHOD,
    SignatureInfo,
)

T = TypeVar("T")
# Requests (and outputs) up to this size are decoded (encoded) on the event loop: a few KiB
# of JSON take tens of µs, less than a trip to a thread.
INLINE_MAX_BYTES = 16 << 10
Classifications = list[list[tuple[str, float]]]  # per example: (label, score) per class


@dataclass(frozen=True)
class ModelSpec:
    name: str
    version: int | None = None
    label: str | None = None
    signature_name: str = ""


@dataclass(frozen=True)
class PredictCall:
    """A decoded Predict request; `context` is the adapter's own (e.g. the REST format)."""

    signature_name: str
    inputs: dict[str, np.ndarray]
    output_filter: tuple[str, ...] = ()
    context: object = None


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


class DataPlane:
    def __init__(
        self, manager: ModelManager, threads: int = 8, batcher: BatchScheduler | None = None
    ) -> None:
        self.manager = manager
        self.batcher = batcher
        self._executor = ThreadPoolExecutor(threads, "sealserve-infer")
        self._batches_soon: set[tuple[Servable, str]] = set()  # queues the event loop will run

    def handle(self, spec: ModelSpec) -> ServableHandle:
        """A handle to the version `spec` names; release it (`with`) when the request ends."""
        if not spec.name:
            raise InvalidArgument("ModelSpec has no name specified.")
        return self.manager.handle(spec.name, spec.version, spec.label)

    def resolve(self, spec: ModelSpec) -> Resolved:
        handle = self.handle(spec)
        key = spec.signature_name or DEFAULT_SIGNATURE
        try:
            return Resolved(handle, key, handle.servable.signature(key))
        except BaseException:
            handle.release()
            raise

    async def predict(
        self,
        handle: ServableHandle,
        decode: Callable[[], PredictCall],
        encode: Callable[[PredictCall, dict[str, np.ndarray]], T],
        request_bytes: int,
    ) -> T:
        """Decode, run and encode one Predict request of `request_bytes` without blocking the
        event loop for long.

        A large request is decoded, run and encoded in one trip to the inference pool. A
        small one is decoded on the event loop, and run there too when its signature is
        quick (`Servable.quick`): a trip to a thread costs about 80 µs of CPU and two GIL
        handoffs, more than such work itself. With batching, the decoded request waits in
        its version's batch queue without holding a thread, so a batch can gather far more
        requests than there are threads."""
        servable = handle.servable
        if request_bytes > INLINE_MAX_BYTES:
            if self.batcher is None:
                return await self.call(
                    lambda: self.predict_blocking(handle, decode, encode), hold=handle
                )
            call = await self.call(decode)
        else:
            call = decode()
        quick = servable.quick(call.signature_name)
        if self.batcher is not None:
            # a quick signature's batch is run by the event loop once this round of
            # requests has been decoded: no trip to a batch thread and back
            future, wanted = self._submit(handle, call, wake_threads=not quick)
            if quick:
                self._run_batch_soon(servable, call.signature_name)
            batch_outputs = await asyncio.wrap_future(future)
            outputs = {alias: batch_outputs[alias] for alias in wanted}
        elif quick:
            outputs = servable.run(call.signature_name, call.inputs, call.output_filter)
        else:
            outputs = await self.call(
                lambda: servable.run(call.signature_name, call.inputs, call.output_filter),
                hold=handle,
            )
        if sum(array.nbytes for array in outputs.values()) <= INLINE_MAX_BYTES:
            return encode(call, outputs)
        return await self.call(lambda: encode(call, outputs))

    def predict_blocking(
        self,
        handle: ServableHandle,
        decode: Callable[[], PredictCall],
        encode: Callable[[PredictCall, dict[str, np.ndarray]], T],
    ) -> T:
        """`predict` in the caller's own thread (gRPC's handler threads): with batching, the
        thread waits for its batch."""
        servable = handle.servable
        call = decode()
        if self.batcher is None:
            outputs = servable.run(call.signature_name, call.inputs, call.output_filter)
        else:
            # quick: this thread runs whatever batch is ready, its own request's or one
            # that other threads' requests formed meanwhile, rather than a batch thread
            quick = servable.quick(call.signature_name)
            future, wanted = self._submit(handle, call, wake_threads=not quick)
            if quick:
                self.batcher.run_ready(servable, call.signature_name)
            batch_outputs = future.result()
            outputs = {alias: batch_outputs[alias] for alias in wanted}
        return encode(call, outputs)

    def _submit(
        self, handle: ServableHandle, call: PredictCall, wake_threads: bool
    ) -> tuple[Future[dict[str, np.ndarray]], Sequence[str]]:
        """Queue a request for batching, checked first (a bad one must not spoil a batch);
        returns the batch's future and the outputs this request asked for. The queued task
        holds a share of the handle until its batch has run, even if the request is gone."""
        assert self.batcher is not None
        servable = handle.servable
        wanted = servable.check_request(call.signature_name, call.inputs, call.output_filter)
        shared = handle.share()
        try:
            future = self.batcher.submit(servable, call.signature_name, call.inputs, wake_threads)
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

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        if not name:
            raise InvalidArgument("ModelSpec has no name specified.")
        return self.manager.status(name, version)

    async def call(self, work: Callable[[], T], hold: ServableHandle | None = None) -> T:
        """Run blocking work (decoding, TensorFlow, encoding) in the inference pool; with
        `hold`, a share of that handle is kept until the work has ended (or was cancelled
        before it started), even if the awaiting request is cancelled meanwhile."""
        if hold is None:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work)
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
