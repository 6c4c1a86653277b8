"""HandlerPool: no more running threads than `runners` for calls that do not wait, and a
thread waiting for a batch lets queued calls start (else a batch that needs them never
fills). The waits below only bound a hang; nothing asserts how fast anything runs."""

from __future__ import annotations

import threading
import time

from sealserve.serving.handler_pool import HandlerPool

PREFIX = "test-handler-pool"


def pool_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(PREFIX))


def test_calls_that_do_not_wait_use_at_most_runners_threads():
    pool = HandlerPool(runners=2, max_workers=8, thread_name_prefix=PREFIX)
    release = threading.Event()
    try:
        calls = [pool.submit(release.wait, 30) for _ in range(12)]
        assert pool_threads() == 2  # the other ten wait in the queue, as in any pool
        release.set()
        assert all(call.result(30) for call in calls)
        assert pool_threads() == 2
    finally:
        release.set()
        pool.shutdown()


def test_a_thread_waiting_for_a_batch_lets_the_calls_that_fill_it_start():
    """One runner; each call waits (inside `waiting()`) until four calls have arrived, as
    requests wait for a batch of four: only a thread per waiting call lets all four run.
    Quick calls first, so that the pool's record of idle threads is stale."""
    pool = HandlerPool(runners=1, max_workers=8, thread_name_prefix=PREFIX)
    arrived = threading.Barrier(4)

    def batched() -> bool:
        with pool.waiting():
            arrived.wait(30)  # raises BrokenBarrierError if the batch never fills
        return True

    try:
        assert [pool.submit(int, 1).result(30) for _ in range(5)] == [1] * 5
        calls = [pool.submit(batched) for _ in range(4)]
        assert [call.result(30) for call in calls] == [True] * 4
        assert pool_threads() <= 1 + 4  # the runner, and at most one per waiting call
    finally:
        arrived.abort()
        pool.shutdown()


def test_threads_never_exceed_max_workers():
    pool = HandlerPool(runners=1, max_workers=3, thread_name_prefix=PREFIX)
    release = threading.Event()

    def waits() -> bool:
        with pool.waiting():
            return release.wait(30)

    try:
        calls = [pool.submit(waits) for _ in range(6)]
        deadline = time.monotonic() + 30  # each waiting call starts the next thread
        while pool_threads() < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool_threads() == 3  # the rest wait in the queue until a thread is free
        release.set()
        assert all(call.result(30) for call in calls)
    finally:
        release.set()
        pool.shutdown()


def test_threads_started_for_waits_retire_once_the_waits_are_over():
    """A burst of calls waiting for a batch starts a thread per wait; once the waits are
    over those threads end, so later calls that do not wait run on `runners` threads, not
    on every thread the burst left behind (a ThreadPoolExecutor keeps them all)."""
    pool = HandlerPool(runners=2, max_workers=8, thread_name_prefix=PREFIX)
    arrived = threading.Barrier(6)

    def batched() -> bool:
        with pool.waiting():
            arrived.wait(30)
        return True

    try:
        assert all(call.result(30) for call in [pool.submit(batched) for _ in range(6)])
        deadline = time.monotonic() + 30  # the threads take their tokens and end
        while pool_threads() > 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool_threads() == 2
        assert [pool.submit(int, 7).result(30) for _ in range(5)] == [7] * 5
    finally:
        arrived.abort()
        pool.shutdown()


def test_a_call_that_raises_gives_its_exception_and_the_pool_goes_on():
    pool = HandlerPool(runners=1, max_workers=2, thread_name_prefix=PREFIX)
    try:
        failed = pool.submit(int, "not a number")
        try:
            failed.result(30)
        except ValueError:
            pass
        else:
            raise AssertionError("the call's ValueError was lost")
        assert pool.submit(int, "3").result(30) == 3
    finally:
        pool.shutdown()
