"""WeCom (企业微信) group robot: the images themselves, one image message each, after an optional markdown message.

``POST {base_url}/cgi-bin/webhook/send?key=KEY`` (reference "OA / collaboration"); the key is the secret, there is
no signature. An image message is ``{"msgtype": "image", "image": {"base64", "md5"}}`` with the md5 of the raw
bytes, at most 2 MB, JPG or PNG only: anything else (a WEBP, a PNG over 2 MB) is re-encoded as JPEG with Pillow,
quality 90 down to 40, then scaled down until it fits.

* Messages: a markdown message with the record, role, prompt and links to the originals (``send_text``, on by
  default; always sent when images are left out), then up to ``max_images`` image messages. The robot takes 20
  messages a minute, so a delivery is kept to a few; the other images are still reachable through the links.
* Idempotency: WeCom robots have none (no message id, no dedup key). A retry after a lost answer, or after a
  failure in the middle of a delivery (45009 at the third image), sends the earlier messages again; the error
  says how many had gone. Nothing the robot offers can prevent that: keep ``max_images`` low.
* Errors (HTTP 200, ``errcode`` != 0): 45009 (over the rate) and -1 (busy) are retried; 93000 (the key is wrong
  or the robot was removed) and the refused-payload codes (40009 size, 301019 md5, 40005 type, 40008 msgtype,
  44004 empty, 40058 parameter) are permanent, and so is a code we do not know.
* ``test_connection`` sends a short text message: the robot has no dry-run call (the media upload endpoint
  would check the key but not that the robot is in the group the user means). A user testing a chat robot
  expects to see the message arrive; it spends one of the 20 messages a minute.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
from dataclasses import dataclass
from typing import Any, ClassVar

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from connectors.base import (
    TITLE_FIELDS,
    BaseUrl,
    Delivered,
    DeliveredAsset,
    Delivery,
    DeliveryError,
    OAConnector,
    PermanentError,
    RetryableError,
    TitleTemplate,
)
from connectors.dingtalk import errcode_answer, link, plain, title

DEFAULT_BASE = "https://qyapi.weixin.qq.com"
MAX_IMAGE_BYTES = 2 * 1024 * 1024
MAX_MARKDOWN_BYTES = 4096
IMAGE_FORMATS = ("PNG", "JPEG")
QUALITIES = (90, 80, 70, 60, 50, 40)
MIN_SIDE = 64  # below this a picture is no longer worth showing: fail instead
RATE_LIMITED = {45009}
BUSY = {-1}
PERMANENT_HINTS = {
    93000: "the webhook key is wrong or the robot was removed",
    40009: "the image is too large",
    301019: "the image md5 does not match",
    40005: "the file type is not allowed",
    40008: "the message type is not allowed",
    44004: "the content is empty",
    40058: "a parameter is invalid",
}


def fit_image(data: bytes, *, max_bytes: int = MAX_IMAGE_BYTES, formats: tuple[str, ...] = IMAGE_FORMATS) -> bytes:
    """``data`` if it is one of ``formats`` and at most ``max_bytes``; else a JPEG of it that is: quality steps
    first, then smaller sizes. Raises ValueError for bytes that are not an image or cannot be made to fit."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.format in formats and len(data) <= max_bytes:
                return data
            opened.load()
            image = _flatten(opened)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"not a readable image ({exc})") from None
    while True:
        encoded = b""
        for quality in QUALITIES:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=quality)
            encoded = buffer.getvalue()
            if len(encoded) <= max_bytes:
                return encoded
        # Bytes grow about with the pixel count: aim a little under the cap at the lowest quality.
        factor = min(0.9, max(0.25, (max_bytes / len(encoded)) ** 0.5 * 0.95))
        width, height = (max(1, int(side * factor)) for side in image.size)
        if min(width, height) < MIN_SIDE:
            raise ValueError(f"the image does not fit in {max_bytes} bytes even at {image.width}x{image.height}")
        image = image.resize((width, height), Image.Resampling.LANCZOS)


def _flatten(image: Image.Image) -> Image.Image:
    """RGB for JPEG: transparency is composed over white (a chat's background), palettes are expanded."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


@dataclass(frozen=True)
class Prepared:
    asset: DeliveredAsset
    data: bytes
    md5: str
    converted: bool


class WeComConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: BaseUrl = Field(default=DEFAULT_BASE, max_length=2000, description="WeCom API base URL")
    key: SecretStr = Field(description="The robot's webhook key (the key= of its webhook URL)")
    send_text: bool = Field(default=True, description="Send a markdown message with the record before the images")
    max_images: int = Field(
        default=4, ge=0, le=10, description="Images sent as image messages (the rest are links in the markdown)"
    )
    title_template: TitleTemplate = Field(
        default=None,
        max_length=200,
        description="Markdown heading (placeholders: " + ", ".join(sorted(TITLE_FIELDS)) + ")",
    )


def markdown(delivery: Delivery, heading: str, shown: int) -> str:
    """The record message: heading, fields, prompt and a link to every image, within WeCom's 4096 bytes."""
    metadata = delivery.metadata
    lines = [f"**{plain(heading, 100)}**"]
    for label, key in (("Record", "record_id"), ("Role", "role"), ("Template", "template"), ("Recipe", "recipe")):
        if metadata.get(key):
            lines.append(f'> {label}: <font color="comment">{plain(metadata[key])}</font>')
    lines.append(f'> System: <font color="comment">{plain(delivery.system)}</font>')
    if metadata.get("status"):
        lines.append(f'> Status: <font color="comment">{plain(metadata["status"])}</font>')
    if metadata.get("prompt"):
        lines.append(f"> Prompt: {plain(metadata['prompt'], 200)}")
    extra = len(delivery.assets) - shown
    note = f"{shown} image(s) follow" + (f"; {extra} more by link only" if extra > 0 else "") + ". Links expire."
    body = "\n".join(lines)
    listed = 0
    for asset in delivery.assets:
        line = f"\n[{plain(asset.filename, 120)}]({link(asset.url)})"
        tail = f"\n… and {len(delivery.assets) - listed - 1} more" if listed + 1 < len(delivery.assets) else ""
        if len((body + line + tail + "\n" + note).encode()) > MAX_MARKDOWN_BYTES:
            break
        body += line
        listed += 1
    if listed < len(delivery.assets):
        body += f"\n… and {len(delivery.assets) - listed} more"
    return body + "\n" + note


class WeComConnector(OAConnector[WeComConfig]):
    kind: ClassVar[str] = "wecom"
    title: ClassVar[str] = "WeCom group robot"
    Config: ClassVar[type[BaseModel]] = WeComConfig

    async def test_connection(self) -> str:
        await self._send({"msgtype": "text", "text": {"content": "Imagegate: connection test"}}, sent=0)
        return "WeCom accepted the webhook key; a test message was sent to the group"

    async def deliver(self, delivery: Delivery) -> Delivered:
        config = self.config
        chosen = delivery.assets[: config.max_images]
        prepared = [await self._prepare(asset) for asset in chosen]  # before sending anything: fail early
        messages: list[dict[str, Any]] = []
        if config.send_text or len(chosen) < len(delivery.assets):
            heading = title(delivery, config.title_template)
            messages.append({"msgtype": "markdown", "markdown": {"content": markdown(delivery, heading, len(chosen))}})
        for item in prepared:
            image = {"base64": base64.b64encode(item.data).decode(), "md5": item.md5}
            messages.append({"msgtype": "image", "image": image})
        for sent, message in enumerate(messages):
            await self._send(message, sent=sent)
        return Delivered(
            detail={
                "messages": len(messages),
                "images": [
                    {"asset_id": p.asset.id, "bytes": len(p.data), "md5": p.md5, "converted": p.converted}
                    for p in prepared
                ],
                "link_only": len(delivery.assets) - len(chosen),
            }
        )

    async def _prepare(self, asset: DeliveredAsset) -> Prepared:
        original = await asset.read()
        try:
            data = await asyncio.to_thread(fit_image, original)
        except ValueError as exc:
            raise PermanentError(f"{asset.filename} cannot be sent to WeCom: {exc}") from None
        md5 = hashlib.md5(data).hexdigest()  # noqa: S324 - WeCom's checksum of the image, not security
        return Prepared(asset=asset, data=data, md5=md5, converted=data is not original)

    async def _send(self, message: dict[str, Any], *, sent: int) -> None:
        from gateway.common.outbound import FetchFailed
        from policies.ssrf import UrlRefused

        config = self.config
        url = f"{config.base_url}/cgi-bin/webhook/send"
        already = f" ({sent} message(s) of this delivery were sent before; a retry sends them again)" if sent else ""
        try:
            response = await self.http.request("POST", url, params={"key": config.key.get_secret_value()}, json=message)
        except UrlRefused as exc:
            raise PermanentError(f"the WeCom URL is not allowed: {exc}") from None
        except FetchFailed as exc:
            raise RetryableError(f"WeCom could not be reached: {exc.message}{already}") from None
        errcode, errmsg = errcode_answer(response, "WeCom", already)
        if errcode != 0:
            raise error_for_errcode(errcode, errmsg, already)


def error_for_errcode(errcode: int, errmsg: str, suffix: str = "") -> DeliveryError:
    """WeCom's ``errcode`` as a retryable or permanent failure."""
    message = f"WeCom errcode {errcode}: {errmsg}"
    if errcode in RATE_LIMITED:
        return RetryableError(message + " (over 20 messages a minute)" + suffix, status=200, retry_after=60)
    if errcode in BUSY:
        return RetryableError(message + " (WeCom is busy)" + suffix, status=200)
    hint = PERMANENT_HINTS.get(errcode)
    return PermanentError(message + (f" ({hint})" if hint else "") + suffix, status=200)
