"""HubSpot: the images go to the file manager, and the product's image property links the first one.

HubSpot products cannot carry attachments (notes cannot be associated with products), so each image is uploaded
with ``POST /files/v3/files`` (multipart: ``file``, ``fileName``, ``folderPath``, ``options`` with the configured
``access``) and the product's image property (``hs_images`` by default) is set to the first image's URL with
``PATCH /crm/v3/objects/products/{id}``. ``access`` is public (indexable or not): the image property needs a URL
that works without a signature, so ``PRIVATE`` is not offered.

Idempotency. Uploads have no idempotency key: a second upload is a second file. Each file's name is derived from
the delivery's idempotency key and the image (``<image name>-ig<12 hex of sha256(key, asset id)>.<ext>``), the same
on every attempt and unique per delivery target and image. An attempt

1. returns what ``delivery.external_id`` says when an earlier attempt completed (no call at all); otherwise
2. looks each name up with ``GET /files/v3/files/search?name=...`` (HubSpot matches names containing the text:
   the results are filtered on the exact name and folder) and reuses what it finds, then
3. uploads the missing ones with ``overwrite: true``. HubSpot's search is an index that can lag behind an upload
   by a little; if it has not seen an upload whose answer was lost, the overwrite replaces that file (same name,
   same folder, same URL) instead of adding a renamed copy beside it. The name only ever belongs to this image of
   this delivery, so nothing else can be overwritten.
4. PATCHes the product (setting a property to the value it has is harmless).

``external_id`` is the file ids, in the order of the images, comma-separated; ``url`` the first image's URL.

Errors: 401 (``INVALID_AUTHENTICATION``, ``EXPIRED_AUTHENTICATION``), 403 (``MISSING_SCOPES``: the private app
needs ``files`` and ``e-commerce``), a product that does not exist (404 ``OBJECT_NOT_FOUND``), an image property
that does not exist (400 ``VALIDATION_ERROR``) and other 4xx are permanent. 429 (HubSpot documents no
``Retry-After``: the wait is ``Retry-After`` when present, else the rate-limit window of
``X-HubSpot-RateLimit-Interval-Milliseconds`` for the ten-secondly limit), 5xx, timeouts and unreachable hosts
are retryable.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from connectors.base import (
    BaseUrl,
    CRMConnector,
    Delivered,
    DeliveredAsset,
    Delivery,
    DeliveryError,
    PermanentError,
    RetryableError,
    error_for_status,
    guarded_request,
    json_or_none,
    retry_after_seconds,
)

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class HubSpotConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: BaseUrl = Field(default="https://api.hubapi.com", max_length=300, description="HubSpot's API base URL")
    access_token: SecretStr = Field(description="A private app access token with the files and e-commerce scopes")
    folder_path: str = Field(
        default="/imagegate", min_length=1, max_length=200, description="File manager folder for the images"
    )
    access: Literal["PUBLIC_INDEXABLE", "PUBLIC_NOT_INDEXABLE"] = Field(
        default="PUBLIC_NOT_INDEXABLE", description="Who may open the files' URLs (public: the product links them)"
    )
    image_property: str = Field(
        default="hs_images",
        pattern=r"^[a-z0-9_]{1,100}$",
        description="The product property that gets the first image's URL",
    )

    @field_validator("folder_path")
    @classmethod
    def _folder(cls, value: str) -> str:
        return "/" + value.strip("/")


class HubSpotTarget(BaseModel):
    product_id: str = Field(pattern=r"^[0-9]{1,20}$", description="The product's record id")


def file_stem(delivery: Delivery, asset: DeliveredAsset) -> str:
    """The file name (without extension) of this image in this delivery: the same on every attempt."""
    digest = hashlib.sha256(f"{delivery.idempotency_key}\n{asset.id}".encode()).hexdigest()[:12]
    readable = _UNSAFE.sub("-", asset.filename.rsplit(".", 1)[0]).strip("-")[:80] or "image"
    return f"{readable}-ig{digest}"


def extension(asset: DeliveredAsset) -> str:
    return {"jpeg": "jpg"}.get(asset.format, asset.format)


class HubSpotConnector(CRMConnector[HubSpotConfig]):
    kind: ClassVar[str] = "hubspot"
    title: ClassVar[str] = "HubSpot (file manager + product image)"
    Config: ClassVar[type[BaseModel]] = HubSpotConfig
    Target: ClassVar[type[BaseModel]] = HubSpotTarget

    async def test_connection(self) -> str:
        config = self.config
        response = await self._call("GET", "/crm/v3/properties/products", "listing product properties")
        names = {p.get("name") for p in (json_or_none(response) or {}).get("results", []) if isinstance(p, dict)}
        if config.image_property not in names:
            raise PermanentError(
                f"the token works, but products have no property {config.image_property!r} "
                "(set image_property to one of the product's URL properties)"
            )
        return f"HubSpot accepted the token; products have the {config.image_property!r} property"

    async def deliver(self, delivery: Delivery) -> Delivered:
        try:
            target = HubSpotTarget.model_validate(delivery.target)
        except ValidationError as exc:
            raise PermanentError(f"invalid HubSpot target: {exc.errors()[0]['msg']}") from None
        if delivery.external_id:
            stored = delivery.external_id.split(",")
            return Delivered(
                external_id=delivery.external_id,
                detail={"file_ids": stored, "reused": stored, "product_id": target.product_id},
            )
        if not delivery.assets:
            raise PermanentError("the delivery has no images")
        ids: list[str] = []
        urls: list[str] = []
        reused: list[str] = []
        for asset in delivery.assets:
            stem = file_stem(delivery, asset)
            found = await self._find(stem, extension(asset))
            if found is None:
                found = await self._upload(asset, stem)
            else:
                reused.append(str(found["id"]))
            ids.append(str(found["id"]))
            urls.append(str(found.get("url") or found.get("defaultHostingUrl")))
        await self._set_image(target.product_id, urls[0])
        return Delivered(
            external_id=",".join(ids),
            url=urls[0],
            detail={"file_ids": ids, "urls": urls, "reused": reused, "product_id": target.product_id},
        )

    # -- the calls -----------------------------------------------------------------------------------------

    async def _find(self, stem: str, ext: str) -> dict[str, Any] | None:
        path = f"{self.config.folder_path.rstrip('/')}/{stem}.{ext}"
        response = await self._call(
            "GET", "/files/v3/files/search", f"the search for {stem}", params={"name": stem, "limit": "100"}
        )
        for item in (json_or_none(response) or {}).get("results", []):
            if isinstance(item, dict) and item.get("path") == path and not item.get("archived"):
                return item
        return None

    async def _upload(self, asset: DeliveredAsset, stem: str) -> dict[str, Any]:
        config = self.config
        data = await asset.read()
        name = f"{stem}.{extension(asset)}"
        options = {"access": config.access, "overwrite": True, "duplicateValidationStrategy": "NONE"}
        response = await self._call(
            "POST",
            "/files/v3/files",
            f"the upload of {name}",
            data={"fileName": name, "folderPath": config.folder_path, "options": json.dumps(options)},
            files={"file": (name, data, asset.content_type)},
        )
        body = json_or_none(response)
        if not isinstance(body, dict) or not body.get("id") or not (body.get("url") or body.get("defaultHostingUrl")):
            raise RetryableError(f"HubSpot accepted {name} but answered no file id and URL")
        return body

    async def _set_image(self, product_id: str, url: str) -> None:
        await self._call(
            "PATCH",
            f"/crm/v3/objects/products/{quote(product_id)}",
            f"the update of product {product_id}",
            json={"properties": {self.config.image_property: url}},
        )

    async def _call(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        config = self.config
        headers = {"Authorization": f"Bearer {config.access_token.get_secret_value()}", "Accept": "application/json"}
        response = await guarded_request(
            self.http,
            method,
            f"{config.base_url}{path}",
            refused=f"{what}: the HubSpot URL is not allowed",
            unreachable=f"{what}: HubSpot could not be reached",
            headers=headers,
            **kwargs,
        )
        if 200 <= response.status_code < 300:
            return response
        raise _error(response, what)


def _error(response: httpx.Response, what: str) -> DeliveryError:
    status = response.status_code
    body = json_or_none(response)
    body = body if isinstance(body, dict) else {}
    category = str(body.get("category") or body.get("errorType") or "")
    text = str(body.get("message") or response.text[:300]).strip()
    message = (
        f"{what}: HubSpot answered {status}" + (f" {category}" if category else "") + (f": {text}" if text else "")
    )
    if status == 429:
        retry_after = retry_after_seconds(response.headers.get("retry-after"))
        interval = response.headers.get("x-hubspot-ratelimit-interval-milliseconds", "")
        if retry_after is None and interval.isdigit() and body.get("policyName") != "DAILY":
            retry_after = int(interval) / 1000
        return RetryableError(message, status=status, retry_after=retry_after)
    if status == 401:
        return PermanentError(message + " (check the access token)", status=status)
    if status == 403:
        return PermanentError(message + " (the private app needs the files and e-commerce scopes)", status=status)
    if status == 404 and category == "OBJECT_NOT_FOUND":
        return PermanentError(message + " (does the product exist?)", status=status)
    return error_for_status(status, message, retry_after_seconds(response.headers.get("retry-after")))
