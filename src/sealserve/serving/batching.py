"""Dynamic batching: concurrent Predict requests merged into one model run.

TF Serving's design (`batching/shared_batch_scheduler.h`, `batching_session.cc`), kept small:
one pool of `num_batch_threads` threads is shared by one queue per (model version, signature),
so REST and gRPC requests for the same version meet in the same queue. A queue's batch is
run when it is full (`max_batch_size` rows) or when its oldest request has waited
`batch_timeout_micros`. Inputs are concatenated along dimension 0, padded up to the next of
`allowed_batch_sizes` with copies of the first row, and every caller gets exactly its own
rows of each output back. A queue holding `max_enqueued_batches` batches refuses new requests
at once with UNAVAILABLE instead of letting them pile up.

Requests that cannot share a batch — a rank-0 input, or trailing dimensions that differ
without `pad_variable_length_inputs` — are never merged with each other: they run in their
own batch.

Queues belong to their version: they are kept in a `WeakKeyDictionary` keyed by the servable
and hold it only weakly, so an unloaded version's queues go with it and never keep its
weights alive; queued tasks hold the servable only until they have run (the data plane holds
a handle to the version for as long). Thread safe.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from sealserve.errors import Code, InvalidArgument, SealserveError
from sealserve.serving.servable import Servable

log = logging.getLogger(__name__)

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class BatchingOptions:
    """`--batching_parameters_file`, with TF Serving's defaults for omitted fields."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise InvalidArgument("max_batch_size must be positive")
        if self.num_batch_threads < 1:
            raise InvalidArgument("num_batch_threads must be positive")
        if self.max_enqueued_batches < 1:
            raise InvalidArgument("max_enqueued_batches must be positive")
        if self.batch_timeout_micros < 0:
            raise InvalidArgument("batch_timeout_micros must not be negative")
        sizes = self.allowed_batch_sizes
        if any(b <= a for a, b in itertools.pairwise(sizes)) or any(s < 1 for s in sizes):
            raise InvalidArgument("allowed_batch_sizes entries must be monotonically increasing")
        if sizes and sizes[-1] != self.max_batch_size:
            raise InvalidArgument("final entry in allowed_batch_sizes must equal max_batch_size")

    @classmethod
    def from_proto(cls, message: object) -> BatchingOptions:
        """From a `BatchingParameters` message (see `config_protos`)."""

        def wrapped(name: str, default: int) -> int:
            return int(getattr(message, name).value) if message.HasField(name) else default  # type: ignore[attr-defined]

        defaults = cls()
        return cls(
            max_batch_size=wrapped("max_batch_size", defaults.max_batch_size),
            batch_timeout_micros=wrapped("batch_timeout_micros", defaults.batch_timeout_micros),
            max_enqueued_batches=wrapped("max_enqueued_batches", defaults.max_enqueued_batches),
            num_batch_threads=wrapped("num_batch_threads", defaults.num_batch_threads),
            allowed_batch_sizes=tuple(message.allowed_batch_sizes),  # type: ignore[attr-defined]
            pad_variable_length_inputs=bool(message.pad_variable_length_inputs),  # type: ignore[attr-defined]
        )


@dataclass
class _Task:
    inputs: dict[str, np.ndarray]
    rows: int
    shape_key: tuple[object, ...] | None  # None: cannot be merged with other tasks
    future: Future[Outputs]
    enqueued: float
    servable: Servable  # until it has run


class _Queue:
    def __init__(self, servable: Servable, signature: str) -> None:
        self.name = servable.name  # no reference to the servable itself
        self.signature = signature
        self.tasks: deque[_Task] = deque()
        self.rows = 0


class BatchScheduler:
    """The shared batch threads and the per-(version, signature) queues."""

    def __init__(
        self,
        options: BatchingOptions,
        on_batch: Callable[[str, int], None] | None = None,
        on_queue_depth: Callable[[str, int], None] | None = None,
    ) -> None:
        self.options = options
        self._on_batch = on_batch
        self._on_queue_depth = on_queue_depth
        # per version (weakly: see the module docstring), its queues by signature
        self._queues: weakref.WeakKeyDictionary[Servable, dict[str, _Queue]] = (
            weakref.WeakKeyDictionary()
        )
        self._ready = threading.Condition()
        self.batches_run = 0  # model runs made (read by tests and metrics)
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"sealserve-batch-{i}", daemon=True)
            for i in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    # -- callers ---------------------------------------------------------------------------

    def submit(
        self,
        servable: Servable,
        signature: str,
        inputs: dict[str, np.ndarray],
        wake_threads: bool = True,
    ) -> Future[Outputs]:
        """Queue a request; its future holds all of the signature's outputs for its rows.
        Without `wake_threads`, the caller promises to call `run_ready` for this queue soon
        (the batch threads still take it on their next wake-up or timeout)."""
        rows, shape_key = self.check_task(inputs)
        future: Future[Outputs] = Future()
        with self._ready:
            if self._closed:
                raise SealserveError("the server is shutting down", code=Code.UNAVAILABLE)
            queue = self._queue(servable, signature)
            queued_batches = -(-(queue.rows + rows) // self.options.max_batch_size)
            if queued_batches > self.options.max_enqueued_batches:
                raise SealserveError(
                    "The batch scheduling queue to which this task was submitted is full",
                    code=Code.UNAVAILABLE,
                )
            queue.tasks.append(_Task(inputs, rows, shape_key, future, time.monotonic(), servable))
            queue.rows += rows
            self._report_depth(queue)
            if wake_threads:
                self._ready.notify()
        return future

    def check_task(self, inputs: dict[str, np.ndarray]) -> tuple[int, tuple[object, ...] | None]:
        """TF Serving's checks of a request under batching (equal 0th dimensions, at most
        `max_batch_size` rows), also for a request that is then run on its own; returns its
        rows and what must match for it to share a batch."""
        rows, shape_key = _batch_shape(inputs, self.options.pad_variable_length_inputs)
        if rows > self.options.max_batch_size:
            raise InvalidArgument(
                f"Task size {rows} is larger than maximum input batch size "
                f"{self.options.max_batch_size}"
            )
        return rows, shape_key

    def run_ready(self, servable: Servable, signature: str) -> None:
        """Run, in the caller's thread, the batches of one queue that are ready (full, or
        waited `batch_timeout_micros`); wake a batch thread for what is left. For quick
        signatures: the event loop runs the batch its requests just formed, with no trip to
        a batch thread and back."""
        while True:
            with self._ready:
                queue = self._queues.get(servable, {}).get(signature)
                if queue is None or self._closed:
                    return
                picked = self._next_batch(only=queue)
                if picked is None:
                    if queue.tasks:  # not ready yet: the threads run it on its timeout
                        self._ready.notify()
                    return
                self.batches_run += 1
            self._run(*picked)

    def close(self) -> None:
        """Stop the threads; requests still queued fail with UNAVAILABLE."""
        with self._ready:
            self._closed = True
            for queue in self._all_queues():
                while queue.tasks:
                    queue.tasks.popleft().future.set_exception(
                        SealserveError("the server is shutting down", code=Code.UNAVAILABLE)
                    )
                queue.rows = 0
            self._ready.notify_all()

    def _queue(self, servable: Servable, signature: str) -> _Queue:
        queues = self._queues.get(servable)
        if queues is None:
            queues = self._queues[servable] = {}
        queue = queues.get(signature)
        if queue is None:
            queue = queues[signature] = _Queue(servable, signature)
        return queue

    def forget(self, servable: Servable) -> None:
        """Drop a version's (empty) queues now rather than when it is collected."""
        with self._ready:
            self._queues.pop(servable, None)

    def _all_queues(self) -> list[_Queue]:
        return [q for queues in list(self._queues.values()) for q in queues.values()]

    # -- batch threads ---------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._ready:
                picked = self._next_batch()
                while picked is None:
                    if self._closed:
                        return
                    self._ready.wait(self._wait_seconds())
                    picked = self._next_batch()
                self.batches_run += 1
            queue, batch = picked
            self._run(queue, batch)

    def _next_batch(self, only: _Queue | None = None) -> tuple[_Queue, list[_Task]] | None:
        """The ready batch whose oldest request has waited longest, of any queue or of
        `only` (caller holds the lock)."""
        now = time.monotonic()
        timeout = self.options.batch_timeout_micros / 1e6
        ready = [
            q
            for q in (self._all_queues() if only is None else (only,))
            if q.tasks
            and (q.rows >= self.options.max_batch_size or now - q.tasks[0].enqueued >= timeout)
        ]
        if not ready:
            return None
        queue = min(ready, key=lambda q: q.tasks[0].enqueued)
        batch = [queue.tasks.popleft()]
        rows = batch[0].rows
        while queue.tasks and batch[0].shape_key is not None:
            task = queue.tasks[0]
            if (
                task.shape_key != batch[0].shape_key
                or rows + task.rows > self.options.max_batch_size
            ):
                break
            batch.append(queue.tasks.popleft())
            rows += task.rows
        queue.rows -= rows
        self._report_depth(queue)
        return queue, batch

    def _wait_seconds(self) -> float | None:
        pending = [q.tasks[0].enqueued for q in self._all_queues() if q.tasks]
        if not pending:
            return None
        deadline = min(pending) + self.options.batch_timeout_micros / 1e6
        return max(0.0, deadline - time.monotonic())

    def _run(self, queue: _Queue, batch: list[_Task]) -> None:
        servable = batch[0].servable
        try:
            rows = sum(task.rows for task in batch)
            padded = self._padded_size(rows)
            merged = merge_inputs(
                [task.inputs for task in batch], padded, self.options.pad_variable_length_inputs
            )
            if self._on_batch is not None:
                self._on_batch(queue.name, padded)
            outputs = servable.run(queue.signature, merged)
            for task, part in zip(
                batch, split_outputs(outputs, [t.rows for t in batch], padded), strict=True
            ):
                task.future.set_result(part)
        except BaseException as exc:  # every caller of the batch learns why it failed
            error = (
                exc
                if isinstance(exc, SealserveError)
                else SealserveError(
                    f"batch failed: {type(exc).__name__}: {exc}", code=Code.INTERNAL
                )
            )
            if not isinstance(exc, SealserveError):
                log.exception("batch for %s failed", queue.name)
            for task in batch:
                if not task.future.done():
                    task.future.set_exception(error)
        finally:
            del servable
            batch.clear()  # the tasks (and their servable references) go now

    def _padded_size(self, rows: int) -> int:
        for size in self.options.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows

    def _report_depth(self, queue: _Queue) -> None:
        if self._on_queue_depth is not None:
            self._on_queue_depth(queue.name, queue.rows)


def _batch_shape(inputs: dict[str, np.ndarray], pad: bool) -> tuple[int, tuple[object, ...] | None]:
    """(rows, key of what must match for tasks to be merged; None if not mergeable)."""
    arrays = list(inputs.values())
    if not arrays or any(a.ndim == 0 for a in arrays):
        return 1, None
    rows = {a.shape[0] for a in arrays}
    if len(rows) != 1:
        raise InvalidArgument(
            "Batching session Run() input tensors must have equal 0th-dimension size"
        )
    key = tuple(
        (alias, a.dtype.str, a.ndim if pad else a.shape[1:]) for alias, a in sorted(inputs.items())
    )
    return rows.pop(), key


def merge_inputs(
    tasks: Sequence[dict[str, np.ndarray]], padded_rows: int, pad_variable_length: bool
) -> dict[str, np.ndarray]:
    """Concatenate each input along dimension 0, padded with copies of the first row."""
    merged = {}
    for alias in tasks[0]:
        parts = [task[alias] for task in tasks]
        if pad_variable_length and len({p.shape[1:] for p in parts}) > 1:
            parts = _pad_to_common_shape(parts)
        rows = sum(p.shape[0] for p in parts)
        if padded_rows > rows:
            parts.append(np.repeat(parts[0][:1], padded_rows - rows, axis=0))
        merged[alias] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
    return merged


def _pad_to_common_shape(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Pad trailing dimensions up to the largest, with each tensor's first element
    (TF Serving's pad_variable_length_inputs)."""
    target = tuple(max(sizes) for sizes in zip(*(p.shape[1:] for p in parts), strict=True))
    padded = []
    for part in parts:
        widths = [(0, 0)] + [(0, t - s) for s, t in zip(part.shape[1:], target, strict=True)]
        fill = part.flat[0] if part.size else 0
        padded.append(np.pad(part, widths, constant_values=fill))
    return padded


def split_outputs(outputs: Outputs, rows: Sequence[int], padded_rows: int) -> list[Outputs]:
    """Each task's own rows of every output (padding rows dropped)."""
    for alias, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != padded_rows:
            raise SealserveError(
                f"Batched output tensor's 0th dimension does not equal the sum of the 0th "
                f"dimension sizes of the input tensors (output {alias})",
                code=Code.INVALID_ARGUMENT,
            )
    parts: list[Outputs] = []
    start = 0
    for count in rows:
        parts.append({alias: array[start : start + count] for alias, array in outputs.items()})
        start += count
    return parts
