"""How much request memory the server holds at once: a cap per request and a server-wide
budget of bytes in flight.

A gRPC request's cost is counted before its tensors are decoded (from the declared shapes,
checked against the bytes on the wire by `tensor_proto.decoded_bytes`), so an oversized or
over-subscribed request is refused with RESOURCE_EXHAUSTED before it allocates anything; the
reservation is held until its response is built and released when the request ends. A REST
request draws on the same budget: its body as it arrives, then bounds of what parsing its
JSON and writing its answer hold (`rest_json.parse_cost`, `*_response_cost`). Refusing
at once rather than waiting keeps a flood of large requests from queueing memory (and
threads) behind each other: the client retries, as for TF Serving's full batch queues.
Thread safe.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from sealserve.errors import Code, SealserveError


class ResourceExhausted(SealserveError):
    code = Code.RESOURCE_EXHAUSTED


class OverBudget(ResourceExhausted):
    """A request that alone needs more than the whole in-flight budget: retrying cannot help
    (REST answers 413, not 429)."""


@dataclass(frozen=True)
class BudgetOptions:
    max_request_bytes: int = 512 << 20  # one request's decoded inputs (and wire bytes)
    max_in_flight_bytes: int = 2 << 30  # all requests being handled at once


class RequestBudget:
    def __init__(self, options: BudgetOptions = BudgetOptions()) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def reserve(self, nbytes: int) -> Reservation:
        """Hold `nbytes` for the duration of a `with` block on the reservation returned
        (more may be added with `grow`); everything it holds is given back at the end."""
        if nbytes > self.options.max_request_bytes:
            raise ResourceExhausted(
                f"request needs {nbytes} bytes, more than the {self.options.max_request_bytes} "
                "allowed per request"
            )
        reservation = Reservation(self)
        reservation.grow(nbytes)
        return reservation

    def _take(self, nbytes: int) -> None:
        with self._lock:
            if self._in_flight + nbytes > self.options.max_in_flight_bytes and nbytes > 0:
                raise ResourceExhausted(
                    f"server busy: {self._in_flight} bytes of requests in flight, a request of "
                    f"{nbytes} more would exceed {self.options.max_in_flight_bytes}; retry later"
                )
            self._in_flight += nbytes

    def _give_back(self, nbytes: int) -> None:
        with self._lock:
            self._in_flight -= nbytes


class Reservation:
    """One request's share of the budget."""

    __slots__ = ("_budget", "held")

    def __init__(self, budget: RequestBudget) -> None:
        self._budget = budget
        self.held = 0

    def grow(self, nbytes: int) -> None:
        """Add `nbytes` (e.g. the response about to be built); RESOURCE_EXHAUSTED if the
        server's budget cannot take them."""
        if not nbytes:
            return
        limit = self._budget.options.max_in_flight_bytes
        if self.held + nbytes > limit:
            raise OverBudget(
                f"request needs {self.held + nbytes} bytes, more than the {limit} bytes the "
                "server holds for all requests at once"
            )
        self._budget._take(nbytes)
        self.held += nbytes

    def split(self, nbytes: int) -> Reservation:
        """A new reservation holding `nbytes` of this one's (which no longer holds them): a
        part that outlives the rest, as an answer its client has yet to take."""
        if not 0 <= nbytes <= self.held:
            raise ValueError(f"cannot split {nbytes} bytes off a reservation of {self.held}")
        part = Reservation(self._budget)
        part.held, self.held = nbytes, self.held - nbytes
        return part

    def release(self) -> None:
        held, self.held = self.held, 0
        if held:
            self._budget._give_back(held)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
