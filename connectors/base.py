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

Also here, for every connector: field types of Config models (:data:`BaseUrl`, :data:`EndpointUrl`,
:data:`TitleTemplate`) and the steps most attempts take (:func:`guarded_request`, :func:`valid_target`,
:func:`read_checked`, :func:`json_or_none`).
"""

from __future__ import annotations

import abc
import hashlib
import string
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, Literal, TypeVar
from urllib.parse import SplitResult, urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    import httpx

    from gateway.common.outbound import OutboundClient

Capability = Literal["crm", "oa", "dam", "webhook"]
ConfigT = TypeVar("ConfigT", bound=BaseModel)
ModelT = TypeVar("ModelT", bound=BaseModel)


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


# -- helpers --------------------------------------------------------------------------------------------------------


def invalid_target(exc: ValidationError) -> PermanentError:
    """The PermanentError for a target that does not fit the connector's Target model, naming every problem."""
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'target'}: {e['msg']}" for e in exc.errors())
    return PermanentError(f"invalid target: {problems}")


def valid_target(model: type[ModelT], delivery: Delivery) -> ModelT:
    """``delivery.target`` as ``model``; raises :func:`invalid_target`'s PermanentError when it does not fit."""
    try:
        return model.model_validate(delivery.target)
    except ValidationError as exc:
        raise invalid_target(exc) from None


async def read_checked(asset: DeliveredAsset) -> bytes:
    """The asset's bytes, checked against its recorded SHA-256 (PermanentError when they differ)."""
    data = await asset.read()
    if hashlib.sha256(data).hexdigest() != asset.sha256:
        raise PermanentError(f"the bytes of {asset.id} do not match their recorded sha256")
    return data


def json_or_none(response: httpx.Response) -> Any:
    """The answer's JSON, or None when its body is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


async def guarded_request(
    http: OutboundClient, method: str, url: str, *, refused: str, unreachable: str, **kwargs: Any
) -> httpx.Response:
    """One request through the gateway's guarded client (``kwargs`` as :meth:`OutboundClient.request`'s), whatever
    the status it answers. A URL the outbound policy refuses (a redirect included) is a PermanentError
    ``"<refused>: <why>"``; a host that does not answer in time, or at all, a RetryableError ``"<unreachable>: <why>"``.
    """
    from gateway.common.outbound import FetchFailed
    from policies.ssrf import UrlRefused

    try:
        return await http.request(method, url, **kwargs)
    except UrlRefused as exc:
        raise PermanentError(f"{refused}: {exc.message}") from None
    except FetchFailed as exc:
        raise RetryableError(f"{unreachable}: {exc.message}") from None


# -- field types shared by the connectors' Config models --------------------------------------------------------------


def _http_url(value: str) -> str:
    if not value.startswith(("https://", "http://")):
        raise ValueError("an http(s) URL")
    return value


def _base_url(value: str) -> str:
    return _http_url(value).rstrip("/")


def split_http_url(value: str, *, problem: str = "must be an http:// or https:// URL") -> SplitResult:
    """The parts of an http(s) URL with a host (for a field validator); ValueError "not a valid URL" when it
    cannot be parsed (or has a bad port), ``problem`` when it is not http(s) or has no host."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError("not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(problem)
    return parts


#: An http(s) URL used exactly as given (a webhook or robot endpoint: a trailing "/" may matter to the receiver).
EndpointUrl = Annotated[str, AfterValidator(_http_url)]
#: An http(s) URL that paths are appended to: a trailing "/" is removed.
BaseUrl = Annotated[str, AfterValidator(_base_url)]


def parse_template(template: str) -> list[tuple[str, str | None, str | None, str | None]]:
    """``(literal, name, format spec, conversion)`` of each part of a ``str.format`` template (a name of None: only
    literal text); ValueError "not a valid template: ..." when it is not one."""
    try:
        return list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"not a valid template: {exc}") from None


#: The placeholders a chat message's title template may use (DingTalk, Feishu, WeCom).
TITLE_FIELDS = {"record_id", "role", "template", "system", "count", "event", "job_id", "batch_id"}


def check_title_template(value: str | None) -> str | None:
    """A title template may use ``{record_id}``, ``{role}``, ``{template}``, ``{system}``, ``{count}``,
    ``{event}``, ``{job_id}``, ``{batch_id}`` (plain names only: no attributes, indexes or conversions)."""
    if value is None:
        return None
    for _, name, spec, conversion in parse_template(value):
        if name is None:
            continue
        if name not in TITLE_FIELDS or conversion or spec:
            raise ValueError(f"unknown placeholder {{{name}}}; allowed: {', '.join(sorted(TITLE_FIELDS))}")
    return value


#: An optional message title template, checked by :func:`check_title_template`.
TitleTemplate = Annotated[str | None, AfterValidator(check_title_template)]


class NoTarget(BaseModel):
    """A connector that needs nothing per delivery."""

    model_config = ConfigDict(extra="forbid")


class Connector(abc.ABC, Generic[ConfigT]):
    """Base of every connector. Subclass one of the capability bases below, with the Config model as its type
    parameter (``class AcmeConnector(CRMConnector[AcmeConfig])``) so that ``self.config`` is typed as that model;
    a subclass without the parameter works too (its ``self.config`` is then untyped)."""

    kind: ClassVar[str]
    capability: ClassVar[Capability]
    title: ClassVar[str] = ""
    Config: ClassVar[type[BaseModel]]  # the ConfigT model (a ClassVar cannot name a type variable)
    Target: ClassVar[type[BaseModel]] = NoTarget

    def __init__(self, config: ConfigT, *, http: OutboundClient) -> None:
        self.config: ConfigT = config
        self.http = http

    @abc.abstractmethod
    async def test_connection(self) -> str:
        """Check the configuration reaches the target and is accepted; returns a short description of what was
        checked. Raises a DeliveryError (with the target's reason) when it does not work."""

    @abc.abstractmethod
    async def deliver(self, delivery: Delivery) -> Delivered:
        """Make one attempt to deliver; raise RetryableError or PermanentError when it fails."""


class CRMConnector(Connector[ConfigT]):
    """Attaches images to a CRM record (the record's id is in the target)."""

    capability: ClassVar[Capability] = "crm"


class OAConnector(Connector[ConfigT]):
    """Notifies people (a group chat, approvers by email) with the images or links to them."""

    capability: ClassVar[Capability] = "oa"


class DAMConnector(Connector[ConfigT]):
    """Stores the images in an asset store (S3, WebDAV, a folder) with their metadata, under deterministic names."""

    capability: ClassVar[Capability] = "dam"


class WebhookConnector(Connector[ConfigT]):
    """Posts a signed event to a URL the caller runs."""

    capability: ClassVar[Capability] = "webhook"
