"""Emulator of a DingTalk custom robot ("自定义机器人"): ``POST /robot/send?access_token=T&timestamp=TS&sign=S``.

Written from ``../shared/reference/connectors.md`` ("OA / collaboration") and the answers the real endpoint gives,
not from the connector, so that the two check each other. ``imagegate emulate dingtalk --token T --secret S``
runs one robot.

The protocol as emulated:

* Every answer is HTTP 200 with ``{"errcode": N, "errmsg": "..."}``; ``errcode`` 0 is success (the real endpoint
  answers its errors with HTTP 200 too: a caller must read the body).
* ``access_token`` names the robot. With a ``secret`` (the "加签" security setting) the query also carries
  ``timestamp`` (milliseconds, within one hour of the server's clock, either side) and
  ``sign = urlencode(base64(HMAC_SHA256(key=secret, msg=f"{timestamp}\\n{secret}")))``. Without a secret the robot
  uses keyword or IP security, which this emulator does not model: any signature is ignored.
* The body is JSON (``Content-Type: application/json``) with ``msgtype`` text, markdown, link, actionCard or
  feedCard and the matching object; ``msgUuid`` is an idempotency key: a second message with the same msgUuid
  is answered ok and not posted again (nor counted against the rate limit).
* At most ``rate_limit`` (20) messages per minute per robot, over a sliding 60 s window.
* Messages are limited to 20000 bytes of text.

Error codes, and how sure we are of each (verified = seen in real answers quoted in public bug reports or code
that talks to the real endpoint; assumed = from secondary sources or our best reading):

* 310000 ``description:机器人发送签名不匹配;solution:...`` for a wrong/missing sign: verified (answers of
  2022-2025; older answers said ``sign not match, more: [...]``).
* 310000 ``invalid timestamp, more: [...]`` for a timestamp outside the hour: verified (answers of 2020-2021).
* 300001 ``token is not exist`` for an unknown access_token: verified (300005 with the same text is also seen,
  for tokens of external groups).
* 40035 ``缺少参数 access_token`` without an access_token: verified by a third party probing the endpoint.
* 43002 ``需要POST请求`` for a GET: verified by the same probe.
* 130101 ``send too fast, exceed 20 times per minute``: verified.
* 43004 ``无效的HTTP HEADER Content-Type`` for a non-JSON content type: assumed (code from secondary lists).
* 400105 ``不支持的消息类型`` for an unknown msgtype: assumed (secondary lists).
* 460101 ``message too long, exceed 20000 bytes``: the text is verified, the code assumed.
* 40035 ``缺少参数 json`` / ``缺少参数 <field>`` for a body that is not JSON or lacks a field: assumed.

Inspection (not part of DingTalk): ``GET /_emulator/received`` lists the accepted messages
(``{"received": [{"robot", "msgtype", "body", "msgUuid", "received_at"}]}``), ``DELETE /_emulator/received``
forgets them (and the msgUuids and the rate window).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gateway.emulators.vendor import RateWindow, json_object, serve_received

DEFAULT_TOKEN = "dingtalk-emulator-token"  # noqa: S105 - the emulator's default, not a credential
DEFAULT_SECRET = "SECdingtalk-emulator-secret"  # noqa: S105
MORE = "more: [https://ding-doc.dingtalk.com/doc#/serverapi2/qf2nxq]"
SIGN_NOT_MATCH = (
    "description:机器人发送签名不匹配;solution:请确认签名和生成签名的时间戳必须都放在调用的网址中，"
    "请确认机器人的密钥加密和填写正确;link:请参考本接口对应文档获得具体要求，"
    "或者在https://open.dingtalk.com/document/  搜索相关文档;"
)
MAX_TEXT_BYTES = 20000
TIMESTAMP_WINDOW_MS = 3600 * 1000
# The fields each msgtype needs (what DingTalk's documentation marks as required).
REQUIRED: dict[str, tuple[str, ...]] = {
    "text": ("content",),
    "markdown": ("title", "text"),
    "link": ("title", "text", "messageUrl"),
    "actionCard": ("title", "text"),
    "feedCard": ("links",),
}


def sign(timestamp_ms: int | str, secret: str) -> str:
    """The base64 signature (before URL encoding) DingTalk expects for ``timestamp_ms``."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _answer(errcode: int, errmsg: str) -> JSONResponse:
    return JSONResponse({"errcode": errcode, "errmsg": errmsg})


def _text_bytes(msgtype: str, content: dict[str, Any]) -> int:
    fields = ("content",) if msgtype == "text" else ("title", "text")
    return sum(len(str(content.get(f, "")).encode()) for f in fields)


def create_app(
    access_token: str = DEFAULT_TOKEN,
    secret: str | None = DEFAULT_SECRET,
    *,
    rate_limit: int = 20,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """One DingTalk robot: ``access_token`` names it, ``secret`` (None: no signing) signs its calls."""
    app = FastAPI(title="DingTalk custom robot (emulator)", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.access_token = access_token
    app.state.secret = secret
    app.state.uuids = set()
    window = RateWindow(rate_limit, 60.0, clock)

    def forget() -> None:
        app.state.uuids.clear()
        window.clear()

    serve_received(app, forget)

    @app.get("/robot/send")
    async def send_get() -> JSONResponse:
        return _answer(43002, "需要POST请求")

    @app.post("/robot/send")
    async def send(request: Request) -> JSONResponse:
        query = request.query_params
        token = query.get("access_token", "")
        if not token:
            return _answer(40035, "缺少参数 access_token")
        if not secrets.compare_digest(token.encode(), access_token.encode()):
            return _answer(300001, "token is not exist")
        if secret is not None:
            timestamp = query.get("timestamp", "")
            if not timestamp.isdigit() or abs(clock() * 1000 - int(timestamp)) > TIMESTAMP_WINDOW_MS:
                return _answer(310000, f"invalid timestamp, {MORE}")
            # FastAPI has already URL-decoded the query: ``sign`` is the bare base64 here.
            if not secrets.compare_digest(query.get("sign", "").encode(), sign(timestamp, secret).encode()):
                return _answer(310000, SIGN_NOT_MATCH)
        if "json" not in request.headers.get("content-type", "").lower():
            return _answer(43004, "无效的HTTP HEADER Content-Type")
        body = await json_object(request)
        if body is None:
            return _answer(40035, "缺少参数 json")
        msgtype = body.get("msgtype")
        if not msgtype:
            return _answer(40035, "缺少参数 msgtype")
        if msgtype not in REQUIRED:
            return _answer(400105, "不支持的消息类型")
        content = body.get(msgtype)
        if not isinstance(content, dict):
            return _answer(40035, f"缺少参数 {msgtype}")
        for field in REQUIRED[msgtype]:
            if not content.get(field):
                return _answer(40035, f"缺少参数 {field}")
        if _text_bytes(msgtype, content) > MAX_TEXT_BYTES:
            return _answer(460101, "message too long, exceed 20000 bytes")
        uuid = body.get("msgUuid")
        if uuid and uuid in app.state.uuids:
            return _answer(0, "ok")  # the same message again: already posted once
        if not window.allow():
            return _answer(130101, "send too fast, exceed 20 times per minute")
        if uuid:
            app.state.uuids.add(uuid)
        app.state.received.append(
            {"robot": token, "msgtype": msgtype, "body": body, "msgUuid": uuid, "received_at": clock()}
        )
        return _answer(0, "ok")

    return app


def from_cli(token: str | None, secret: str | None, app_id: str | None, app_secret: str | None) -> tuple[FastAPI, str]:
    """``imagegate emulate dingtalk [--token T] [--secret S]`` (``--secret ""``: a robot without signing)."""
    robot_secret = DEFAULT_SECRET if secret is None else (secret or None)
    app = create_app(token or DEFAULT_TOKEN, robot_secret)
    return app, f"DingTalk robot: POST /robot/send, access_token={app.state.access_token}, secret={robot_secret}"
