"""Emulator of a Feishu / Lark custom bot ("自定义机器人") and the two Open Platform calls its images need.

Written from ``../shared/reference/connectors.md`` ("OA / collaboration") and real answers, not from the
connector. ``imagegate emulate feishu --token HOOK --secret S --app-id A --app-secret B`` runs one tenant with
one bot and one app.

* ``POST /open-apis/auth/v3/tenant_access_token/internal`` ``{"app_id", "app_secret"}`` ->
  ``{"code": 0, "msg": "ok", "tenant_access_token": "t-...", "expire": 7200}``. As on Feishu, a token with more
  than 30 minutes left is handed out again (with its remaining ``expire``); a new one is made after that.
* ``POST /open-apis/im/v1/images`` multipart ``image_type=message`` + ``image`` with
  ``Authorization: Bearer <tenant token>`` -> ``{"code": 0, "data": {"image_key": "img_v3_..."}, "msg": "success"}``.
  Images up to 10 MB, of a format Pillow recognises (Feishu takes JPEG, PNG, WEBP, GIF, TIFF, BMP, ICO).
* ``POST /open-apis/bot/v2/hook/{token}`` JSON ``{"msg_type", "content", "timestamp", "sign"}``. With a secret,
  ``timestamp`` is unix seconds (a string or a number) within one hour of the server clock and
  ``sign = base64(HMAC_SHA256(key=f"{timestamp}\\n{secret}", msg=b""))``. ``msg_type`` text, post, image,
  share_chat or interactive; an ``image_key`` (in an image message or a post ``img`` element) must have been
  uploaded to this tenant. Success: ``{"StatusCode": 0, "StatusMessage": "success", "code": 0, "data": {},
  "msg": "success"}``. Custom bots have no idempotency key: every accepted call is one more message.
* Rate limit: ``rate_per_minute`` (100) and ``rate_per_second`` (5) per bot (Feishu's documentation for custom
  bots; the reference marks the limit unverified).

Error answers and how sure we are (verified = seen in real answers quoted publicly; assumed = secondary sources
or our best reading):

* hook: 19001 ``param invalid: incoming webhook access token invalid`` (HTTP 200, ``data: {}``): verified.
* hook: 19021 ``sign match fail or timestamp is not within one hour from current time`` (HTTP 200): verified.
* hook: 11232 ``frequency limited psm[lark.oapi.app_platform_runtime]appID[1500]`` (HTTP 200): verified.
* hook: 9499 ``Bad Request`` for a body that cannot be parsed, an unknown msg_type or an unknown image_key:
  the code is verified for malformed content, the other two uses are assumed.
* token: 10014 ``app secret invalid`` / ``app id not exists`` (HTTP 200 assumed): verified texts.
* token: 10003 ``invalid param`` for a missing field: assumed.
* images: 99991661 ``Missing access token for authorization...`` (assumed) and 99991663 ``Invalid access token
  for authorization. Please make a request with token attached.`` (verified; HTTP 400, as most reports show).
* images: 234001 ``Invalid request param.`` (verified), 234006 ``The file size exceeds the limit.`` (assumed),
  234011 ``Can't recognize image format.`` (code verified, text assumed), all HTTP 400.

Inspection (not part of Feishu): ``GET /_emulator/received`` -> ``{"received": [{"msg_type", "content",
"received_at"}], "images": {key: {"bytes", "sha256", "format", "width", "height", "image_type"}}}``;
``DELETE /_emulator/received`` forgets messages, images and the rate windows.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import secrets
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile

from gateway.emulators.vendor import RateWindow, json_object

DEFAULT_HOOK_TOKEN = "feishu-emulator-hook"  # noqa: S105 - emulator defaults, not credentials
DEFAULT_SECRET = "feishu-emulator-secret"  # noqa: S105
DEFAULT_APP_ID = "cli_emulator"
DEFAULT_APP_SECRET = "feishu-emulator-app-secret"  # noqa: S105
TOKEN_LIFETIME = 7200
TOKEN_RENEW_BELOW = 1800  # a token with less than 30 minutes left is replaced by a new one
MAX_IMAGE_BYTES = 10 * 1024 * 1024
TIMESTAMP_WINDOW = 3600
MSG_TYPES = {"text", "post", "image", "share_chat", "interactive"}
SIGN_FAIL = "sign match fail or timestamp is not within one hour from current time"
TOKEN_INVALID = "param invalid: incoming webhook access token invalid"  # noqa: S105 - an error text
FREQUENCY = "frequency limited psm[lark.oapi.app_platform_runtime]appID[1500]"
MISSING_AUTH = "Missing access token for authorization. Please make a request with token attached."
INVALID_AUTH = "Invalid access token for authorization. Please make a request with token attached."


def sign(timestamp: int | str, secret: str) -> str:
    """Feishu's custom-bot signature: the string to sign is the HMAC key, the message is empty."""
    digest = hmac.new(f"{timestamp}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _hook_answer(code: int, msg: str) -> JSONResponse:
    return JSONResponse({"code": code, "data": {}, "msg": msg})


def _api_error(code: int, msg: str, status: int = 400) -> JSONResponse:
    log_id = time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(9).upper()
    return JSONResponse(status_code=status, content={"code": code, "msg": msg, "error": {"log_id": log_id}})


def _image_keys(msg_type: str, content: dict[str, Any]) -> list[str] | None:
    """The image keys a message refers to; None when its content is not of the msg_type's shape."""
    if msg_type == "text":
        return [] if isinstance(content.get("text"), str) and content["text"] else None
    if msg_type == "image":
        key = content.get("image_key")
        return [key] if isinstance(key, str) and key else None
    if msg_type == "post":
        post = content.get("post")
        if not isinstance(post, dict) or not post:
            return None
        keys: list[str] = []
        for language in post.values():
            if not isinstance(language, dict) or not isinstance(language.get("content"), list):
                return None
            for line in language["content"]:
                if not isinstance(line, list):
                    return None
                for element in line:
                    if not isinstance(element, dict) or "tag" not in element:
                        return None
                    if element["tag"] == "img":
                        keys.append(str(element.get("image_key", "")))
        return keys
    if msg_type == "share_chat":
        return [] if content.get("share_chat_id") else None
    return []  # interactive: cards are not checked


def create_app(
    hook_token: str = DEFAULT_HOOK_TOKEN,
    secret: str | None = DEFAULT_SECRET,
    *,
    app_id: str = DEFAULT_APP_ID,
    app_secret: str = DEFAULT_APP_SECRET,
    rate_per_minute: int = 100,
    rate_per_second: int = 5,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """One tenant: a custom bot at ``/open-apis/bot/v2/hook/{hook_token}`` (signed with ``secret`` unless None)
    and an app ``app_id``/``app_secret`` that uploads the images its messages show."""
    app = FastAPI(title="Feishu custom bot (emulator)", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.received = []
    app.state.images = {}  # image_key -> {"data": bytes, ...}
    app.state.tokens = {}  # tenant token -> expiry (clock seconds)
    minute = RateWindow(rate_per_minute, 60.0, clock)
    second = RateWindow(rate_per_second, 1.0, clock)

    def current_token() -> tuple[str, int]:
        now = clock()
        for token, expires in app.state.tokens.items():
            if expires - now >= TOKEN_RENEW_BELOW:
                return token, int(expires - now)
        token = "t-g" + secrets.token_hex(20)
        app.state.tokens[token] = now + TOKEN_LIFETIME
        return token, TOKEN_LIFETIME

    @app.post("/open-apis/auth/v3/tenant_access_token/internal")
    async def tenant_access_token(request: Request) -> JSONResponse:
        body = await json_object(request)
        if body is None or not body.get("app_id") or not body.get("app_secret"):
            return JSONResponse({"code": 10003, "msg": "invalid param"})
        if str(body["app_id"]) != app_id:
            return JSONResponse({"code": 10014, "msg": "app id not exists"})
        if not secrets.compare_digest(str(body["app_secret"]).encode(), app_secret.encode()):
            return JSONResponse({"code": 10014, "msg": "app secret invalid"})
        token, expire = current_token()
        return JSONResponse({"code": 0, "msg": "ok", "tenant_access_token": token, "expire": expire})

    @app.post("/open-apis/im/v1/images")
    async def upload_image(request: Request) -> JSONResponse:
        authorization = request.headers.get("authorization", "")
        if not authorization.lower().startswith("bearer ") or not authorization[7:].strip():
            return _api_error(99991661, MISSING_AUTH)
        expires = app.state.tokens.get(authorization[7:].strip())
        if expires is None or expires <= clock():
            return _api_error(99991663, INVALID_AUTH)
        try:
            form = await request.form()
        except Exception:
            return _api_error(234001, "Invalid request param.")
        image_type, upload = form.get("image_type"), form.get("image")
        if image_type not in ("message", "avatar") or not isinstance(upload, UploadFile):
            return _api_error(234001, "Invalid request param.")
        data = await upload.read()
        if len(data) > MAX_IMAGE_BYTES:
            return _api_error(234006, "The file size exceeds the limit.")
        try:
            with Image.open(io.BytesIO(data)) as image:
                fmt, (width, height) = image.format, image.size
        except (UnidentifiedImageError, OSError, ValueError):
            return _api_error(234011, "Can't recognize image format.")
        key = "img_v3_" + secrets.token_hex(14)
        app.state.images[key] = {
            "data": data,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "format": fmt,
            "width": width,
            "height": height,
            "image_type": image_type,
        }
        return JSONResponse({"code": 0, "data": {"image_key": key}, "msg": "success"})

    @app.post("/open-apis/bot/v2/hook/{token}")
    async def hook(token: str, request: Request) -> JSONResponse:
        if not secrets.compare_digest(token.encode(), hook_token.encode()):
            return _hook_answer(19001, TOKEN_INVALID)
        body = await json_object(request)
        if body is None:
            return _hook_answer(9499, "Bad Request")
        if secret is not None:
            timestamp = str(body.get("timestamp", ""))
            if (
                not timestamp.isdigit()
                or abs(clock() - int(timestamp)) > TIMESTAMP_WINDOW
                or not secrets.compare_digest(str(body.get("sign", "")).encode(), sign(timestamp, secret).encode())
            ):
                return _hook_answer(19021, SIGN_FAIL)
        msg_type, content = body.get("msg_type"), body.get("content")
        if msg_type not in MSG_TYPES:
            return _hook_answer(9499, "Bad Request")
        if msg_type == "interactive":
            content = body.get("card", content)
        if not isinstance(content, dict):
            return _hook_answer(9499, "Bad Request")
        keys = _image_keys(msg_type, content)
        if keys is None or any(key not in app.state.images for key in keys):
            return _hook_answer(9499, "Bad Request")
        if second.full() or minute.full():
            return _hook_answer(11232, FREQUENCY)
        second.add()
        minute.add()
        app.state.received.append({"msg_type": msg_type, "content": content, "received_at": clock()})
        return JSONResponse({"StatusCode": 0, "StatusMessage": "success", "code": 0, "data": {}, "msg": "success"})

    @app.get("/_emulator/received")
    async def received() -> dict[str, Any]:
        images = {key: {k: v for k, v in info.items() if k != "data"} for key, info in app.state.images.items()}
        return {"received": app.state.received, "images": images}

    @app.delete("/_emulator/received")
    async def forget() -> dict[str, Any]:
        app.state.received.clear()
        app.state.images.clear()
        minute.clear()
        second.clear()
        return {"received": [], "images": {}}

    return app


def from_cli(token: str | None, secret: str | None, app_id: str | None, app_secret: str | None) -> tuple[FastAPI, str]:
    """``imagegate emulate feishu [--token HOOK] [--secret S] [--app-id A] [--app-secret B]`` (``--secret ""``:
    a bot without signing)."""
    bot_secret = DEFAULT_SECRET if secret is None else (secret or None)
    hook = token or DEFAULT_HOOK_TOKEN
    app = create_app(hook, bot_secret, app_id=app_id or DEFAULT_APP_ID, app_secret=app_secret or DEFAULT_APP_SECRET)
    return app, (
        f"Feishu bot: POST /open-apis/bot/v2/hook/{hook}, secret={bot_secret}; "
        f"app_id={app_id or DEFAULT_APP_ID}, app_secret={app_secret or DEFAULT_APP_SECRET}"
    )
