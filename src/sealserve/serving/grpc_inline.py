"""gRPC calls whose request message is received in grpc's poller thread, before any handler
thread takes them; quick ones answered right there.

grpc's thread-pool server (`grpc.server`) runs one Python thread that polls the completion
queue and hands each call to a handler thread, which asks for the request message and waits
until the poller thread tells it the message is there. Two costs follow:

- A client that starts calls and never sends their messages holds a handler thread each, for
  as long as it likes: with one handler thread per CPU, two such calls stalled every other
  call (metadata, status, Classify, health checks) that needed one.
- For a call whose work is a few tens of microseconds (half_plus_two's Predict), the two
  hand-offs, each a thread wake-up and a GIL hand-over, cost more than the work: measured on
  2 cores, 420 µs of server CPU per Predict against 300 µs when the poller thread answers it
  itself.

`InlineUnaryCalls` is the per-method executor grpc's server takes from a behaviour's
`experimental_thread_pool` attribute (see `inline_when`). Given a call with one request
message, it asks for the message from the poller thread, and when the message has arrived (in
the poller thread again) asks `place(request)` for the behaviour that answers it and whether
to run that right there, or in the handler pool as usual (a signature that is not quick, a
large request, anything that might wait). A behaviour run in the poller thread must never
block: every other call of the server waits meanwhile. `message_first` gives every method of a
service this executor, placing each call in the pool once its message is there.

This relies on grpc's private server internals (checked for grpcio 1.66 to 1.85): the
functions its server submits for a call with one request message, and the helpers that
receive a message and answer. `available()` checks that they are all there; a submission that
does not look as expected goes to the handler pool unchanged, so a grpcio that differs only
loses speed, and handler threads wait for messages again.
Thread safe (grpc calls `submit` and the message callbacks from its poller thread).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

import grpc
from grpc import _server
from grpc._cython import cygrpc

log = logging.getLogger(__name__)

Behavior = Callable[[Any, Any], Any]  # (request, grpc.ServicerContext) -> response
# (request) -> the behaviour that answers it, and whether it runs in the poller thread
Placement = Callable[[Any], tuple[Behavior, bool]]

_INTERNALS = (
    "_unary_response_in_pool",
    "_stream_response_in_pool",
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
        # grpc submits `state.context.run(respond, rpc_event, state, behavior,
        # request_thunk, request_deserializer, response_serializer)`, where `respond` answers
        # with one message (`_unary_response_in_pool`) or a stream (`_stream_response_in_pool`)
        if kwargs or len(args) != 7 or not _responds_to_one_message(args[0]):
            return self._pool.submit(fn, *args, **kwargs)
        respond, rpc_event, state, _behavior, _request_thunk, deserializer, serializer = args
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
                self._answer(fn, respond, rpc_event, state, deserializer, serializer, done)
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
        respond: Callable[..., Any],
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
            pooled = self._pool.submit(in_context, respond, *args)
            pooled.add_done_callback(lambda _: done.set_result(None))
            return
        try:
            in_context(respond, *args)
        finally:
            done.set_result(None)


def _responds_to_one_message(fn: Any) -> bool:
    return fn is _server._unary_response_in_pool or fn is _server._stream_response_in_pool


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


def message_first(handler: grpc.GenericRpcHandler, pool: Executor) -> grpc.GenericRpcHandler:
    """The method handlers `handler` gives, each call of a method with one request message run
    in `pool` only once that message has arrived (behaviours that already have an executor of
    their own, as `inline_when` gives, unchanged)."""
    if not available():
        return handler
    return _MessageFirst(handler, pool)


class MessageFirstRegistry:
    """What grpc's generated `add_*_to_server` functions register on instead of the server:
    the handlers they add (generic and by method name), as `message_first` gives them."""

    def __init__(self, server: grpc.Server, pool: Executor) -> None:
        self._server = server
        self._pool = pool

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(message_first(handler, self._pool) for handler in handlers)
        )

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        if available():
            handlers = {name: _placed_in(h, self._pool) for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, handlers)


class _MessageFirst(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, pool: Executor) -> None:
        self._inner = inner
        self._pool = pool
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}  # methods `inner` serves only

    def service(self, handler_call_details: Any) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = self._inner.service(handler_call_details)
            if handler is None:
                return None
            handler = self._handlers[method] = _placed_in(handler, self._pool)
        return handler


def _placed_in(handler: Any, pool: Executor) -> Any:
    """`handler` (a grpc.RpcMethodHandler) with its behaviour's calls placed in `pool` by an
    `InlineUnaryCalls` once their message has arrived."""
    if handler.request_streaming:
        return handler
    field = "unary_stream" if handler.response_streaming else "unary_unary"
    behavior = getattr(handler, field)
    if getattr(behavior, "experimental_thread_pool", None) is not None:
        return handler

    def carrier(*args: Any, **kwargs: Any) -> Any:  # what grpc reads the executor from
        return behavior(*args, **kwargs)

    # grpc reads these attributes from the behaviour it was given (grpc_health's Watch
    # answers through callbacks without holding a thread: experimental_non_blocking)
    carrier.experimental_non_blocking = getattr(  # type: ignore[attr-defined]
        behavior, "experimental_non_blocking", False
    )
    carrier.experimental_thread_pool = InlineUnaryCalls(  # type: ignore[attr-defined]
        pool, lambda _request: (behavior, False)
    )
    return handler._replace(**{field: carrier})
