"""S3 connector: stores each image as an object in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2, ...).

* Deterministic keys: ``[<prefix>/]<key_template>``, by default ``assets/{system}/{yyyy}/{mm}/{asset_id}.{ext}``,
  with the date read from the job id (see :func:`connectors.paths.job_time`), so a retried PUT overwrites the
  object with the same bytes and metadata: harmless. The template must contain ``{asset_id}`` or ``{sha256}``, so
  two different images never share a key.
* Each PUT sends ``Content-Type``, ``Content-MD5`` (the store refuses a body damaged in transit), user metadata and
  up to 10 object tags (see :func:`object_metadata` and :func:`object_tags`).
* User metadata values are **percent-encoded UTF-8** (RFC 3986, as ``urllib.parse.quote``; decode with
  ``urllib.parse.unquote``): header values must be ASCII. Printable ASCII other than ``%`` is left as it is, so
  ASCII values stay readable. The total (``x-amz-meta-`` prefixes included, to be safe on stores that count them)
  is kept within S3's 2 KB: the prompt, then the tags are truncated first, and the ``truncated`` key lists what was.
* boto3 does its own HTTP, outside the gateway's guarded client, so before each call the host it will connect to is
  checked with the gateway's outbound policy (``self.http.policy``, as :class:`gateway.common.outbound.OutboundClient`
  does): an endpoint on a private, loopback or metadata address is refused (PermanentError) unless the operator
  allowlisted it. Caveat: boto3 resolves the name again when it connects; a name whose DNS answer changes between
  the check and the connect (DNS rebinding) is not caught. IP-literal endpoints, and names under the operator's
  control, do not have that gap.
* The relay owns retries: boto3's own retries are off (one attempt), timeouts are the gateway's outbound timeout,
  environment proxies and ``AWS_ENDPOINT_URL*`` settings are ignored, and the newer default CRC checksums are only
  sent when an operation requires them (several S3-compatible stores reject them).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import Callable
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from connectors.base import (
    DAMConnector,
    Delivered,
    DeliveredAsset,
    Delivery,
    DeliveryError,
    NoTarget,
    PermanentError,
    RetryableError,
    error_for_status,
    read_checked,
    retry_after_seconds,
    split_http_url,
    valid_target,
)
from connectors.paths import TEMPLATE_FIELDS, check_template, render_template

METADATA_BUDGET = 2048  # bytes of user metadata, S3's limit
MAX_TAGS = 10
MAX_KEY_BYTES = 1024
_META_PREFIX = "x-amz-meta-"
# Left as they are in metadata values: printable ASCII except '%' (letters, digits and "_.-~" always are).
_META_SAFE = " !\"#$&'()*+,/:;<=>?@[\\]^`{|}"
_TAG_UNSAFE = re.compile(r"[^\w .:/=+\-@]")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")

PERMANENT_CODES = {
    "NoSuchBucket": "the bucket does not exist",
    "404": "the bucket does not exist",
    "AccessDenied": "access denied (check the key's permissions on the bucket)",
    "403": "access denied (wrong credentials, or no permission on the bucket)",
    "InvalidAccessKeyId": "the access key id is not known to the store",
    "SignatureDoesNotMatch": "the secret access key is wrong",
    "InvalidBucketName": "the bucket name is not valid",
    "AuthorizationHeaderMalformed": "the region does not match the bucket's region",
    "PermanentRedirect": "the bucket is in another region or needs another endpoint",
    "BadDigest": "the Content-MD5 does not match the body",
    "InvalidDigest": "the Content-MD5 does not match the body",
    "EntityTooLarge": "the object is larger than the store accepts",
    "KeyTooLongError": "the object key is too long",
}
RETRYABLE_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequestsException",
        "RequestTimeout",
        "RequestTimeTooSkewed",  # our clock: fixable on our side, worth coming back
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
    }
)


class S3Config(BaseModel):
    """Settings of an S3-compatible bucket."""

    model_config = ConfigDict(extra="forbid")

    endpoint_url: str | None = Field(
        default=None,
        description="Endpoint of an S3-compatible store, e.g. https://minio.corp.example:9000 (scheme, host and "
        "port only). Empty for AWS S3 (https://s3.<region>.amazonaws.com). An internal endpoint must be on the "
        "gateway's outbound allowlist.",
        max_length=2048,
    )
    region: str = Field(
        default="us-east-1",
        description="Region used for signing (and for the AWS endpoint).",
        pattern=r"^[a-z0-9][a-z0-9-]{0,40}$",
    )
    bucket: str = Field(description="Bucket name (3-63 lowercase letters, digits, dots and hyphens).")
    access_key_id: str = Field(description="Access key id.", min_length=1, max_length=128)
    secret_access_key: SecretStr = Field(description="Secret access key.", min_length=1)
    prefix: str = Field(
        default="",
        description="Optional key prefix, joined to the key with '/' (e.g. 'imagegate').",
        max_length=256,
    )
    key_template: str = Field(
        default="assets/{system}/{yyyy}/{mm}/{asset_id}.{ext}",
        description="Object key of each image. Placeholders: "
        + ", ".join("{" + k + "}" for k in TEMPLATE_FIELDS)
        + ". Must contain {asset_id} or {sha256} so that keys are unique per image and the same on every retry.",
        max_length=512,
    )
    addressing_style: Literal["path", "virtual"] = Field(
        default="path",
        description="path: <endpoint>/<bucket>/<key> (works everywhere); virtual: <bucket>.<endpoint host>/<key> "
        "(needs wildcard DNS on the store).",
    )

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        parts = split_http_url(value, problem="must be an http:// or https:// URL with a host")
        if "@" in parts.netloc or parts.path or parts.query or parts.fragment:
            raise ValueError("must be scheme://host[:port] only (no user info, path, query or fragment)")
        return value

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not _BUCKET.fullmatch(value) or ".." in value:
            raise ValueError("must be 3-63 lowercase letters, digits, dots and hyphens")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        value = value.strip().strip("/")
        if "{" in value or "}" in value:
            raise ValueError("is literal text: no placeholders (use key_template for those)")
        if value:
            check_template(value, file_name=False)
        return value

    @field_validator("key_template")
    @classmethod
    def _key_template(cls, value: str) -> str:
        check_template(value, file_name=True)
        if "{asset_id}" not in value and "{sha256}" not in value:
            raise ValueError("must contain {asset_id} or {sha256}")
        return value

    @model_validator(mode="after")
    def _virtual_needs_name(self) -> S3Config:
        if self.addressing_style == "virtual" and self.endpoint_url:
            host = urlsplit(self.endpoint_url).hostname or ""
            if host.replace(".", "").isdigit() or ":" in host:
                raise ValueError("virtual addressing needs an endpoint host name, not an IP address")
        return self


def _aws_endpoint(region: str) -> str:
    return f"https://s3.{region}.amazonaws.com" + (".cn" if region.startswith("cn-") else "")


def encode_meta(value: str) -> str:
    """A metadata value as ASCII: percent-encoded UTF-8, printable ASCII except '%' left as it is."""
    return quote(value.strip(), safe=_META_SAFE)


def _fit(key: str, value: str, room: int) -> str | None:
    """The longest prefix of ``value`` whose encoded form fits in ``room`` bytes with its key; None if none does."""
    cost = len(_META_PREFIX) + len(key)
    if cost + len(encode_meta(value)) <= room:
        return encode_meta(value)
    low, high = 0, len(value)
    while low < high:  # largest n with cost + len(encode(value[:n])) <= room
        middle = (low + high + 1) // 2
        if cost + len(encode_meta(value[:middle])) <= room:
            low = middle
        else:
            high = middle - 1
    # A few characters of a long value say nothing: leave it out instead.
    return encode_meta(value[:low]) if low >= min(len(value), 16) else None


def object_metadata(delivery: Delivery, asset: DeliveredAsset, budget: int = METADATA_BUDGET) -> dict[str, str]:
    """``x-amz-meta-*`` values (keys without the prefix): asset id, sha256, job id, record id, role, system, template,
    delivery key, tags (comma-joined) and prompt, in that priority, within ``budget`` bytes."""
    meta = delivery.metadata
    items: list[tuple[str, str | None]] = [
        ("asset-id", asset.id),
        ("sha256", asset.sha256),
        ("job-id", asset.job_id),
        ("record-id", _text(meta.get("record_id"))),
        ("role", _text(meta.get("role"))),
        ("system", delivery.system),
        ("template", _text(meta.get("template"))),
        ("idempotency-key", delivery.idempotency_key),
        ("tags", ",".join(t.replace(",", " ") for t in asset.tags) or None),
        ("prompt", _text(meta.get("prompt"))),
    ]
    # Room for the "truncated" entry, whichever keys it ends up listing.
    reserve = len(_META_PREFIX) + len("truncated") + len(",".join(key for key, _ in items))
    result: dict[str, str] = {}
    truncated: list[str] = []
    used = 0
    for key, value in items:
        if value is None:
            continue
        room = budget - reserve - used
        encoded = _fit_tags(key, asset.tags, room) if key == "tags" else _fit(key, value, room)
        if encoded is None:
            truncated.append(key)
            continue
        if encoded != encode_meta(value):
            truncated.append(key)
        result[key] = encoded
        used += len(_META_PREFIX) + len(key) + len(encoded)
    if truncated:
        result["truncated"] = encode_meta(",".join(truncated))
    return result


def _fit_tags(key: str, tags: list[str], room: int) -> str | None:
    """Whole tags only: as many as fit."""
    kept: list[str] = []
    for tag in tags:
        candidate = ",".join([*kept, tag.replace(",", " ")])
        if len(_META_PREFIX) + len(key) + len(encode_meta(candidate)) > room:
            break
        kept.append(tag.replace(",", " "))
    return encode_meta(",".join(kept)) if kept else None


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def _tag_text(value: str, limit: int) -> str:
    return _TAG_UNSAFE.sub("_", value.strip())[:limit]


def object_tags(delivery: Delivery, asset: DeliveredAsset) -> list[tuple[str, str]]:
    """Up to 10 object tags: ``imagegate:system``, ``imagegate:record-id``, ``imagegate:role`` when known, then each
    image tag as a key with an empty value. Characters S3 refuses in tags become ``_``; keys <= 128, values <= 256."""
    meta = delivery.metadata
    pairs: list[tuple[str, str]] = [("imagegate:system", delivery.system)]
    for key, field in (("imagegate:record-id", "record_id"), ("imagegate:role", "role")):
        value = _text(meta.get(field))
        if value:
            pairs.append((key, value))
    pairs.extend((tag, "") for tag in asset.tags)
    seen: set[str] = set()
    tags: list[tuple[str, str]] = []
    for key, value in pairs:
        clean_key = _tag_text(key, 128)
        if not clean_key or clean_key in seen or clean_key.startswith("aws:"):
            continue
        seen.add(clean_key)
        tags.append((clean_key, _tag_text(value, 256)))
        if len(tags) == MAX_TAGS:
            break
    return tags


def _tagging(tags: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in tags)


class S3Connector(DAMConnector[S3Config]):
    """Stores each image in an S3-compatible bucket under a deterministic key; see the module docstring."""

    kind: ClassVar[str] = "s3"
    title: ClassVar[str] = "S3-compatible object storage"
    Config: ClassVar[type[BaseModel]] = S3Config
    Target: ClassVar[type[BaseModel]] = NoTarget

    _boto: Any = None  # the boto3 client, made on first use (in a worker thread: it loads JSON models)

    @property
    def endpoint(self) -> str:
        return self.config.endpoint_url or _aws_endpoint(self.config.region)

    async def test_connection(self) -> str:
        await self._call("head_bucket", Bucket=self.config.bucket)
        return f"bucket {self.config.bucket} at {self.endpoint} is reachable and the credentials are accepted"

    async def deliver(self, delivery: Delivery) -> Delivered:
        valid_target(NoTarget, delivery)
        objects: list[dict[str, Any]] = []
        for asset in delivery.assets:
            key = self.key_for(delivery, asset)
            data = await read_checked(asset)
            md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")
            answer = await self._call(
                "put_object",
                Bucket=self.config.bucket,
                Key=key,
                Body=data,
                ContentType=asset.content_type,
                ContentMD5=md5,
                Metadata=object_metadata(delivery, asset),
                Tagging=_tagging(object_tags(delivery, asset)),
            )
            objects.append(
                {
                    "asset_id": asset.id,
                    "key": key,
                    "etag": answer.get("ETag"),
                    "version_id": answer.get("VersionId"),
                    "url": self.object_url(key),
                }
            )
        keys = [o["key"] for o in objects]
        return Delivered(
            external_id="\n".join(keys),
            url=f"s3://{self.config.bucket}/{keys[0]}" if keys else None,
            detail={"bucket": self.config.bucket, "endpoint": self.endpoint, "objects": objects},
        )

    def key_for(self, delivery: Delivery, asset: DeliveredAsset) -> str:
        """The object key of ``asset``: the same on every attempt."""
        key = "/".join(render_template(self.config.key_template, delivery, asset))
        if self.config.prefix:
            key = f"{self.config.prefix}/{key}"
        if len(key.encode("utf-8")) > MAX_KEY_BYTES:
            raise PermanentError(f"the object key is longer than {MAX_KEY_BYTES} bytes")
        return key

    def object_url(self, key: str) -> str:
        """The object's HTTP URL (not signed: it opens only if the bucket policy allows)."""
        parts = urlsplit(self.endpoint)
        path = quote(key, safe="/~")
        if self.config.addressing_style == "virtual":
            return f"{parts.scheme}://{self.config.bucket}.{parts.netloc}/{path}"
        return f"{self.endpoint}/{self.config.bucket}/{path}"

    # -- the guarded boto3 call -----------------------------------------------------------------------------------

    async def _check_endpoint(self) -> None:
        """Refuse, before any connection, a host the gateway's outbound policy does not allow."""
        from policies.ssrf import UrlRefused, parse_url, resolve_host

        policy = self.http.policy
        try:
            parsed = parse_url(self.endpoint, policy)
            host = parsed.host
            if self.config.addressing_style == "virtual":
                host = f"{self.config.bucket}.{host}"
            async with asyncio.timeout(self.http.timeout):
                await resolve_host(host, parsed.port, policy)
        except UrlRefused as exc:
            raise PermanentError(f"the S3 endpoint is refused by the outbound policy: {exc.message}") from None
        except TimeoutError:
            raise RetryableError(f"resolving the S3 endpoint {self.endpoint} took too long") from None

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        await self._check_endpoint()
        try:
            answer: dict[str, Any] = await asyncio.to_thread(self._invoke, operation, params)
        except DeliveryError:
            raise
        except Exception as exc:
            raise _map_error(operation, exc) from None
        return answer

    def _invoke(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        method: Callable[..., dict[str, Any]] = getattr(self._client(), operation)
        return method(**params)

    def _client(self) -> Any:
        if self._boto is None:
            import boto3
            from botocore.config import Config as BotoConfig

            timeout = self.http.timeout
            session = boto3.session.Session(
                aws_access_key_id=self.config.access_key_id,
                aws_secret_access_key=self.config.secret_access_key.get_secret_value(),
                region_name=self.config.region,
            )
            self._boto = session.client(
                "s3",
                endpoint_url=self.endpoint,
                config=BotoConfig(
                    # total_max_attempts counts the first attempt; max_attempts would mean "1 retry" (2 requests).
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    connect_timeout=timeout,
                    read_timeout=timeout,
                    s3={"addressing_style": self.config.addressing_style},
                    proxies={},  # not None: None makes botocore read HTTP(S)_PROXY from the environment
                    ignore_configured_endpoint_urls=True,
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    user_agent_extra="imagegate",
                ),
            )
        return self._boto


def _map_error(operation: str, exc: Exception) -> DeliveryError:
    """A botocore exception as the relay's Retryable/PermanentError (never with a secret in the message)."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        HTTPClientError,
        ReadTimeoutError,
    )

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        meta = exc.response.get("ResponseMetadata", {})
        status = meta.get("HTTPStatusCode")
        retry_after = retry_after_seconds(meta.get("HTTPHeaders", {}).get("retry-after"))
        text = PERMANENT_CODES.get(code) or str(error.get("Message") or "") or "no message"
        message = f"S3 {operation} failed: {code or status} ({text})"
        if code in PERMANENT_CODES:
            return PermanentError(message, status=status)
        if code in RETRYABLE_CODES:
            return RetryableError(message, status=status, retry_after=retry_after)
        if isinstance(status, int):
            return error_for_status(status, message, retry_after)
        return PermanentError(message)
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError | ConnectionClosedError):
        return RetryableError(f"S3 {operation}: the endpoint could not be reached ({type(exc).__name__})")
    if isinstance(exc, HTTPClientError):
        return RetryableError(f"S3 {operation}: the connection failed ({type(exc).__name__})")
    if isinstance(exc, BotoCoreError):
        return PermanentError(f"S3 {operation} failed: {type(exc).__name__}: {exc}")
    if isinstance(exc, OSError):
        return RetryableError(f"S3 {operation}: {type(exc).__name__}")
    return PermanentError(f"S3 {operation} failed: {type(exc).__name__}")
