"""HTTP plumbing of the inference server: the upload size limit, JSON errors, the listening socket.

Kept apart from :mod:`liverfat.segmentation.server` because none of it knows about engines.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse

from liverfat.errors import LiverfatError, one_line

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: How much of a refused body is still read and thrown away (bytes): clients such as urllib send
#: the whole body before they read the answer, and would see a reset connection instead of it.
DRAIN_LIMIT_BYTES = 256 * 2**20


def error_response(
    status: int, message: str, *, headers: MutableMapping[str, str] | None = None
) -> JSONResponse:
    """``{"error": "one line"}`` with ``status``."""
    return JSONResponse({"error": one_line(message, limit=1000)}, status, headers=headers)


class _TooLarge(Exception):
    """Raised from ``receive`` once a body passes the limit; caught by :class:`UploadLimit`."""


class UploadLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 with a JSON error.

    A declared ``Content-Length`` over the limit is refused before the app sees the request; a
    body without one (chunked) is counted as it arrives and refused when it passes the limit.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, receive, send, received=0)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except _TooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send, received=received)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, *, received: int) -> None:
        await _drain(receive, DRAIN_LIMIT_BYTES)
        limit_mb = self.max_bytes / 2**20
        response = error_response(
            413, f"upload too large: the limit is {limit_mb:g} MiB (--max-upload-mb)"
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _drain(receive: Receive, limit: int) -> None:
    """Read and discard the rest of a body, at most ``limit`` bytes."""
    drained = 0
    while drained <= limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port), for ``uvicorn.Server.run``.

    Binding here, before uvicorn starts, lets the caller print the real port.
    """
    if not 0 <= port <= 65535:
        raise LiverfatError(f"port must be 0 to 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = socket.create_server(address, family=family, backlog=128)
    except OSError as exc:
        raise LiverfatError(f"cannot listen on {host}:{port}: {one_line(exc)}") from exc
    sock.set_inheritable(True)
    return sock
