"""gRPC answers held in the request budget until their client has taken them, and dropped if
it does not take them in time.

grpc sends an answer after its handler has returned. A client that stops reading (or reads
its socket but never grants HTTP/2 flow-control window) leaves the answer in grpc's buffers,
with its call, for as long as it likes: a few such clients asking for large answers held
memory far beyond the in-flight budget. So a large answer's bytes stay in the budget until
its call ends (`context.add_callback`), and one whose call has not ended `timeout` seconds
after it was ready is cancelled (the client sees CANCELLED), which frees it. (A client that
stopped reading its socket altogether cannot even be sent the cancellation: the server's
keepalive pings, with the same timeout, close its connection; see `keepalive_options`.)

Small answers are released with their handler, as before: grpc's per-call limit
(--grpc_max_concurrent_rpcs) bounds what they can hold, and the hot path of small Predicts
stays as it was. Thread safe.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

from sealserve.serving.request_budget import Reservation

log = logging.getLogger(__name__)

# answers below this many bytes are not followed (1024 calls, the default most, hold 64 MiB)
SMALL_ANSWER_BYTES = 64 << 10
SWEEP_SECONDS = 1.0  # an idle sweeper looks again this often
SEND_TIMEOUT_SECONDS = 60.0  # by default (--grpc_send_timeout_seconds)


def keepalive_options(timeout_seconds: float) -> list[tuple[str, int]]:
    """grpc server options that ping a connection with calls open after `timeout_seconds`
    without traffic, and close it if the ping is not answered within as long again: a client
    that stopped reading its socket never answers. (Idle connections are not pinged.)"""
    milliseconds = max(1, round(timeout_seconds * 1000))
    return [
        ("grpc.keepalive_time_ms", milliseconds),
        ("grpc.keepalive_timeout_ms", milliseconds),
        # what grpc (1.85) waits for a ping's answer, keepalive's included
        ("grpc.http2.ping_timeout_ms", milliseconds),
    ]


class _Delivery:
    __slots__ = ("context", "ended", "nbytes", "reservation")

    def __init__(self, context: Any, reservation: Reservation) -> None:
        self.context = context
        self.reservation = reservation
        self.nbytes = reservation.held
        self.ended = False

    def end(self) -> None:  # grpc calls this when the call ends, however it ends
        self.ended = True
        self.reservation.release()


class Deliveries:
    """The large answers of calls not yet ended, each cancelled `timeout` seconds after it
    was handed over (`hold`) unless its call has ended by then."""

    def __init__(self, timeout_seconds: float) -> None:
        self.timeout_seconds = timeout_seconds
        # (deadline, delivery) in the order handed over: every deadline is `timeout` on
        # from then, so the queue is in deadline order too
        self._queue: collections.deque[tuple[float, _Delivery]] = collections.deque()
        self._stopped = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def hold(self, context: Any, reservation: Reservation, answer_bytes: int) -> None:
        """Keep `answer_bytes` of `reservation` (moved out of it) until the call of
        `context` (a grpc.ServicerContext) ends; the rest stays with `reservation`. Called by
        a handler with its answer built, before it returns the answer."""
        if answer_bytes < SMALL_ANSWER_BYTES:
            return
        delivery = _Delivery(context, reservation.split(answer_bytes))
        if not context.add_callback(delivery.end):  # the call has ended already
            delivery.end()
            return
        self._queue.append((time.monotonic() + self.timeout_seconds, delivery))
        if self._sweeper is None:
            self._start_sweeper()

    def close(self) -> None:
        """Stop cancelling (the server is stopping: grpc ends every call)."""
        self._stopped.set()

    def _start_sweeper(self) -> None:
        with self._start_lock:
            if self._sweeper is None:
                self._sweeper = threading.Thread(
                    target=self._sweep, name="sealserve-grpc-deliveries", daemon=True
                )
                self._sweeper.start()

    def _sweep(self) -> None:
        while not self._stopped.is_set():
            if not self._queue:
                self._stopped.wait(SWEEP_SECONDS)
                continue
            deadline, delivery = self._queue[0]
            late = time.monotonic() - deadline
            if late < 0:
                self._stopped.wait(min(-late, SWEEP_SECONDS))
                continue
            self._queue.popleft()
            if not delivery.ended:
                log.info(
                    "gRPC: dropped an answer of %d bytes that %s had not taken within %g s",
                    delivery.nbytes,
                    delivery.context.peer(),
                    self.timeout_seconds,
                )
                delivery.context.cancel()


__all__ = ["SEND_TIMEOUT_SECONDS", "SMALL_ANSWER_BYTES", "Deliveries", "keepalive_options"]
