"""Dynamic batching with a stand-in model: merging, padding, splitting, back-pressure."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

from sealserve.errors import Code, InvalidArgument, SealserveError
from sealserve.serving.batching import BatchingOptions, BatchScheduler
from sealserve.serving.config_protos import parse


class Doubler:
    """A 'model' y = 2x that records the batch sizes it ran."""

    name = "doubler"

    def __init__(self, gate: threading.Event | None = None, fail: bool = False) -> None:
        self.batch_rows: list[int] = []
        self.gate, self.fail = gate, fail

    def run(self, signature, inputs, output_filter=()):
        if self.gate is not None:
            self.gate.wait(10)
        self.batch_rows.append(len(inputs["x"]))
        if self.fail:
            raise SealserveError("model exploded", code=Code.INTERNAL)
        return {"y": inputs["x"] * 2, "n": np.arange(len(inputs["x"]))}


def occupy(scheduler: BatchScheduler, model: Doubler, x: np.ndarray) -> Future:
    """Keep the (one) batch thread busy inside the gated `model` with a first request, so
    that what is submitted next queues up, whatever the timing: tests assert what the
    scheduler does with a queue, never how fast threads happen to run."""
    first = scheduler.submit(model, "s", {"x": x})
    wait_until_taken(scheduler)
    return first


def wait_until_taken(scheduler: BatchScheduler, batches: int = 1) -> None:
    deadline = time.monotonic() + 10
    while scheduler.batches_run < batches:
        assert time.monotonic() < deadline, "the batch thread never took the request"
        time.sleep(0.001)


@pytest.fixture
def scheduler_for():
    made = []

    def make(**options):
        scheduler = BatchScheduler(BatchingOptions(**options))
        made.append(scheduler)
        return scheduler

    yield make
    for scheduler in made:
        scheduler.close()


def test_queued_requests_are_merged_and_each_gets_its_own_rows(scheduler_for):
    """While the batch thread is busy, 15 requests of 1 or 2 rows queue up; they then run
    as batches of at most 8 rows, taken in order (a batch closes before the request that
    would overflow it), and each caller gets exactly its own rows back."""
    model = Doubler(gate=threading.Event())
    scheduler = scheduler_for(max_batch_size=8, batch_timeout_micros=0, num_batch_threads=1)
    first = occupy(scheduler, model, np.zeros((1, 3), np.float32))
    rows = [1 + i % 2 for i in range(1, 16)]  # 2, 1, 2, 1, ...
    futures = [
        scheduler.submit(model, "s", {"x": np.full((n, 3), float(i), np.float32)})
        for i, n in enumerate(rows, start=1)
    ]
    model.gate.set()
    first.result(10)
    for i, (n, future) in enumerate(zip(rows, futures, strict=True), start=1):
        np.testing.assert_array_equal(future.result(10)["y"], np.full((n, 3), 2.0 * i))
    # 2+1+2+1+2 = 8 | 1+2+1+2+1 = 7 (the next 2 would make 9) | 2+1+2+1+2 = 8
    assert model.batch_rows == [1, 8, 7, 8]


def test_batches_are_padded_to_the_next_allowed_size(scheduler_for):
    model = Doubler(gate=threading.Event())
    scheduler = scheduler_for(
        max_batch_size=8, allowed_batch_sizes=(2, 4, 8), batch_timeout_micros=0, num_batch_threads=1
    )
    occupy(scheduler, model, np.array([[9.0]], np.float32))
    futures = [
        scheduler.submit(model, "s", {"x": np.array([[float(i)]], np.float32)}) for i in range(3)
    ]
    model.gate.set()
    outputs = [f.result(10) for f in futures]
    assert model.batch_rows == [2, 4]  # 1 row padded to 2; then 3 rows padded to 4
    assert [o["y"].tolist() for o in outputs] == [[[0.0]], [[2.0]], [[4.0]]]
    assert [o["n"].tolist() for o in outputs] == [[0], [1], [2]]  # padding row dropped


def test_a_full_queue_answers_unavailable_at_once(scheduler_for):
    gate = threading.Event()
    model = Doubler(gate=gate)
    scheduler = scheduler_for(max_batch_size=1, max_enqueued_batches=2, num_batch_threads=1)
    first = scheduler.submit(model, "s", {"x": np.zeros((1, 1))})
    wait_until_taken(scheduler)  # running (blocked on the gate), no longer queued
    queued = [scheduler.submit(model, "s", {"x": np.zeros((1, 1))}) for _ in range(2)]
    with pytest.raises(SealserveError) as raised:
        scheduler.submit(model, "s", {"x": np.zeros((1, 1))})
    assert raised.value.code == Code.UNAVAILABLE
    assert "queue to which this task was submitted is full" in str(raised.value)
    gate.set()
    for future in [first, *queued]:
        future.result(10)


def test_requests_larger_than_a_batch_are_refused(scheduler_for):
    scheduler = scheduler_for(max_batch_size=4)
    with pytest.raises(InvalidArgument, match="Task size 5 is larger than maximum input batch"):
        scheduler.submit(Doubler(), "s", {"x": np.zeros((5, 1))})


def test_different_shapes_are_not_merged_unless_padding_is_on(scheduler_for):
    for pad, expected_runs in ((False, 2), (True, 1)):
        model = Doubler(gate=threading.Event())
        scheduler = scheduler_for(
            max_batch_size=8,
            batch_timeout_micros=0,
            num_batch_threads=1,
            pad_variable_length_inputs=pad,
        )
        occupy(scheduler, model, np.ones((1, 2), np.float32))
        a = scheduler.submit(model, "s", {"x": np.ones((1, 2), np.float32)})
        b = scheduler.submit(model, "s", {"x": np.ones((1, 3), np.float32)})
        model.gate.set()
        assert a.result(10)["y"].shape[0] == 1 and b.result(10)["y"].shape[0] == 1
        assert len(model.batch_rows) == 1 + expected_runs  # after the first request's
    # padded with each tensor's first element: [1, 1] -> [1, 1, 1]
    assert a.result()["y"].tolist() == [[2.0, 2.0, 2.0]]


def test_a_failed_batch_fails_every_caller_in_it(scheduler_for):
    scheduler = scheduler_for(max_batch_size=4, batch_timeout_micros=50_000)
    model = Doubler(fail=True)
    futures = [scheduler.submit(model, "s", {"x": np.zeros((1, 1))}) for _ in range(3)]
    for future in futures:
        with pytest.raises(SealserveError, match="model exploded"):
            future.result(10)


def test_closing_fails_what_is_still_queued(scheduler_for):
    gate = threading.Event()
    scheduler = scheduler_for(max_batch_size=1, num_batch_threads=1)
    model = Doubler(gate=gate)
    running = scheduler.submit(model, "s", {"x": np.zeros((1, 1))})
    wait_until_taken(scheduler)
    waiting = scheduler.submit(model, "s", {"x": np.zeros((1, 1))})
    scheduler.close()
    gate.set()
    running.result(10)
    with pytest.raises(SealserveError) as raised:
        waiting.result(10)
    assert raised.value.code == Code.UNAVAILABLE


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(max_batch_size=0), "max_batch_size must be positive"),
        (dict(num_batch_threads=0), "num_batch_threads must be positive"),
        (dict(max_batch_size=8, allowed_batch_sizes=(4, 2, 8)), "monotonically increasing"),
        (dict(max_batch_size=8, allowed_batch_sizes=(2, 4)), "must equal max_batch_size"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(InvalidArgument, match=message):
        BatchingOptions(**options)


def test_options_from_tf_servings_batching_parameters_file():
    message = parse(
        "BatchingParameters",
        """
        max_batch_size { value: 8 }
        batch_timeout_micros { value: 2000 }
        num_batch_threads { value: 2 }
        allowed_batch_sizes: 4
        allowed_batch_sizes: 8
        pad_variable_length_inputs: true
    """,
        "batching.cfg",
    )
    options = BatchingOptions.from_proto(message)
    assert options == BatchingOptions(
        max_batch_size=8,
        batch_timeout_micros=2000,
        max_enqueued_batches=10,
        num_batch_threads=2,
        allowed_batch_sizes=(4, 8),
        pad_variable_length_inputs=True,
    )
    with pytest.raises(InvalidArgument, match="batching.cfg"):
        parse("BatchingParameters", "max_batch_size: 8", "batching.cfg")


class ThreadRecorder(Doubler):
    """A Doubler that also records which thread ran each batch."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[threading.Thread] = []

    def run(self, signature, inputs, output_filter=()):
        self.threads.append(threading.current_thread())
        return super().run(signature, inputs, output_filter)


def test_the_caller_runs_a_ready_batch_itself_without_waking_the_threads(scheduler_for):
    model = ThreadRecorder()
    scheduler = scheduler_for(max_batch_size=8, batch_timeout_micros=0, num_batch_threads=1)
    futures = [
        scheduler.submit(
            model, "serving_default", {"x": np.full((1, 2), float(i), np.float32)}, False
        )
        for i in range(3)
    ]
    scheduler.run_ready(model, "serving_default")
    assert model.batch_rows == [3]  # one run for the three requests
    assert model.threads == [threading.current_thread()]
    for i, future in enumerate(futures):
        np.testing.assert_array_equal(future.result(0)["y"], np.full((1, 2), 2.0 * i))


def test_a_batch_not_ready_for_the_caller_is_left_to_the_threads(scheduler_for):
    model = ThreadRecorder()
    # a timeout no test waits for: the batch becomes ready only when full
    scheduler = scheduler_for(max_batch_size=8, batch_timeout_micros=600_000_000)
    future = scheduler.submit(
        model, "serving_default", {"x": np.ones((1, 2), np.float32)}, wake_threads=False
    )
    scheduler.run_ready(model, "serving_default")  # not full, has not waited: left queued
    assert model.batch_rows == []
    rest = scheduler.submit(model, "serving_default", {"x": np.ones((7, 2), np.float32)})
    np.testing.assert_array_equal(future.result(10)["y"], np.full((1, 2), 2.0))
    rest.result(10)
    assert model.batch_rows == [8]  # full: run by a batch thread
    assert model.threads[0] is not threading.current_thread()
