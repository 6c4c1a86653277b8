"""gRPC's handler threads: a few run requests, more only while some wait for a batch.

grpc's thread-pool server runs each call in a thread of the executor it is given. With
batching, a handler thread waits for its batch, so the pool must be able to hold many more
threads than CPUs (one per request waiting for a batch), but threads that run Python at the
same time only contend for the GIL (on 2 cores, 8 such threads cut half_plus_two's rate by a
third). `HandlerPool` starts a thread for a new call only while fewer than `runners` threads
plus the ones waiting for a batch exist; a thread that starts waiting (`waiting()`) lets
another take a queued call, so a batch that needs more requests than there are runners
still fills. Calls that find no thread wait in the pool's queue, as in any thread pool.

Thread safe.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager


class HandlerPool(ThreadPoolExecutor):
    """At most `max_workers` threads; `runners` of them for calls that do not wait."""

    def __init__(self, runners: int, max_workers: int, thread_name_prefix: str = "") -> None:
        super().__init__(max_workers, thread_name_prefix)
        self._runners = max(1, min(runners, max_workers))
        self._waiting = 0
        self._waiting_lock = threading.Lock()

    def _adjust_thread_count(self) -> None:  # called by submit() under its lock
        if len(self._threads) >= self._runners + self._waiting:
            return  # the call waits in the queue for a thread that is not waiting
        if self._waiting:
            # The base class starts a thread only if it cannot claim an idle one, and its
            # idle count can be stale (its threads take queued calls without claiming):
            # with a thread waiting for a batch, a queued call must get a thread, so
            # start one (at worst one more than needed, within the bound above).
            while self._idle_semaphore.acquire(timeout=0):
                pass
        super()._adjust_thread_count()

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Around a handler thread's wait for its batch: calls queued meanwhile get a
        thread of their own (up to `max_workers`), so they can join the batch."""
        with self._waiting_lock:
            self._waiting += 1
        with self._shutdown_lock:  # as submit() does, around a possible new thread
            if not self._shutdown and not self._work_queue.empty():
                self._adjust_thread_count()
        try:
            yield
        finally:
            with self._waiting_lock:
                self._waiting -= 1
