"""What the vendor emulators (Salesforce, HubSpot, Odoo, DingTalk, Feishu, WeCom) share, none of it part of a
vendor's API: injected faults and lost answers (``POST /_emulator/faults``), the log of what they were sent
(``GET``/``DELETE /_emulator/received``), sliding rate windows and reading a JSON object body.

Every vendor's own answers (its error bodies, codes and texts) stay in its module.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import FastAPI, Request

# -- faults and lost answers ---------------------------------------------------------------------------------------


@dataclass
class Fault:
    """What the next ``times`` requests whose path contains ``path`` (and whose method is ``method``, when given)
    get instead of the real answer."""

    status: int = 503
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1
    path: str = ""
    method: str = ""
    lose: bool = False  # process the request, then drop the connection before the answer's body
    after: int = 0  # let this many matching requests through first


class Faults:
    """ASGI middleware: answers injected faults, or loses the answer of a request that was carried out."""

    def __init__(self, app: Any, faults: list[Fault]) -> None:
        self.app = app
        self.faults = faults

    def _take(self, method: str, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.path in path and fault.method.upper() in ("", method):
                if fault.after > 0:
                    fault.after -= 1
                    continue
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        vendor = scope["type"] == "http" and not path.startswith("/_emulator")
        fault = self._take(scope.get("method", ""), path) if vendor else None
        if fault is None:
            await self.app(scope, receive, send)
            return
        if fault.lose:

            async def start_only(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    await send(message)  # the status line and a Content-Length, then nothing: the body is lost

            await self.app(scope, receive, start_only)
            return
        body = json.dumps(fault.body).encode() if fault.body is not None else b""
        headers = [(k.lower().encode(), v.encode()) for k, v in fault.headers.items()]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": fault.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def fault_from(payload: dict[str, Any]) -> Fault:
    """The :class:`Fault` a ``POST /_emulator/faults`` body describes (keys a Fault does not have are ignored)."""
    known = {"status", "body", "headers", "times", "path", "method", "lose", "after"}
    return Fault(**{k: v for k, v in payload.items() if k in known})


def add_faults(app: FastAPI) -> list[Fault]:
    """Answer the faults ``POST /_emulator/faults`` adds (a :class:`Fault` as JSON; answers ``{"faults": <how many
    wait>}``) instead of ``app``'s vendor routes. Returns their list, which is also ``app.state.faults``."""
    faults: list[Fault] = []
    app.state.faults = faults
    app.add_middleware(Faults, faults=faults)

    @app.post("/_emulator/faults")
    async def add_fault(request: Request) -> dict[str, int]:
        faults.append(fault_from(await request.json()))
        return {"faults": len(faults)}

    return faults


# -- what was received ---------------------------------------------------------------------------------------------

RequestField = Literal["method", "path", "query", "content_type"]
_REQUEST_FIELDS: dict[str, Callable[[Request], Any]] = {
    "method": lambda request: request.method,
    "path": lambda request: request.url.path,
    "query": lambda request: dict(request.query_params),
    "content_type": lambda request: request.headers.get("content-type", ""),
}


def serve_received(app: FastAPI, forget: Callable[[], None] | None = None) -> None:
    """Start ``app.state.received`` (what the emulator accepted, in order) and serve it at ``GET
    /_emulator/received`` as ``{"received": [...]}``. With ``forget``, ``DELETE /_emulator/received`` empties it,
    then calls ``forget`` (which resets the rest of the emulator's state)."""
    app.state.received = []

    @app.get("/_emulator/received")
    async def received() -> dict[str, Any]:
        return {"received": app.state.received}

    if forget is not None:
        reset = forget

        @app.delete("/_emulator/received")
        async def forget_received() -> dict[str, Any]:
            app.state.received.clear()
            reset()
            return {"received": []}


def log_requests(
    app: FastAPI,
    clock: Callable[[], float],
    fields: tuple[RequestField, ...] = ("method", "path", "query", "content_type"),
) -> Callable[..., None]:
    """:func:`serve_received`, and the ``record(request, **details)`` that logs an API request there: its
    ``fields``, ``received_at`` (``clock()``), then ``details``."""
    serve_received(app)

    def record(request: Request, **details: Any) -> None:
        entry: dict[str, Any] = {name: _REQUEST_FIELDS[name](request) for name in fields}
        app.state.received.append({**entry, "received_at": clock(), **details})

    return record


# -- rate limits and bodies ----------------------------------------------------------------------------------------


class RateWindow:
    """At most ``limit`` events per ``seconds`` over a sliding window (the robots' per-minute limits)."""

    def __init__(self, limit: int, seconds: float, clock: Callable[[], float]) -> None:
        self.limit, self.seconds, self.clock = limit, seconds, clock
        self._events: deque[float] = deque()

    def full(self) -> bool:
        """Whether the window has no room for another event now."""
        now = self.clock()
        while self._events and self._events[0] <= now - self.seconds:
            self._events.popleft()
        return self.limit > 0 and len(self._events) >= self.limit

    def add(self) -> None:
        self._events.append(self.clock())

    def allow(self) -> bool:
        """Record one event if the window has room; False (and nothing recorded) when it is full."""
        if self.full():
            return False
        self.add()
        return True

    def clear(self) -> None:
        self._events.clear()


async def json_object(request: Request) -> dict[str, Any] | None:
    """The request's body as a JSON object; None when it is not JSON, or JSON of another kind."""
    try:
        body: Any = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    return body
