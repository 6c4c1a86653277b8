"""Quick unary calls answered in grpc's poller thread, without a trip to a handler thread.

grpc's thread-pool server (`grpc.server`) runs one Python thread that polls the completion
queue and hands each call to a handler thread, which asks for the request message and waits
until the poller thread tells it the message is there. For a call whose work is a few tens
of microseconds (half_plus_two's Predict), those two hand-offs, each a thread wake-up and a
GIL hand-over, cost more than the work: measured on 2 cores, 420 µs of server CPU per
Predict against 300 µs when the poller thread answers it itself.

`InlineUnaryCalls` is the per-method executor grpc's server takes from a behaviour's
`experimental_thread_pool` attribute (see `inline_when`). Given a unary-unary call, it asks
for the request message from the poller thread, and when the message has arrived (in the
poller thread again) asks `place(request)` for the behaviour that answers it and whether to
run that right there, or in the handler pool as usual (a signature that is not quick, a
large request, anything that might wait). A behaviour run in the poller thread must never
block: every other call of the server waits meanwhile.

This relies on grpc's private server internals (checked for grpcio 1.66 to 1.85): the
function its server submits for a unary call, and the helpers that receive a message and
answer. `available()` checks that they are all there; a submission that does not look as
expected goes to the handler pool unchanged, so a grpcio that differs only loses speed.
Thread safe (grpc calls `submit` and the message callbacks from its poller thread).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

from grpc import _server
from grpc._cython import cygrpc

log = logging.getLogger(__name__)

Behavior = Callable[[Any, Any], Any]  # (request, grpc.ServicerContext) -> response
# (request) -> the behaviour that answers it, and whether it runs in the poller thread
Placement = Callable[[Any], tuple[Behavior, bool]]

_INTERNALS = (
    "_unary_response_in_pool",
    "_receive_message",
    "_is_rpc_state_active",
    "_abort",
    "_EMPTY_FLAGS",
    "_RECEIVE_MESSAGE_TOKEN",
    "_CLOSED",
)


def available() -> bool:
    """Whether grpc's server has every internal this module uses."""
    return all(hasattr(_server, name) for name in _INTERNALS) and hasattr(
        cygrpc, "ReceiveMessageOperation"
    )


class InlineUnaryCalls(ThreadPoolExecutor):
    """grpc's per-method executor: calls that `place` puts there are answered in the poller
    thread, the others run in `pool`. (A ThreadPoolExecutor only because grpc checks for one; it
    starts no threads of its own.)"""

    def __init__(self, pool: Executor, place: Placement) -> None:
        super().__init__(max_workers=1)
        self._pool = pool
        self._place = place

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        # grpc submits `state.context.run(_unary_response_in_pool, rpc_event, state,
        # behavior, request_thunk, request_deserializer, response_serializer)`
        if kwargs or len(args) != 7 or args[0] is not _server._unary_response_in_pool:
            return self._pool.submit(fn, *args, **kwargs)
        _, rpc_event, state, _behavior, _request_thunk, deserializer, serializer = args
        done: Future[Any] = Future()
        done.set_running_or_notify_cancel()
        # grpc holds state.condition here, as its own thread does when it asks for the message
        if not _server._is_rpc_state_active(state):
            done.set_result(None)
            return done
        received = _server._receive_message(state, rpc_event.call, deserializer)

        def on_message(event: Any) -> Any:  # in the poller thread
            outcome = received(event)  # the request in state.request, or the call is over
            try:
                self._answer(fn, rpc_event, state, deserializer, serializer, done)
            except Exception:  # a bug here must not end grpc's poller thread
                log.exception("gRPC call failed")
                with state.condition:
                    if not state.statused:
                        internal = cygrpc.StatusCode.internal
                        _server._abort(state, rpc_event.call, internal, b"internal error")
                if not done.done():
                    done.set_result(None)
            return outcome

        rpc_event.call.start_server_batch(
            (cygrpc.ReceiveMessageOperation(_server._EMPTY_FLAGS),), on_message
        )
        state.due.add(_server._RECEIVE_MESSAGE_TOKEN)
        return done

    def _answer(
        self,
        in_context: Callable[..., Any],
        rpc_event: Any,
        state: Any,
        deserializer: Any,
        serializer: Any,
        done: Future[Any],
    ) -> None:
        with state.condition:
            request, state.request = state.request, None
            if request is None:  # cancelled, or closed without a message (as grpc answers)
                if state.client is _server._CLOSED:
                    method = rpc_event.call_details.method
                    method = method.decode() if isinstance(method, bytes) else str(method)
                    details = f'"{method}" requires exactly one request message.'
                    unimplemented = cygrpc.StatusCode.unimplemented
                    _server._abort(state, rpc_event.call, unimplemented, details.encode())
                done.set_result(None)
                return
        behavior, here = self._place(request)
        args = (rpc_event, state, behavior, lambda: request, deserializer, serializer)
        if not here:
            pooled = self._pool.submit(in_context, _server._unary_response_in_pool, *args)
            pooled.add_done_callback(lambda _: done.set_result(None))
            return
        try:
            in_context(_server._unary_response_in_pool, *args)
        finally:
            done.set_result(None)


def inline_when(behavior: Behavior, pool: Executor, place: Placement) -> Behavior:
    """`behavior` for a grpc method handler, whose calls are answered by the behaviour
    `place` gives for each request, in the poller thread or in `pool` as it says (unchanged,
    always in the server's pool, if grpc's internals are not as expected)."""
    if not available():
        return behavior

    def run(request: Any, context: Any) -> Any:
        return behavior(request, context)

    run.experimental_thread_pool = InlineUnaryCalls(pool, place)  # type: ignore[attr-defined]
    return run
