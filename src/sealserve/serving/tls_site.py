"""The REST port's TLS listener: aiohttp's TCP site with asyncio's TLS, except that a
handshake that fails still sends the peer the alert saying why.

asyncio's server-side TLS (`asyncio.sslproto.SSLProtocol`, Python 3.11+) closes the socket
as soon as `do_handshake()` raises, without writing what OpenSSL queued for the peer: the
fatal alert. A client without a certificate then sees the connection end ("Empty reply from
server", "EOF occurred in violation of protocol") instead of OpenSSL's `certificate_required`
(TLS 1.3, RFC 8446 §6.2) or `handshake_failure` (TLS 1.2, which has no more precise alert).
`AlertingSSLProtocol` writes those bytes out before asyncio closes the connection; nothing
else changes (same context, timeouts, and peer certificate in the transport's extra info).

Runs on the event loop only, like the rest of the REST server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from asyncio import constants, sslproto

from aiohttp import web


class AlertingSSLProtocol(sslproto.SSLProtocol):
    """asyncio's TLS protocol, flushing the alert of a failed handshake to the peer."""

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None:
            # what OpenSSL queued while failing: the fatal alert (unless the peer is gone)
            with contextlib.suppress(Exception):
                self._process_outgoing()  # type: ignore[attr-defined]
        super()._on_handshake_complete(handshake_exc)  # type: ignore[misc]


class AlertingTLSSite(web.TCPSite):
    """`web.TCPSite(runner, host, port, ssl_context=context)` whose connections are
    `AlertingSSLProtocol`s."""

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        context = self._ssl_context
        assert server is not None and isinstance(context, ssl.SSLContext)

        def connection() -> asyncio.BaseProtocol:
            return AlertingSSLProtocol(
                loop,
                server(),
                context,
                None,  # type: ignore[arg-type]  # no waiter: the server side awaits nothing
                server_side=True,
                ssl_handshake_timeout=int(constants.SSL_HANDSHAKE_TIMEOUT),  # asyncio's defaults
                ssl_shutdown_timeout=int(constants.SSL_SHUTDOWN_TIMEOUT),
            )

        self._server = await loop.create_server(
            connection,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
