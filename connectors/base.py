"""The connector contract: what a delivery plugin is given, what it returns, and how it fails.

A connector pushes a job's (or a batch's) images into one target: a CRM record, an OA chat or approver, a DAM
store, a webhook. It is a class with

* ``kind`` (its name in ``imagegate.connectors``), ``capability`` (``crm``, ``oa``, ``dam`` or ``webhook``),
* ``Config``: a pydantic model of its settings (its JSON schema is what the admin console renders; ``SecretStr``
  fields are secrets: encrypted at rest, never returned),
* ``Target``: a pydantic model of the fields a request gives per delivery (``{"connector": "crm-prod",
  "record_id": "01t..."}``),
* ``test_connection()`` and ``deliver(delivery) -> Delivered``.

A fresh instance is made for every use, with its config and an outbound HTTP client (the gateway's SSRF guard and
timeouts): a connector keeps no state between deliveries. The relay owns retries: ``deliver`` makes one attempt
and raises :class:`RetryableError` (the target may accept it later: 5xx, 429, timeouts) or :class:`PermanentError`
(retrying cannot help: bad credentials, a record that does not exist, a 4xx). Every delivery carries an
``idempotency_key`` that is the same on every attempt: a connector passes it to the receiver (``webhook-id``,
DingTalk ``msgUuid``, a deterministic object key) or uses ``delivery.external_id`` (what an earlier attempt
stored) to avoid a second effect.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from gateway.common.outbound import OutboundClient

Capability = Literal["crm", "oa", "dam", "webhook"]


class DeliveryError(Exception):
    """One attempt failed. ``status`` is the receiver's HTTP status if it answered; ``retry_after`` seconds if it
    said when to come back (429/503 ``Retry-After``)."""

    retryable: ClassVar[bool] = True

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


class RetryableError(DeliveryError):
    """The target may accept it later (it is down, busy, timed out, answered 5xx or 429)."""


class PermanentError(DeliveryError):
    """Retrying cannot help (bad credentials, a missing record, a refused payload): the delivery becomes dead."""

    retryable = False


def error_for_status(status: int, message: str, retry_after: float | None = None) -> DeliveryError:
    """The usual reading of an HTTP status: 408, 425, 429 and 5xx are worth retrying, other 4xx (and 3xx) not."""
    if status in (408, 425, 429) or status >= 500:
        return RetryableError(message, status=status, retry_after=retry_after)
    return PermanentError(message, status=status)


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    from gateway.common.time import utcnow

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - utcnow()).total_seconds())


@dataclass(frozen=True)
class DeliveredAsset:
    """One image of the delivery. ``read()`` gives its bytes; ``url`` is an expiring signed link that works
    without a token (for targets that take a link: chat robots, webhooks)."""

    id: str
    job_id: str
    index: int
    format: str
    content_type: str
    width: int
    height: int
    sha256: str
    size: int  # bytes
    seed: int
    url: str
    filename: str  # readable and unique in the delivery: <record>_<job name>[_<n>].<ext>
    tags: list[str] = field(default_factory=list)
    caption: str | None = None
    read: Callable[[], Awaitable[bytes]] = field(default=lambda: _no_bytes(), repr=False, compare=False)


async def _no_bytes() -> bytes:
    raise RuntimeError("this asset's bytes are not available")


@dataclass(frozen=True)
class Delivery:
    """What one outbox row delivers."""

    id: str  # the delivery (dlv_...)
    idempotency_key: str  # the same on every attempt of this (job or batch, target)
    event: Literal["job.succeeded", "job.failed", "batch.completed"]
    system: str  # the calling system's name
    assets: list[DeliveredAsset]
    target: dict[str, Any]  # the request's target fields, validated by the connector's Target model
    attempt: int  # 1 on the first attempt
    job_id: str | None = None
    batch_id: str | None = None
    external_id: str | None = None  # what an earlier attempt of this delivery recorded (check before creating)
    metadata: dict[str, Any] = field(default_factory=dict)  # prompt, template, record id, role, tags, ...


@dataclass(frozen=True)
class Delivered:
    """The receiver's id and link for what was delivered (a ContentVersion id, an object key, a message id)."""

    external_id: str | None = None
    url: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class NoTarget(BaseModel):
    """A connector that needs nothing per delivery."""

    model_config = ConfigDict(extra="forbid")


class Connector(abc.ABC):
    """Base of every connector. Subclass one of the capability bases below."""

    kind: ClassVar[str]
    capability: ClassVar[Capability]
    title: ClassVar[str] = ""
    Config: ClassVar[type[BaseModel]]
    Target: ClassVar[type[BaseModel]] = NoTarget

    def __init__(self, config: BaseModel, *, http: OutboundClient) -> None:
        self.config = config
        self.http = http

    @abc.abstractmethod
    async def test_connection(self) -> str:
        """Check the configuration reaches the target and is accepted; returns a short description of what was
        checked. Raises a DeliveryError (with the target's reason) when it does not work."""

    @abc.abstractmethod
    async def deliver(self, delivery: Delivery) -> Delivered:
        """Make one attempt to deliver; raise RetryableError or PermanentError when it fails."""


class CRMConnector(Connector):
    """Attaches images to a CRM record (the record's id is in the target)."""

    capability: ClassVar[Capability] = "crm"


class OAConnector(Connector):
    """Notifies people (a group chat, approvers by email) with the images or links to them."""

    capability: ClassVar[Capability] = "oa"


class DAMConnector(Connector):
    """Stores the images in an asset store (S3, WebDAV, a folder) with their metadata, under deterministic names."""

    capability: ClassVar[Capability] = "dam"


class WebhookConnector(Connector):
    """Posts a signed event to a URL the caller runs."""

    capability: ClassVar[Capability] = "webhook"
