"""Emulator of a WeCom (企业微信) group robot: ``POST /cgi-bin/webhook/send?key=KEY``.

Written from ``../shared/reference/connectors.md`` ("OA / collaboration") and real answers, not from the
connector. ``imagegate emulate wecom --key KEY`` runs one robot.

* No signature: the ``key`` in the query is the secret.
* Every answer is HTTP 200 ``{"errcode": N, "errmsg": "..."}``; errors carry WeCom's tail
  ``, hint: [<id>], from ip: <ip>, more info at https://open.work.weixin.qq.com/devtool/query?e=<N>``.
* ``msgtype``: text (``content`` <= 2048 bytes), markdown (``content`` <= 4096 bytes), image, news, file,
  template_card. An image is ``{"base64": ..., "md5": <md5 hex of the raw bytes>}``, at most 2 MB before
  encoding, JPG or PNG only; one image per message.
* At most ``rate_limit`` (20) messages per minute per robot, sliding 60 s window.

Error codes and how sure we are (verified = seen in real answers quoted publicly; assumed = secondary sources or
our best reading of WeCom's global error code list):

* 93000 ``invalid webhook url`` for a missing or unknown key: verified.
* 45009 ``api freq out of limit`` when over 20 messages a minute: verified (WeChat-family code; robot users
  report and handle it).
* 301019 ``media md5 not match`` for an md5 that is not the image's: verified.
* 40009 ``invalid image size`` for an image over 2 MB: the code and text are verified on WeChat's upload APIs;
  that the robot answers it for an oversized image is assumed.
* 40005 ``invalid file type`` for an image that is not JPG/PNG: assumed.
* 40008 ``invalid message type`` for an unknown msgtype: assumed.
* 44004 ``empty content`` for a text/markdown without content: assumed.
* 40058 ``invalid parameter`` (with a detail) for a body that is not JSON, bad base64, a missing field or a
  content that is too long: assumed.

Inspection (not part of WeCom): ``GET /_emulator/received`` -> ``{"received": [{"msgtype", "body",
"received_at"}]}``, where an image's body is replaced by ``{"image": {"bytes", "md5", "sha256", "format",
"width", "height"}}`` (its bytes are in ``app.state.images``); ``DELETE /_emulator/received`` forgets them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import secrets
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError

from gateway.emulators.vendor import RateWindow, json_object, serve_received

DEFAULT_KEY = "3f1c2e4a-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
MAX_IMAGE_BYTES = 2 * 1024 * 1024
MAX_TEXT_BYTES = {"text": 2048, "markdown": 4096}
MSG_TYPES = {"text", "markdown", "image", "news", "file", "template_card"}
IMAGE_FORMATS = {"JPEG", "PNG"}


def create_app(key: str = DEFAULT_KEY, *, rate_limit: int = 20, clock: Callable[[], float] = time.time) -> FastAPI:
    """One WeCom group robot whose webhook key is ``key``."""
    app = FastAPI(title="WeCom group robot (emulator)", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.images = []  # the raw bytes of every accepted image, in order
    window = RateWindow(rate_limit, 60.0, clock)

    def forget() -> None:
        app.state.images.clear()
        window.clear()

    serve_received(app, forget)

    def answer(request: Request, errcode: int, errmsg: str) -> JSONResponse:
        if errcode == 0:
            return JSONResponse({"errcode": 0, "errmsg": "ok"})
        hint = f"{int(clock() * 1000)}{secrets.randbelow(10**12):012d}"
        ip = request.client.host if request.client else "127.0.0.1"
        tail = (
            f", hint: [{hint}], from ip: {ip}, more info at https://open.work.weixin.qq.com/devtool/query?e={errcode}"
        )
        return JSONResponse({"errcode": errcode, "errmsg": errmsg + tail})

    @app.post("/cgi-bin/webhook/send")
    async def send(request: Request) -> JSONResponse:
        given = request.query_params.get("key", "")
        if not given or not secrets.compare_digest(given.encode(), key.encode()):
            return answer(request, 93000, "invalid webhook url")
        body = await json_object(request)
        if body is None:
            return answer(request, 40058, "invalid parameter, request body is not json")
        msgtype = body.get("msgtype")
        if msgtype not in MSG_TYPES:
            return answer(request, 40008, "invalid message type")
        content = body.get(msgtype)
        if not isinstance(content, dict):
            return answer(request, 40058, f"invalid parameter, {msgtype} missing")
        record: dict[str, Any] = {"msgtype": msgtype, "body": body}
        data = b""
        if msgtype in MAX_TEXT_BYTES:
            text = content.get("content")
            if not isinstance(text, str) or not text:
                return answer(request, 44004, "empty content")
            if len(text.encode()) > MAX_TEXT_BYTES[msgtype]:
                return answer(request, 40058, f"invalid parameter, content exceed max length {MAX_TEXT_BYTES[msgtype]}")
        elif msgtype == "image":
            encoded, md5 = content.get("base64"), content.get("md5")
            if not isinstance(encoded, str) or not encoded or not isinstance(md5, str) or not md5:
                return answer(request, 40058, "invalid parameter, image base64 and md5 are required")
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                return answer(request, 40058, "invalid parameter, invalid base64")
            if len(data) > MAX_IMAGE_BYTES:
                return answer(request, 40009, "invalid image size")
            actual = hashlib.md5(data).hexdigest()  # noqa: S324 - the protocol's checksum, not security
            if md5.lower() != actual:
                return answer(request, 301019, "media md5 not match")
            try:
                with Image.open(io.BytesIO(data)) as image:
                    fmt, (width, height) = image.format, image.size
            except (UnidentifiedImageError, OSError, ValueError):
                fmt, width, height = None, 0, 0
            if fmt not in IMAGE_FORMATS:
                return answer(request, 40005, "invalid file type")
            summary = {
                "bytes": len(data),
                "md5": actual,
                "sha256": hashlib.sha256(data).hexdigest(),
                "format": fmt,
                "width": width,
                "height": height,
            }
            record["body"] = {"msgtype": "image", "image": summary}
        if not window.allow():
            return answer(request, 45009, "api freq out of limit")
        record["received_at"] = clock()
        app.state.received.append(record)
        if msgtype == "image":
            app.state.images.append(data)
        return answer(request, 0, "ok")

    return app


def from_cli(token: str | None, secret: str | None, app_id: str | None, app_secret: str | None) -> tuple[FastAPI, str]:
    """``imagegate emulate wecom [--key KEY]`` (``--token`` is the same option; WeCom has no secret)."""
    key = token or DEFAULT_KEY
    return create_app(key), f"WeCom robot: POST /cgi-bin/webhook/send?key={key}"
