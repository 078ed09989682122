"""Feishu / Lark custom bot: the images uploaded through the app, then one signed ``post`` message showing them.

Reference "OA / collaboration":

1. ``POST {base_url}/open-apis/auth/v3/tenant_access_token/internal`` ``{"app_id", "app_secret"}`` -> a tenant token
   (a custom bot cannot upload; an app of the same tenant does, and its image keys work in the bot's messages).
2. For each image ``POST /open-apis/im/v1/images`` multipart ``image_type=message`` + ``image`` with ``Authorization:
   Bearer <tenant token>`` -> ``image_key`` (images over 10 MB are re-encoded to fit, like WeCom's).
3. ``POST /open-apis/bot/v2/hook/{hook_token}`` ``{"timestamp", "sign", "msg_type": "post", "content": {"post":
   {"zh_cn": {"title", "content": [[...], ...]}}}}``: the record lines, then every image (an ``img`` element) with a
   link to its original; ``sign = base64(HMAC_SHA256(key=f"{timestamp}\\n{secret}", msg=b""))``.

Idempotency: Feishu's custom bots offer none. The app message API (``POST /open-apis/im/v1/messages``) deduplicates
on a ``uuid`` for an hour, but a custom bot's webhook takes no such field, and a bot's message has no id to look up.
What this connector does instead: everything before the message (the token, the uploads) has no visible effect and
is simply done again on a retry, and the delivery is exactly one message, so a delivery either shows up whole or
not at all. The one case that can still post twice is a retry after a send whose answer was lost (a timeout after
Feishu accepted it); the relay retries that, because dropping a delivery is worse than showing it twice.

Errors: the hook answers HTTP 200 with ``code`` != 0: 11232 (frequency limited) is retried, 19001 (hook token),
19021 (signature or clock), 19022/19024 (IP, keyword) and 9499 (bad request) are permanent, as is a code we do
not know. The token call's 10003/10014 (bad app credentials) are permanent; an upload's 99991663 (token expired
between the two calls) and 5xx are retried, its 234xxx (refused image) are permanent.

``test_connection`` gets a tenant token (checks app_id/app_secret, no visible effect), then sends a short signed
text message: the hook token and secret are only checked by a real send, and a user testing a chat bot expects
to see it arrive in the group.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from typing import Any, ClassVar

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
    error_for_status,
    guarded_request,
    retry_after_seconds,
)
from connectors.dingtalk import plain, title
from connectors.wecom import fit_image

DEFAULT_BASE = "https://open.feishu.cn"
MAX_IMAGE_BYTES = 10 * 1024 * 1024
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP", "ICO")
RATE_LIMITED = {11232}
TOKEN_RETRY = {99991663, 99991664}  # the tenant token expired or was replaced between getting it and using it
HOOK_HINTS = {
    19001: "the hook token is wrong or the bot was removed",
    19021: "the signature does not match the secret, or this machine's clock is off by more than an hour",
    19022: "this address is not on the bot's IP allowlist",
    19024: "the message lacks the bot's keyword",
    9499: "Feishu refused the message",
}
UPLOAD_HINTS = {
    99991672: "the app lacks the permission to upload images (im:resource)",
    234001: "Feishu refused the upload request",
    234006: "the image is larger than Feishu takes",
    234011: "Feishu cannot read the image",
}
TOKEN_HINTS = {10003: "app_id or app_secret missing", 10014: "app_id or app_secret is wrong"}


def sign(timestamp: int, secret: str) -> str:
    """Feishu's custom-bot signature: the string to sign is the HMAC key and the message is empty."""
    digest = hmac.new(f"{timestamp}\n{secret}".encode(), b"", hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


class FeishuConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: BaseUrl = Field(
        default=DEFAULT_BASE, max_length=2000, description="https://open.feishu.cn (Lark: https://open.larksuite.com)"
    )
    hook_token: SecretStr = Field(description="The bot's webhook token (the end of .../bot/v2/hook/<token>)")
    secret: SecretStr | None = Field(default=None, description="The bot's signing secret (签名校验); empty if off")
    app_id: str = Field(min_length=1, max_length=100, description="An app of the same tenant that uploads the images")
    app_secret: SecretStr = Field(description="That app's secret")
    title_template: TitleTemplate = Field(
        default=None,
        max_length=200,
        description="Message title (placeholders: " + ", ".join(sorted(TITLE_FIELDS)) + ")",
    )


def post_content(delivery: Delivery, heading: str, keys: list[str]) -> dict[str, Any]:
    """The ``post`` message: record lines, then each image and a link to its original."""
    metadata = delivery.metadata
    rows: list[list[dict[str, Any]]] = []
    fields = [(label, metadata.get(key)) for label, key in (("Record", "record_id"), ("Role", "role"))]
    fields += [("Template", metadata.get("template") or metadata.get("recipe")), ("System", delivery.system)]
    fields.append(("Status", metadata.get("status")))
    line = " · ".join(f"{label}: {plain(value)}" for label, value in fields if value)
    rows.append([{"tag": "text", "text": line}])
    if metadata.get("prompt"):
        rows.append([{"tag": "text", "text": f"Prompt: {plain(metadata['prompt'], 200)}"}])
    for asset, key in zip(delivery.assets, keys, strict=True):
        rows.append([{"tag": "img", "image_key": key}])
        rows.append(
            [
                {"tag": "a", "text": f"{asset.filename} ({asset.width}x{asset.height})", "href": asset.url},
                {"tag": "text", "text": " (link expires)"},
            ]
        )
    return {"post": {"zh_cn": {"title": heading, "content": rows}}}


class FeishuConnector(OAConnector[FeishuConfig]):
    kind: ClassVar[str] = "feishu"
    title: ClassVar[str] = "Feishu / Lark group bot"
    Config: ClassVar[type[BaseModel]] = FeishuConfig

    async def test_connection(self) -> str:
        await self._tenant_token()
        await self._hook({"msg_type": "text", "content": {"text": "Imagegate: connection test"}})
        return "Feishu issued a tenant token for the app and accepted a signed test message from the bot"

    async def deliver(self, delivery: Delivery) -> Delivered:
        token = await self._tenant_token()
        keys = [await self._upload(token, asset) for asset in delivery.assets]
        heading = title(delivery, self.config.title_template)
        await self._hook({"msg_type": "post", "content": post_content(delivery, heading, keys)})
        return Delivered(detail={"image_keys": keys})

    async def _request(self, what: str, method: str, url: str, **kwargs: Any) -> Any:
        """One call; the parsed JSON answer, whatever its ``code`` (HTTP errors with a Feishu body included)."""
        response = await guarded_request(
            self.http,
            method,
            url,
            refused="the Feishu URL is not allowed",
            unreachable=f"Feishu could not be reached ({what})",
            **kwargs,
        )
        try:
            answer = response.json()
            int(answer["code"])
        except (ValueError, TypeError, KeyError, AttributeError):
            raise error_for_status(
                response.status_code if response.status_code >= 400 else 502,
                f"Feishu answered HTTP {response.status_code} without its JSON ({what})",
                retry_after_seconds(response.headers.get("retry-after")),
            ) from None
        if response.status_code >= 500 or response.status_code == 429:
            raise RetryableError(
                f"Feishu answered HTTP {response.status_code} ({what}): code {answer['code']} {answer.get('msg', '')}",
                status=response.status_code,
                retry_after=retry_after_seconds(response.headers.get("retry-after")),
            )
        return answer

    async def _tenant_token(self) -> str:
        config = self.config
        body = {"app_id": config.app_id, "app_secret": config.app_secret.get_secret_value()}
        url = f"{config.base_url}/open-apis/auth/v3/tenant_access_token/internal"
        answer = await self._request("tenant token", "POST", url, json=body)
        code = int(answer["code"])
        if code != 0 or not answer.get("tenant_access_token"):
            hint = TOKEN_HINTS.get(code, "the app's credentials were refused")
            raise PermanentError(f"Feishu tenant token: code {code} {str(answer.get('msg', ''))[:200]} ({hint})")
        return str(answer["tenant_access_token"])

    async def _upload(self, token: str, asset: DeliveredAsset) -> str:
        original = await asset.read()
        try:
            data = await asyncio.to_thread(fit_image, original, max_bytes=MAX_IMAGE_BYTES, formats=IMAGE_FORMATS)
        except ValueError as exc:
            raise PermanentError(f"{asset.filename} cannot be sent to Feishu: {exc}") from None
        content_type = asset.content_type if data is original else "image/jpeg"
        filename = asset.filename if data is original else asset.filename.rsplit(".", 1)[0] + ".jpg"
        answer = await self._request(
            "image upload",
            "POST",
            f"{self.config.base_url}/open-apis/im/v1/images",
            headers={"Authorization": f"Bearer {token}"},
            data={"image_type": "message"},
            files={"image": (filename, data, content_type)},
        )
        code = int(answer["code"])
        data_field = answer.get("data")
        key = data_field.get("image_key") if isinstance(data_field, dict) else None
        if code == 0 and key:
            return str(key)
        message = f"Feishu image upload of {asset.filename}: code {code} {str(answer.get('msg', ''))[:200]}"
        if code in TOKEN_RETRY:
            raise RetryableError(message + " (the tenant token expired: a retry gets a new one)")
        hint = UPLOAD_HINTS.get(code, "no image_key in the answer" if code == 0 else "")
        raise PermanentError(message + (f" ({hint})" if hint else ""))

    async def _hook(self, message: dict[str, Any]) -> None:
        config = self.config
        body: dict[str, Any] = {}
        if config.secret is not None and config.secret.get_secret_value():
            timestamp = int(time.time())
            body = {"timestamp": str(timestamp), "sign": sign(timestamp, config.secret.get_secret_value())}
        body.update(message)
        url = f"{config.base_url}/open-apis/bot/v2/hook/{config.hook_token.get_secret_value()}"
        answer = await self._request("bot message", "POST", url, json=body)
        code = int(answer["code"])
        if code != 0:
            raise error_for_code(code, str(answer.get("msg", ""))[:300])


def error_for_code(code: int, msg: str) -> DeliveryError:
    """The hook's ``code`` as a retryable or permanent failure."""
    message = f"Feishu bot code {code}: {msg}"
    if code in RATE_LIMITED or "frequency limited" in msg.lower():
        return RetryableError(message + " (rate limited)", status=200, retry_after=60)
    hint = HOOK_HINTS.get(code)
    return PermanentError(message + (f" ({hint})" if hint else ""), status=200)
