"""DingTalk custom robot ("自定义机器人"): one markdown message per delivery, showing the images by link.

``POST {webhook_url}?access_token=T&timestamp=TS&sign=S`` with ``{"msgtype": "markdown", "markdown": {"title",
"text"}, "msgUuid": <idempotency key>}`` (reference "OA / collaboration"). The robot cannot take an upload: each
image is ``![filename](asset.url)``, the gateway's expiring signed link (DingTalk's clients fetch it; it must be
reachable from the people reading the chat, and it stops working when it expires, so the message says so).

* Signing ("加签"): ``timestamp`` in milliseconds and ``sign = urlencode(base64(HMAC_SHA256(key=secret,
  msg=f"{timestamp}\\n{secret}")))`` in the query. A robot secured by keywords or an IP allowlist instead has no
  secret (leave it empty; with keywords, put one in ``title_template``).
* Idempotency: ``msgUuid`` is the delivery's idempotency key, the same on every attempt: DingTalk posts a message
  with a msgUuid it has seen once, so a retry after a lost answer does not post twice.
* DingTalk answers HTTP 200 with ``errcode`` != 0 on errors: 130101 (over 20 messages a minute) and -1 (busy) are
  retried, signature/token/robot errors (310000, 300001, 300005, 400101, 400102, 400106, 400013) and refused
  payloads are permanent, and so is a code we do not know (DingTalk deliberately refused this request; the same
  request will be refused again).
* ``test_connection`` sends a short text message: DingTalk has no dry-run call, and only a real send checks the
  token and the signature together. A user testing a chat robot expects to see that message arrive in the group
  (the same check DingTalk's own robot settings suggest); it spends one of the robot's 20 messages a minute.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from typing import Any, ClassVar
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.base import (
    TITLE_FIELDS,
    Delivered,
    Delivery,
    DeliveryError,
    EndpointUrl,
    OAConnector,
    PermanentError,
    RetryableError,
    TitleTemplate,
    error_for_status,
    guarded_request,
    retry_after_seconds,
)

DEFAULT_WEBHOOK = "https://oapi.dingtalk.com/robot/send"
MAX_TEXT_BYTES = 20000  # DingTalk: "message too long, exceed 20000 bytes"
RATE_LIMITED = {130101, 410100}  # send too fast (410100: the v2 documentation's code for the same)
BUSY = {-1}
PERMANENT_HINTS = {
    310000: "the robot's security check failed (signature, timestamp, keyword or IP allowlist)",
    300001: "the access token does not exist (the robot was removed, or the token is wrong)",
    300005: "the access token does not exist",
    400101: "the access token does not exist",
    400102: "the robot is stopped",
    400106: "the robot does not exist",
    400013: "the group was dissolved or the robot is disabled",
    40035: "a required parameter is missing",
    43004: "DingTalk refused the Content-Type",
    400105: "DingTalk does not support this message type",
    460101: "the message is too long",
}
PROMPT_CHARS = 200


def sign(timestamp_ms: int, secret: str) -> str:
    """The signature DingTalk checks, base64 (the caller URL-encodes it into the query)."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def title_fields(delivery: Delivery) -> dict[str, str]:
    metadata = delivery.metadata
    return {
        "record_id": str(metadata.get("record_id") or ""),
        "role": str(metadata.get("role") or ""),
        "template": str(metadata.get("template") or metadata.get("recipe") or ""),
        "system": delivery.system,
        "count": str(len(delivery.assets)),
        "event": delivery.event,
        "job_id": delivery.job_id or "",
        "batch_id": delivery.batch_id or "",
    }


def title(delivery: Delivery, template: str | None) -> str:
    """The message title: the template filled in, or "Imagegate · <record> · <role>" by default."""
    fields = title_fields(delivery)
    if template:
        text = " ".join(template.format_map(fields).split())
    else:
        parts = (
            [fields["record_id"], fields["role"]] if fields["record_id"] else [fields["job_id"] or fields["batch_id"]]
        )
        text = " · ".join(["Imagegate", *[p for p in parts if p]])
    return text[:100] or "Imagegate"


def plain(value: Any, limit: int = 200) -> str:
    """A metadata value on one line, without the characters that would start markdown links, emphasis, code,
    tables or HTML (an underscore inside a word is left: chat markdown does not italicise it)."""
    text = " ".join(str(value).split())
    for char in "[]()<>*`|":
        text = text.replace(char, " ")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def link(url: str) -> str:
    """A URL safe inside markdown ``(...)``: spaces, parentheses and angle brackets percent-encoded."""
    return quote(url, safe=":/?#@!$&'*+,;=%-._~[]")


def markdown_text(delivery: Delivery, heading: str) -> str:
    """The message body: heading, record/role/system lines, the prompt, then every image and its link; images
    that do not fit in DingTalk's 20000 bytes are counted instead of shown."""
    metadata = delivery.metadata
    lines = [f"#### {plain(heading, 100)}", ""]
    for label, key in (("Record", "record_id"), ("Role", "role"), ("Template", "template"), ("Recipe", "recipe")):
        if metadata.get(key):
            lines.append(f"- **{label}**: {plain(metadata[key])}")
    lines.append(f"- **System**: {plain(delivery.system)}")
    if metadata.get("status"):
        lines.append(f"- **Status**: {plain(metadata['status'])}")
    if metadata.get("prompt"):
        lines.append(f"- **Prompt**: {plain(metadata['prompt'], PROMPT_CHARS)}")
    footer = ["", "", "> Links expire; download the originals before they do."]
    body = "\n".join(lines)
    shown = 0
    for asset in delivery.assets:
        url = link(asset.url)
        name = plain(asset.filename, 120)
        block = f"\n\n![{name}]({url})\n[{name} ({asset.width}x{asset.height})]({url})"
        rest = len(delivery.assets) - shown - 1
        more = f"\n\n… and {rest} more image(s)" if rest else ""
        if len((body + block + more + "\n".join(footer)).encode()) > MAX_TEXT_BYTES:
            break
        body += block
        shown += 1
    if shown < len(delivery.assets):
        body += f"\n\n… and {len(delivery.assets) - shown} more image(s)"
    return body + "\n".join(footer)


class DingTalkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook_url: EndpointUrl = Field(
        default=DEFAULT_WEBHOOK, max_length=2000, description="The robot endpoint, without the access_token"
    )
    access_token: SecretStr = Field(description="The robot's access_token (the end of its webhook URL)")
    secret: SecretStr | None = Field(
        default=None, description="The signing secret (SEC...) when the robot uses 加签; empty for keyword/IP security"
    )
    title_template: TitleTemplate = Field(
        default=None,
        max_length=200,
        description="Message title, e.g. '新图片 {record_id} {role}' (placeholders: "
        + ", ".join(sorted(TITLE_FIELDS))
        + ")",
    )


class DingTalkConnector(OAConnector[DingTalkConfig]):
    kind: ClassVar[str] = "dingtalk"
    title: ClassVar[str] = "DingTalk group robot"
    Config: ClassVar[type[BaseModel]] = DingTalkConfig

    async def test_connection(self) -> str:
        body = {"msgtype": "text", "text": {"content": "Imagegate: connection test"}, "msgUuid": uuid.uuid4().hex}
        await self._send(body)
        return "DingTalk accepted the token and signature; a test message was sent to the group"

    async def deliver(self, delivery: Delivery) -> Delivered:
        heading = title(delivery, self.config.title_template)
        body = {
            "msgtype": "markdown",
            "markdown": {"title": heading, "text": markdown_text(delivery, heading)},
            "msgUuid": delivery.idempotency_key,
        }
        await self._send(body)
        return Delivered(
            external_id=delivery.idempotency_key,
            detail={"msgUuid": delivery.idempotency_key, "images": len(delivery.assets)},
        )

    def _url(self) -> str:
        config = self.config
        parts = urlsplit(config.webhook_url)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("access_token", "timestamp", "sign")]
        query.append(("access_token", config.access_token.get_secret_value()))
        if config.secret is not None and config.secret.get_secret_value():
            timestamp = int(time.time() * 1000)
            query += [("timestamp", str(timestamp)), ("sign", sign(timestamp, config.secret.get_secret_value()))]
        # urlencode quotes "+", "/" and "=" of the base64 signature (an unencoded "+" would arrive as a space).
        return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))

    async def _send(self, body: dict[str, Any]) -> None:
        response = await guarded_request(
            self.http,
            "POST",
            self._url(),
            refused="the DingTalk URL is not allowed",
            unreachable="DingTalk could not be reached",
            json=body,
        )
        errcode, errmsg = errcode_answer(response, "DingTalk")
        if errcode != 0:
            raise error_for_errcode(errcode, errmsg)


def errcode_answer(response: httpx.Response, vendor: str, suffix: str = "") -> tuple[int, str]:
    """``errcode`` and ``errmsg`` of a chat robot's answer (DingTalk, WeCom: HTTP 200 with ``{"errcode",
    "errmsg"}``); an HTTP error or a body that is not that JSON raises (each message ends with ``suffix``)."""
    if response.status_code != 200:
        raise error_for_status(
            response.status_code,
            f"{vendor} answered HTTP {response.status_code}{suffix}",
            retry_after_seconds(response.headers.get("retry-after")),
        )
    try:
        answer = response.json()
        return int(answer["errcode"]), str(answer.get("errmsg", ""))[:300]
    except (ValueError, TypeError, KeyError, AttributeError):
        raise RetryableError(f"{vendor} answered something that is not its JSON{suffix}", status=200) from None


def error_for_errcode(errcode: int, errmsg: str) -> DeliveryError:
    """DingTalk's ``errcode`` as a retryable or permanent failure (the message names the code and DingTalk's text)."""
    message = f"DingTalk errcode {errcode}: {errmsg}"
    if errcode in RATE_LIMITED:
        return RetryableError(
            message + " (over 20 messages a minute: retry after a minute)", status=200, retry_after=60
        )
    if errcode in BUSY:
        return RetryableError(message + " (DingTalk is busy)", status=200)
    hint = PERMANENT_HINTS.get(errcode)
    return PermanentError(message + (f" ({hint})" if hint else ""), status=200)
