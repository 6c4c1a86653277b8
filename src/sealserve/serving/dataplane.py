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
class Resolved:
    """One request's model version and signature, fixed for the whole request."""

    servable: Servable
    signature_name: str
    signature: SignatureInfo


class DataPlane:
    def __init__(self, manager: ModelManager, threads: int = 8) -> None:
        self.manager = manager
        self._executor = ThreadPoolExecutor(threads, "sealserve-infer")

    def servable(self, spec: ModelSpec) -> Servable:
        if not spec.name:
            raise InvalidArgument("ModelSpec has no name specified.")
        return self.manager.servable(spec.name, spec.version, spec.label)

    def resolve(self, spec: ModelSpec) -> Resolved:
        servable = self.servable(spec)
        key = spec.signature_name or DEFAULT_SIGNATURE
        return Resolved(servable, key, servable.signature(key))

    def predict(
        self, resolved: Resolved, inputs: dict[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> dict[str, np.ndarray]:
        """Run the resolved signature (blocking: call it through `call`)."""
        return resolved.servable.run(resolved.signature_name, inputs, output_filter)

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
        self._executor.shutdown(wait=False, cancel_futures=True)
