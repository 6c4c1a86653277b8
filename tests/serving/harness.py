"""Real servers for tests: a `ModelServer` on free loopback ports, run on its own event loop
in a background thread, and the clients that talk to it (the real TF Serving stubs, HTTP)."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

import grpc

from sealserve.serving.keys import KeyProvider
from sealserve.serving.server import ModelServer, ServerOptions


class RunningServer:
    """Starts on construction (after the models load), stops on `stop()`."""

    def __init__(self, options: ServerOptions, keys: KeyProvider) -> None:
        self.server = ModelServer(options, keys)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(timeout=300)
        self.grpc_port = self.server.grpc_port
        self.rest_port = self.server.rest_port

    @property
    def manager(self):  # noqa: ANN201
        return self.server.manager

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)

    # -- REST ------------------------------------------------------------------------------

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.rest_port}{path}"

    def http(
        self,
        method: str,
        path: str,
        body: bytes | str | dict | None = None,
        *,
        headers: dict[str, str] | None = None,
        context: ssl.SSLContext | None = None,
    ) -> HttpResult:
        data = (
            json.dumps(body).encode()
            if isinstance(body, dict)
            else (body.encode() if isinstance(body, str) else body)
        )
        request = urllib.request.Request(
            self.url(path, "https" if context else "http"),
            data=data,
            method=method,
            headers=headers or {},
        )
        try:
            with urllib.request.urlopen(request, timeout=60, context=context) as response:
                return HttpResult(
                    response.status, response.read(), response.headers.get("Content-Type", "")
                )
        except urllib.error.HTTPError as error:
            return HttpResult(error.code, error.read(), error.headers.get("Content-Type", ""))

    # -- gRPC ------------------------------------------------------------------------------

    def channel(
        self,
        credentials: grpc.ChannelCredentials | None = None,
        target: str | None = None,
        options: list | None = None,
    ) -> grpc.Channel:
        address = target or f"127.0.0.1:{self.grpc_port}"
        if credentials is None:
            return grpc.insecure_channel(address, options=options or [])
        return grpc.secure_channel(address, credentials, options=options or [])


@dataclass
class HttpResult:
    status: int
    body: bytes
    content_type: str

    def json(self) -> Any:
        return json.loads(self.body)
