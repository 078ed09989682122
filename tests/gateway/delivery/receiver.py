"""A webhook receiver on loopback that verifies Standard Webhooks signatures and can be told to fail."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.live import serve_asgi

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # 24 bytes of base64


@dataclass
class Receiver:
    url: str = ""
    secrets: list[str] = field(default_factory=lambda: [SECRET])
    fail_first: int = 0  # answer `fail_status` this many times, then 200
    fail_status: int = 503
    retry_after: str | None = None
    always: int | None = None  # answer this status every time
    hold_first: float = 0  # act on the first request, then keep its sender waiting this long before answering
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set when a verified request has been acted on
    released: asyncio.Event = field(default_factory=asyncio.Event)  # ends every hold (set when the receiver stops)
    requests: list[dict[str, Any]] = field(default_factory=list)  # every request seen, verified or not
    effects: dict[str, dict[str, Any]] = field(default_factory=dict)  # webhook-id -> body: what it acted on

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            body = await request.body()
            headers = {k: v for k, v in request.headers.items()}
            verified = None
            for secret in self.secrets:
                with contextlib.suppress(WebhookVerificationError):
                    verified = Webhook(secret).verify(body, headers)
                    break
            self.requests.append({"headers": headers, "body": body, "verified": verified is not None})
            if verified is None:
                return JSONResponse({"error": "bad signature"}, status_code=401)
            if self.always is not None:
                return JSONResponse({"error": "no"}, status_code=self.always)
            if self.fail_first > 0:
                self.fail_first -= 1
                extra = {"Retry-After": self.retry_after} if self.retry_after else {}
                return JSONResponse({"error": "busy"}, status_code=self.fail_status, headers=extra)
            first = not self.effects
            self.effects.setdefault(headers["webhook-id"], verified)  # idempotent: one effect per id
            self.arrived.set()
            if first and self.hold_first:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.released.wait(), self.hold_first)
            return JSONResponse({"ok": True})

        return app


@contextlib.asynccontextmanager
async def running(receiver: Receiver) -> AsyncIterator[Receiver]:
    async with serve_asgi(receiver.app()) as base:
        receiver.url = f"{base}/hook"
        try:
            yield receiver
        finally:
            receiver.released.set()
