"""The data plane: requests on plain values, shared by the REST and gRPC adapters.

A request names a model (and optionally a version or label) and a signature; `resolve` turns
that into a handle to one loaded version and its signature, `run` executes it on numpy arrays
in the inference thread pool, so the event loop never blocks on TensorFlow. The adapters only
convert their wire formats to and from these values. Thread and async safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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
from sealserve.serving.manager import ModelManager, VersionStatus
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
class PredictCall:
    """A decoded Predict request; `context` is the adapter's own (e.g. the REST format)."""

    signature_name: str
    inputs: dict[str, np.ndarray]
    output_filter: tuple[str, ...] = ()
    context: object = None


@dataclass(frozen=True)
class Resolved:
    """One request's model version and signature, fixed for the whole request."""

    servable: Servable
    signature_name: str
    signature: SignatureInfo


class DataPlane:
    def __init__(
        self, manager: ModelManager, threads: int = 8, batcher: BatchScheduler | None = None
    ) -> None:
        self.manager = manager
        self.batcher = batcher
        self._executor = ThreadPoolExecutor(threads, "sealserve-infer")

    def servable(self, spec: ModelSpec) -> Servable:
        if not spec.name:
            raise InvalidArgument("ModelSpec has no name specified.")
        return self.manager.servable(spec.name, spec.version, spec.label)

    def resolve(self, spec: ModelSpec) -> Resolved:
        servable = self.servable(spec)
        key = spec.signature_name or DEFAULT_SIGNATURE
        return Resolved(servable, key, servable.signature(key))

    async def predict(
        self,
        servable: Servable,
        decode: Callable[[], PredictCall],
        encode: Callable[[PredictCall, dict[str, np.ndarray]], T],
    ) -> T:
        """Decode, run and encode one Predict request off the event loop.

        Without batching, all three happen in one trip to the inference pool. With it, the
        decoded request waits in its version's batch queue without holding a thread, so a
        batch can gather far more requests than there are threads."""
        if self.batcher is None:

            def work() -> T:
                call = decode()
                outputs = servable.run(call.signature_name, call.inputs, call.output_filter)
                return encode(call, outputs)

            return await self.call(work)
        call = await self.call(decode)
        wanted = servable.check_request(call.signature_name, call.inputs, call.output_filter)
        future = self.batcher.submit(servable, call.signature_name, call.inputs)
        outputs = await asyncio.wrap_future(future)
        selected = {alias: outputs[alias] for alias in wanted}
        return await self.call(lambda: encode(call, selected))

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

    async def call(self, work: Callable[[], T]) -> T:
        """Run blocking work (decoding, TensorFlow, encoding) in the inference pool."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
