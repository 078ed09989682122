"""Outbound webhooks, signed per Standard Webhooks v1 (the `standardwebhooks` library).

Headers ``webhook-id`` (the delivery's idempotency key: the same on every retry, the receiver's dedup key),
``webhook-timestamp`` (unix seconds) and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of id.timestamp.body>``,
one signature per secret, space-separated, while a secret is being rotated). The body is small: links to the
images (expiring signed URLs that need no token), never the images. Redirects are not followed.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from standardwebhooks.webhooks import Webhook

from connectors.base import (
    Delivered,
    Delivery,
    EndpointUrl,
    PermanentError,
    RetryableError,
    WebhookConnector,
    retry_after_seconds,
)
from gateway.common.time import utcnow


def _secret(value: SecretStr | None) -> SecretStr | None:
    if value is None:
        return None
    raw = value.get_secret_value()
    try:
        Webhook(raw)
    except Exception:
        raise ValueError("a Standard Webhooks secret: whsec_ followed by base64 (at least 24 bytes)") from None
    return value


class WebhookConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: EndpointUrl = Field(min_length=8, max_length=2000, description="The receiver's URL (https:// in production)")
    secret: SecretStr = Field(description="Signing secret, `whsec_` + base64 (Standard Webhooks)")
    previous_secret: SecretStr | None = Field(
        default=None, description="While rotating: the old secret; both signatures are sent until it is removed"
    )

    _check_secret = field_validator("secret", "previous_secret")(_secret)


_METADATA = ("record_id", "role", "template", "recipe", "status", "error")


def payload(delivery: Delivery) -> dict[str, Any]:
    """The event body: what happened, and links to the images."""
    return {
        "type": delivery.event,
        "timestamp": utcnow().isoformat().replace("+00:00", "Z"),
        "data": {
            "system": delivery.system,
            "job_id": delivery.job_id,
            "batch_id": delivery.batch_id,
            "delivery_id": delivery.id,
            **{k: v for k, v in delivery.metadata.items() if k in _METADATA},
            "assets": [
                {
                    "id": a.id,
                    "job_id": a.job_id,
                    "url": a.url,
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "width": a.width,
                    "height": a.height,
                    "bytes": a.size,
                    "sha256": a.sha256,
                    "tags": a.tags,
                }
                for a in delivery.assets
            ],
        },
    }


def sign(secrets: list[str], message_id: str, timestamp: int, body: str) -> str:
    from datetime import UTC, datetime

    when = datetime.fromtimestamp(timestamp, tz=UTC)
    return " ".join(Webhook(secret).sign(message_id, when, body) for secret in secrets)


class StandardWebhook(WebhookConnector[WebhookConfig]):
    kind: ClassVar[str] = "webhook"
    title: ClassVar[str] = "Webhook (Standard Webhooks signature)"
    Config: ClassVar[type[BaseModel]] = WebhookConfig

    async def test_connection(self) -> str:
        config = self.config
        body = json.dumps({"type": "imagegate.ping", "timestamp": utcnow().isoformat()}, separators=(",", ":"))
        await self._post(config, "ping_" + utcnow().strftime("%Y%m%d%H%M%S%f"), body)
        return f"{config.url} accepted a signed ping"

    async def deliver(self, delivery: Delivery) -> Delivered:
        body = json.dumps(payload(delivery), ensure_ascii=False, separators=(",", ":"))
        status = await self._post(self.config, delivery.idempotency_key, body)
        return Delivered(external_id=delivery.idempotency_key, detail={"status": status})

    async def _post(self, config: WebhookConfig, message_id: str, body: str) -> int:
        timestamp = int(utcnow().timestamp())
        secrets = [config.secret.get_secret_value()]
        if config.previous_secret is not None:
            secrets.append(config.previous_secret.get_secret_value())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secrets, message_id, timestamp, body),
        }
        from gateway.common.outbound import FetchFailed
        from policies.ssrf import UrlRefused

        try:
            response = await self.http.request("POST", config.url, content=body.encode(), headers=headers)
        except UrlRefused as exc:
            raise PermanentError(f"the webhook URL is not allowed: {exc}") from None
        except FetchFailed as exc:
            if exc.reason == "http_status" and exc.status_code is not None:
                raise _by_status(exc.status_code, exc.message, None) from None
            raise RetryableError(f"the receiver could not be reached: {exc.message}") from None
        if 200 <= response.status_code < 300:
            return response.status_code
        raise _by_status(
            response.status_code, response.text[:300], retry_after_seconds(response.headers.get("retry-after"))
        )


def _by_status(status: int, text: str, retry_after: float | None) -> Exception:
    message = f"the receiver answered {status}" + (f": {text}" if text else "")
    if 300 <= status < 400:
        return PermanentError(message + " (redirects are not followed: configure the final URL)", status=status)
    if status == 410:
        return PermanentError(message + " (gone: the receiver asks not to be sent this again)", status=status)
    if status in (408, 409, 425, 429) or status >= 500:
        return RetryableError(message, status=status, retry_after=retry_after)
    return PermanentError(message, status=status)
