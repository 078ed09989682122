"""What the HTTP adapters (A1111, Z-Image, OpenAI-compatible, vision) share: one request helper that maps
transport failures and error statuses to ``BackendError``, error-body parsing for the bodies those servers send,
and the shielded best-effort interrupt a cancelled generation sends before it lets the cancellation through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx

from gateway.backends.base import BACKEND_ERROR, Adapter, BackendError, status_error, transport_error

INTERRUPT_TIMEOUT = 5.0  # a cancelled job must not hang on a backend that no longer answers


def error_text(response: httpx.Response) -> str:
    """The server's own words from an error body, in the shapes our backends use:

    OpenAI ``{"error": {"message": ...}}``; A1111 ``{"error": "<Exception>", "detail": "...", "errors": "..."}``;
    FastAPI ``{"detail": "..."}`` and validation errors ``{"detail": [{"loc": [...], "msg": ...}]}``; else the
    raw text.
    """
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500]
    if not isinstance(body, dict):
        return str(body)[:500]
    error, detail = body.get("error"), body.get("detail")
    if isinstance(error, dict):
        return str(error.get("message") or error)
    # A1111 puts an exception's message in ``errors`` when the exception has no ``detail`` (e.g. a CUDA OOM).
    detail = detail or body.get("errors")
    parts = [_detail_text(detail)] if detail else []
    if isinstance(error, str) and error:
        parts.insert(0, error)
    return ": ".join(parts) if parts else json.dumps(body)[:500]


def _detail_text(detail: Any) -> str:
    if isinstance(detail, list):  # FastAPI/pydantic validation errors
        items = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(part) for part in item.get("loc", ()))
                items.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", item)))
            else:
                items.append(str(item))
        return "; ".join(items)
    return str(detail)


def json_of(name: str, response: httpx.Response) -> Any:
    """The JSON of a successful answer; a server that answers 200 with something else is at fault."""
    try:
        return response.json()
    except ValueError as exc:
        raise BackendError(f"Backend {name} returned a malformed answer (not JSON).", retryable=True) from exc


def malformed(name: str, what: str) -> BackendError:
    """A 200 answer that lacks what the protocol promises: the server (or a proxy in front of it) is at fault."""
    return BackendError(f"Backend {name} returned a malformed answer: {what}.", code=BACKEND_ERROR, retryable=True)


class HttpAdapter(Adapter):
    """An adapter talking to its server through ``self.client``. Subclasses may override ``status_error`` for
    protocol-specific errors (e.g. A1111 names the CUDA OOM by its exception class)."""

    async def send(self, method: str, path: str, *, accept: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        """One call; ``BackendError`` for transport failures and any non-2xx status not in ``accept`` (redirects
        are not followed: a backend that redirects is misconfigured, and following could leave its host)."""
        try:
            response = await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise transport_error(self.name, exc) from exc
        if not response.is_success and response.status_code not in accept:
            raise self.status_error(response)
        return response

    async def send_json(self, method: str, path: str, **kwargs: Any) -> Any:
        return json_of(self.name, await self.send(method, path, **kwargs))

    def status_error(self, response: httpx.Response) -> BackendError:
        return status_error(self.name, response.status_code, error_text(response))

    async def interrupt(self, method: str, path: str, **kwargs: Any) -> None:
        """Best-effort stop of the work on the server, for a ``generate`` being cancelled.

        Shielded so that the caller's cancellation does not cancel the interrupt itself, and short so that a dead
        backend cannot hold the cancellation up; its failures are swallowed (the job is cancelled either way).
        """

        async def call() -> None:
            with contextlib.suppress(httpx.HTTPError):
                await self.client.request(method, path, timeout=INTERRUPT_TIMEOUT, **kwargs)

        task = asyncio.ensure_future(call())
        # A second cancel while we wait ends the wait, not the interrupt: the shielded task still runs to its end.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
