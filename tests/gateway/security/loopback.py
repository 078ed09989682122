"""Loopback-only TCP/HTTP listeners for the outbound guard's tests: they count every accepted connection."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from types import TracebackType

Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


def http_response(
    status: int = 200,
    body: bytes = b"",
    *,
    headers: dict[str, str] | None = None,
    content_length: bool = True,
) -> bytes:
    """An HTTP/1.1 response; without ``content_length`` the body ends when the connection closes."""
    lines = [f"HTTP/1.1 {status} Test", "Connection: close"]
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def answer(response: bytes) -> Handler:
    """A handler that writes ``response`` and closes."""

    async def handle(head: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(response)
        await writer.drain()

    return handle


class Listener:
    """A TCP listener on a loopback address (port 0 unless given) that records connections and request heads.

    With no handler it accepts and never answers, until the listener is closed.
    """

    def __init__(self, handler: Handler | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.connections = 0
        self.requests: list[bytes] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._stop = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Listener:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._stop.set()
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            if self.handler is None:
                await self._stop.wait()
            else:
                await self.handler(head, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def closed_port() -> int:
    """A loopback port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
