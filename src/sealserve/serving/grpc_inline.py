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
poller thread again) asks `run_here(request)`: a behaviour to answer it right there, or None
to run the method's own behaviour in the handler pool as usual (a signature that is not
quick, a large request, anything that might wait). A behaviour run here must never block:
every other call of the server waits meanwhile.

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

log = logging.getLogger(__name__)

Behavior = Callable[[Any, Any], Any]  # (request, grpc.ServicerContext) -> response

_INTERNALS = (
    "_unary_response_in_pool",
    "_receive_message",
    "_is_rpc_state_active",
    "_abort",
    "_EMPTY_FLAGS",
    "_RECEIVE_MESSAGE_TOKEN",
    "_CLOSED",
)


def _grpc_server() -> Any | None:
    """grpc's server module if it has every internal this module uses."""
    try:
        from grpc import _server
        from grpc._cython import cygrpc
    except ImportError:
        return None
    if not all(hasattr(_server, name) for name in _INTERNALS) or not hasattr(
        cygrpc, "ReceiveMessageOperation"
    ):
        return None
    return _server


def available() -> bool:
    return _grpc_server() is not None


class InlineUnaryCalls(ThreadPoolExecutor):
    """grpc's per-method executor: calls `run_here` takes are answered in the poller thread,
    the others run in `pool`. (A ThreadPoolExecutor only because grpc checks for one; it
    starts no threads of its own.)"""

    def __init__(self, pool: Executor, run_here: Callable[[Any], Behavior | None]) -> None:
        super().__init__(max_workers=1)
        self._pool = pool
        self._run_here = run_here
        self._grpc = _grpc_server()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        # grpc submits `state.context.run(_unary_response_in_pool, rpc_event, state,
        # behavior, request_thunk, request_deserializer, response_serializer)`
        server = self._grpc
        if (
            server is None
            or kwargs
            or len(args) != 7
            or args[0] is not server._unary_response_in_pool
        ):
            return self._pool.submit(fn, *args, **kwargs)
        _, rpc_event, state, behavior, _request_thunk, deserializer, serializer = args
        done: Future[Any] = Future()
        done.set_running_or_notify_cancel()
        # grpc holds state.condition here, as its own thread does when it asks for the message
        if not server._is_rpc_state_active(state):
            done.set_result(None)
            return done
        received = server._receive_message(state, rpc_event.call, deserializer)

        def on_message(event: Any) -> Any:  # in the poller thread
            outcome = received(event)  # the request in state.request, or the call is over
            try:
                self._answer(fn, rpc_event, state, behavior, deserializer, serializer, done)
            except Exception:  # a bug here must not end grpc's poller thread
                log.exception("gRPC call failed")
                with state.condition:
                    if not state.statused:
                        server._abort(state, rpc_event.call, _internal(), b"internal error")
                if not done.done():
                    done.set_result(None)
            return outcome

        from grpc._cython import cygrpc

        rpc_event.call.start_server_batch(
            (cygrpc.ReceiveMessageOperation(server._EMPTY_FLAGS),), on_message
        )
        state.due.add(server._RECEIVE_MESSAGE_TOKEN)
        return done

    def _answer(
        self,
        in_context: Callable[..., Any],
        rpc_event: Any,
        state: Any,
        behavior: Behavior,
        deserializer: Any,
        serializer: Any,
        done: Future[Any],
    ) -> None:
        server = self._grpc
        assert server is not None
        with state.condition:
            request, state.request = state.request, None
            if request is None:  # cancelled, or closed without a message (as grpc answers)
                if state.client is server._CLOSED:
                    method = rpc_event.call_details.method
                    method = method.decode() if isinstance(method, bytes) else str(method)
                    details = f'"{method}" requires exactly one request message.'
                    server._abort(state, rpc_event.call, _unimplemented(), details.encode())
                done.set_result(None)
                return
        here = self._run_here(request)
        args = (rpc_event, state, here or behavior, lambda: request, deserializer, serializer)
        if here is None:
            pooled = self._pool.submit(in_context, server._unary_response_in_pool, *args)
            pooled.add_done_callback(lambda _: done.set_result(None))
            return
        try:
            in_context(server._unary_response_in_pool, *args)
        finally:
            done.set_result(None)


def _internal() -> Any:
    from grpc._cython import cygrpc

    return cygrpc.StatusCode.internal


def _unimplemented() -> Any:
    from grpc._cython import cygrpc

    return cygrpc.StatusCode.unimplemented


def inline_when(
    behavior: Behavior, pool: Executor, run_here: Callable[[Any], Behavior | None]
) -> Behavior:
    """`behavior` for a grpc method handler, whose calls `run_here` answers in the poller
    thread when it returns a behaviour for the request (unchanged if grpc's internals are
    not as expected)."""
    if not available():
        return behavior

    def run(request: Any, context: Any) -> Any:
        return behavior(request, context)

    run.experimental_thread_pool = InlineUnaryCalls(pool, run_here)  # type: ignore[attr-defined]
    return run
