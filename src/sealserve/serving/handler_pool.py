"""gRPC's handler threads: a few run requests, more only while some wait for a batch.

grpc's thread-pool server runs each call in a thread of the executor it is given. With
batching, a handler thread waits for its batch, so the pool must be able to hold many more
threads than CPUs (one per request waiting for a batch), but threads that run Python at the
same time only contend for the GIL (on 2 cores, 8 such threads cut half_plus_two's rate by a
third). `HandlerPool` starts a thread for a new call only while calls are queued that no idle
thread will take and fewer than `runners` threads plus the ones waiting for a batch exist; a
thread that starts waiting (`waiting()`) lets another take a queued call, so a batch that
needs more requests than there are runners still fills. Calls that find no thread wait in
the queue, as in any thread pool.

Unlike a `ThreadPoolExecutor`, whose threads never end, the threads started for waits retire
once the waits are over (each finished wait posts a token that a surplus thread takes to
exit), so a burst of batched waits (or the first requests, before a quick signature is known
to be quick) does not leave the pool running calls on many threads for good.

Thread safe.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from queue import SimpleQueue
from typing import Any, TypeVar

T = TypeVar("T")

_RETIRE = object()  # a token: a surplus thread that takes it ends
_STOP = object()  # shutdown: every thread that takes it ends


class HandlerPool(Executor):
    """At most `max_workers` threads; `runners` of them for calls that do not wait."""

    def __init__(self, runners: int, max_workers: int, thread_name_prefix: str = "") -> None:
        self._max_workers = max(1, max_workers)
        self._runners = max(1, min(runners, self._max_workers))
        self._prefix = thread_name_prefix or "HandlerPool"
        self._names = itertools.count()
        self._queue: SimpleQueue[Any] = SimpleQueue()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._idle = 0  # threads blocked on the queue, or about to be
        self._pending = 0  # calls queued and not yet taken
        self._waiting = 0  # calls inside `waiting()`
        self._shutdown = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._pending += 1
            self._queue.put((future, fn, args, kwargs))
            self._start_thread_if_needed()
        return future

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Around a handler thread's wait for its batch: calls queued meanwhile get a
        thread of their own (up to `max_workers`), so they can join the batch."""
        with self._lock:
            self._waiting += 1
            self._start_thread_if_needed()
        try:
            yield
        finally:
            with self._lock:
                self._waiting -= 1
            self._queue.put(_RETIRE)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        if cancel_futures:
            self._cancel_queued()
        for _ in threads:
            self._queue.put(_STOP)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()

    def _start_thread_if_needed(self) -> None:  # under self._lock
        if self._pending <= self._idle:
            return  # an idle thread will take each queued call
        if len(self._threads) >= min(self._max_workers, self._runners + self._waiting):
            return  # the call waits in the queue for a thread that is not waiting
        thread = threading.Thread(
            target=self._work, name=f"{self._prefix}_{next(self._names)}", daemon=True
        )
        self._threads.add(thread)
        self._idle += 1  # it takes a call as soon as it runs
        thread.start()

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            item = self._queue.get()
            with self._lock:
                self._idle -= 1
                if item is _STOP or (
                    item is _RETIRE and len(self._threads) > self._runners + self._waiting
                ):
                    self._threads.discard(me)
                    return
                if item is not _RETIRE:
                    self._pending -= 1
            if item is not _RETIRE:
                self._run(*item)
            with self._lock:
                self._idle += 1

    @staticmethod
    def _run(future: Future[Any], fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # the caller's to see, as in ThreadPoolExecutor
            future.set_exception(exc)
        else:
            future.set_result(result)

    def _cancel_queued(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except Exception:  # queue.Empty
                return
            if isinstance(item, tuple):
                with self._lock:
                    self._pending -= 1
                item[0].cancel()
