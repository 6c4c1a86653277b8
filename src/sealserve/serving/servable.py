"""A loaded model version: its signatures as plain values, and running them on numpy.

Built by the loader from one runner per signature (a `SessionBundle` callable, or a loaded
`tf.function`) and the SavedModel's own `SignatureDef`s (what TF Serving's metadata API
returns). `run` is thread safe: the runners may be called from several threads at once, and
do their work without the GIL.
TensorFlow's run errors are translated without importing TensorFlow: a servable whose
signatures all run on OpenVINO never starts its runtime.
`close()` (the manager's, once the version's last handle is released) closes what the
runners run on and drops them; a closed servable refuses runs with UNAVAILABLE.
An optional `run_observer` hears how long each successful run spent in TensorFlow (metrics);
the loader sets it once warmup is done, so warmup runs are not counted as serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from sealserve.errors import Code, FailedPrecondition, InvalidArgument, SealserveError
from sealserve.serving.signatures import (
    SignatureInfo,
    TensorInfo,
    check_aliases,
    check_output_filter,
)
from sealserve.serving.tensor_proto import data_type_name, data_type_string, dtype_name
from sealserve.serving.tensorflow_runtime import tensorflow_errors

log = logging.getLogger(__name__)

# (the signature's method name, seconds inside the runtime including the outputs' copy to
# numpy, the runtime's label: "TF" or "OpenVINO")
RunObserver = Callable[[str, float, str], None]
# One signature's runner: inputs by alias -> outputs (numpy) by alias; the flag says the
# signature's runs are quick (see `Servable.quick`)
Runner = Callable[[Mapping[str, np.ndarray], bool], dict[str, np.ndarray]]
QUICK_RUN_SECONDS = 200e-6  # see `quick`
FAST_RUN_DRIFT = 1.05  # the fastest recent run rises 5% with each slower run


def signature_infos(signature_defs: dict[str, Any]) -> dict[str, SignatureInfo]:
    """SignatureInfo values from `SignatureDef` protos."""

    def tensor(info: Any) -> TensorInfo:
        shape = None
        if not info.tensor_shape.unknown_rank:
            shape = tuple(int(d.size) for d in info.tensor_shape.dim)
        return TensorInfo(name=info.name, dtype=data_type_name(info.dtype), shape=shape)

    return {
        key: SignatureInfo(
            inputs={a: tensor(i) for a, i in sorted(sig.inputs.items())},
            outputs={a: tensor(o) for a, o in sorted(sig.outputs.items())},
            method_name=sig.method_name,
        )
        for key, sig in signature_defs.items()
    }


class Servable:
    """One loaded version of one model."""

    def __init__(
        self,
        name: str,
        version: int,
        runners: dict[str, Runner],
        signature_defs: dict[str, Any],
        resources: Any = None,
        bounded: frozenset[str] = frozenset(),
    ) -> None:
        """`bounded`: the signatures whose runs cost no more than their inputs' sizes say
        (`bounded_ops`), the only ones that may be `quick` (none unless said)."""
        self.name = name
        self.version = version
        self.signature_defs = signature_defs  # SignatureDef protos, for the metadata API
        self.signatures = signature_infos(signature_defs)
        self._runners = {key: run for key, run in runners.items() if key in self.signatures}
        self._resources = resources  # what the runners run on (a Session, variables)
        self._fast_run: dict[str, float] = {}  # per signature: its fastest recent run, s
        self._bounded = bounded
        self.run_observer: RunObserver | None = None
        self.runtime_labels: dict[str, str] = {}  # per signature, when not "TF"
        self._closed = False

    def close(self) -> None:
        """Close the Session (or drop the loaded functions) and every runner: the model's
        weights are freed with them. Idempotent."""
        self._closed = True
        resources, self._resources = self._resources, None
        self._runners = {}
        self._fast_run = {}
        self.run_observer = None
        close = getattr(resources, "close", None)
        if close is not None:
            close()

    @property
    def closed(self) -> bool:
        return self._closed

    def signature(self, key: str) -> SignatureInfo:
        try:
            return self.signatures[key]
        except KeyError:
            raise FailedPrecondition(f'Serving signature key "{key}" not found.') from None

    def run(
        self, key: str, inputs: dict[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> dict[str, np.ndarray]:
        """Run signature `key`; inputs must be exactly its inputs, with its dtypes."""
        wanted = self.check_request(key, inputs, output_filter)
        started = time.perf_counter()
        try:
            results = self._runners[key](inputs, self.quick(key))
        except tensorflow_errors() as exc:  # (none before TensorFlow starts: no TF runner)
            raise _tensorflow_error(exc) from None
        except (TypeError, ValueError) as exc:  # numpy could not make a tensor of an input
            raise InvalidArgument(_first_line(exc)) from None
        outputs = {alias: results[alias] for alias in wanted}
        elapsed = time.perf_counter() - started
        # The fastest recent run, drifting up with each slower one: wall times under load
        # include waits for the GIL, but some runs get none. Unlocked: a lost update
        # between racing threads only delays the estimate by a run.
        self._fast_run[key] = min(elapsed, self._fast_run.get(key, elapsed) * FAST_RUN_DRIFT)
        observer = self.run_observer
        if observer is not None:  # successful runs only, as TF Serving's runtime_latency
            observer(self.signatures[key].method_name, elapsed, self.runtime_labels.get(key, "TF"))
        return outputs

    def quick(self, key: str) -> bool:
        """Whether recent runs of signature `key` take under `QUICK_RUN_SECONDS` (False
        until it has run) and no input can make one take much longer (`bounded`): such runs
        may be made without a trip to a thread."""
        if key not in self._bounded:
            return False
        return self._fast_run.get(key, QUICK_RUN_SECONDS) < QUICK_RUN_SECONDS

    def check_request(
        self, key: str, inputs: dict[str, np.ndarray], output_filter: Sequence[str] = ()
    ) -> Sequence[str]:
        """TF Serving's checks before a run; returns the output aliases to answer with."""
        signature = self.signature(key)
        if self.closed:
            raise SealserveError(
                f"model {self.name} version {self.version} is unloaded", code=Code.UNAVAILABLE
            )
        if key not in self._runners:
            raise FailedPrecondition(f'Serving signature key "{key}" cannot be run.')
        check_aliases(signature, inputs)
        check_dtypes(signature, inputs)
        return check_output_filter(signature, output_filter)


def check_dtypes(signature: SignatureInfo, inputs: dict[str, np.ndarray]) -> None:
    """TensorFlow's own check of fed dtypes (a Session's call frame: "Expects arg[i] to be
    float but int32 is provided"), made before the run because a Session callable would
    convert numpy arrays silently. Shapes are left to the graph, as in TF Serving."""
    for position, (alias, info) in enumerate(signature.inputs.items()):
        array = inputs.get(alias)
        if array is None:
            continue
        got = dtype_name(array.dtype)
        if got != info.dtype:
            raise InvalidArgument(
                f"Expects arg[{position}] to be {data_type_string(info.dtype)} "
                f"but {data_type_string(got)} is provided"
            )


def _tensorflow_error(exc: Any) -> SealserveError:
    """A run's TensorFlow error as TF Serving reports it: the status code and message of the
    run (`Session::Run`'s status), e.g. INVALID_ARGUMENT "Incompatible shapes: ..."."""
    try:
        code = Code(exc.error_code)
    except ValueError:
        code = Code.UNKNOWN
    message = (getattr(exc, "message", None) or str(exc)).strip() or type(exc).__name__
    return SealserveError(message, code=code)


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
