"""Salesforce: each image becomes a File (a ContentVersion) published to a Product2 record.

Authentication is the OAuth 2.0 client credentials flow of a connected app (``POST
<instance_url>/services/oauth2/token``): a new token for every delivery and every test, as the flow has no refresh
token; the token's ``instance_url`` is where the REST calls go. A token that expires mid-delivery (401
``INVALID_SESSION_ID``) is replaced once.

Each image is one ``POST /services/data/<api_version>/sobjects/ContentVersion`` with ``FirstPublishLocationId`` set
to the record, which shares the new file with it. The JSON form (``VersionData`` in base64) is used up to
Salesforce's 50 MB request limit; a larger image goes as multipart (``entity_content`` + ``VersionData``), which
takes files up to 2 GB.

Idempotency. Salesforce has no idempotency key: inserting twice makes two files. Every ContentVersion carries a
marker in its ``Description``: ``imagegate:<delivery idempotency key>:<asset id>`` (the same on every attempt,
unique per delivery target and image; Description is filterable in SOQL, and shows in the file's details as where
it came from). Before creating anything an attempt

1. returns what ``delivery.external_id`` says when an earlier attempt already completed (no call at all), then
2. asks ``SELECT Id, Description FROM ContentVersion WHERE Description IN (<markers>)`` and reuses each file
   that exists (an earlier attempt whose answer was lost, or one that failed half-way through several images),
   creating only the missing ones.

SOQL sees a ContentVersion as soon as its insert commits, and the integration user sees the files it owns, so the
query finds what any earlier attempt created. The delivery's ``external_id`` is the ContentVersion ids, in the
order of the images, comma-separated.

Errors: a refused client (``invalid_client``, ``invalid_client_id``, ``invalid_grant``), 401 after a fresh token,
a record that does not exist (``FIELD_INTEGRITY_EXCEPTION``, ``MALFORMED_ID``, ``INVALID_CROSS_REFERENCE_KEY``,
``ENTITY_IS_DELETED``) and other 4xx are permanent; 429, 5xx, ``REQUEST_LIMIT_EXCEEDED``, ``SERVER_UNAVAILABLE``,
the token endpoint's ``unknown_error`` ("retry your request"), timeouts and unreachable hosts are retryable, with
the ``Retry-After`` the server gave.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

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

JSON_REQUEST_LIMIT = 52_428_800  # Salesforce's non-multipart request limit (50 MB of text)
MARKERS_PER_QUERY = 40  # ~100 characters each: a query URL of a few kB
SALESFORCE_ID = r"^[a-zA-Z0-9]{15}(?:[a-zA-Z0-9]{3})?$"
MISSING_RECORD = {
    "FIELD_INTEGRITY_EXCEPTION",
    "MALFORMED_ID",
    "INVALID_CROSS_REFERENCE_KEY",
    "ENTITY_IS_DELETED",
    "INVALID_ID_FIELD",
}
RETRYABLE_CODES = {"REQUEST_LIMIT_EXCEEDED", "SERVER_UNAVAILABLE", "UNABLE_TO_LOCK_ROW", "QUERY_TIMEOUT"}


class SalesforceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    instance_url: BaseUrl = Field(
        min_length=10,
        max_length=300,
        description="The org's My Domain URL, where the token is asked for (e.g. https://acme.my.salesforce.com)",
    )
    client_id: str = Field(min_length=1, max_length=300, description="The connected app's consumer key")
    client_secret: SecretStr = Field(description="The connected app's consumer secret")
    api_version: str = Field(default="v61.0", pattern=r"^v\d{2,3}\.0$", description="REST API version, e.g. v61.0")


class SalesforceTarget(BaseModel):
    record_id: str = Field(pattern=SALESFORCE_ID, description="The Product2 (or any record) Id the files go to")


def marker(delivery: Delivery, asset: DeliveredAsset) -> str:
    """What this image's ContentVersion carries in its Description: the same on every attempt."""
    return f"imagegate:{delivery.idempotency_key}:{asset.id}"


def soql_string(value: str) -> str:
    """A SOQL string literal."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    return f"'{escaped}'"


@dataclass
class Session:
    token: str
    instance_url: str


class SalesforceConnector(CRMConnector[SalesforceConfig]):
    kind: ClassVar[str] = "salesforce"
    title: ClassVar[str] = "Salesforce (Files on a record)"
    Config: ClassVar[type[BaseModel]] = SalesforceConfig
    Target: ClassVar[type[BaseModel]] = SalesforceTarget

    async def test_connection(self) -> str:
        session = await self._login()
        return f"{self.config.instance_url} issued a token (client credentials); API at {session.instance_url}"

    async def deliver(self, delivery: Delivery) -> Delivered:
        try:
            target = SalesforceTarget.model_validate(delivery.target)
        except ValidationError as exc:
            raise PermanentError(f"invalid Salesforce target: {exc.errors()[0]['msg']}") from None
        if delivery.external_id:
            # An earlier attempt completed and recorded its files: nothing to create.
            stored = delivery.external_id.split(",")
            return Delivered(
                external_id=delivery.external_id,
                url=self._record_url(self.config.instance_url, target.record_id),
                detail={"content_version_ids": stored, "reused": stored, "record_id": target.record_id},
            )
        session = await self._login()
        markers = {asset.id: marker(delivery, asset) for asset in delivery.assets}
        existing = await self._find(session, list(markers.values()))
        ids: list[str] = []
        reused: list[str] = []
        for asset in delivery.assets:
            found = existing.get(markers[asset.id])
            if found is not None:
                ids.append(found)
                reused.append(found)
                continue
            ids.append(await self._create(session, asset, target.record_id, markers[asset.id]))
        return Delivered(
            external_id=",".join(ids),
            url=self._record_url(session.instance_url, target.record_id),
            detail={"content_version_ids": ids, "reused": reused, "record_id": target.record_id},
        )

    # -- the calls -----------------------------------------------------------------------------------------

    async def _login(self) -> Session:
        config = self.config
        response = await self._send(
            "POST",
            f"{config.instance_url}/services/oauth2/token",
            "the token request",
            data={
                "grant_type": "client_credentials",
                "client_id": config.client_id,
                "client_secret": config.client_secret.get_secret_value(),
            },
            headers={"Accept": "application/json"},
        )
        body = json_or_none(response)
        if response.status_code == 200 and isinstance(body, dict) and body.get("access_token"):
            instance = str(body.get("instance_url") or config.instance_url).rstrip("/")
            if not instance.startswith(("https://", "http://")):
                raise PermanentError(f"Salesforce answered an unusable instance_url {instance!r}")
            return Session(token=str(body["access_token"]), instance_url=instance)
        error = body.get("error") if isinstance(body, dict) else None
        description = body.get("error_description") if isinstance(body, dict) else None
        message = f"Salesforce refused the token request ({response.status_code} {error or ''}: {description or ''})"
        if error == "unknown_error" or response.status_code in (408, 425, 429) or response.status_code >= 500:
            raise RetryableError(
                message,
                status=response.status_code,
                retry_after=retry_after_seconds(response.headers.get("retry-after")),
            )
        raise PermanentError(message + "; check the connected app's client id, secret and run-as user", status=400)

    async def _api(self, session: Session, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        """One REST call; a 401 gets a fresh token once (the session may have expired mid-delivery)."""
        url = f"{session.instance_url}/services/data/{self.config.api_version}{path}"
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {session.token}", "Accept": "application/json"}
            response = await self._send(method, url, what, headers=headers, **kwargs)
            if response.status_code != 401 or attempt == 2:
                return response
            fresh = await self._login()
            session.token, session.instance_url = fresh.token, fresh.instance_url
            url = f"{session.instance_url}/services/data/{self.config.api_version}{path}"
        raise AssertionError("unreachable")

    async def _find(self, session: Session, markers: list[str]) -> dict[str, str]:
        """Marker -> ContentVersion id of the files earlier attempts created (queried in groups, so that the
        query stays well inside a URL's length)."""
        found: dict[str, str] = {}
        for start in range(0, len(markers), MARKERS_PER_QUERY):
            group = markers[start : start + MARKERS_PER_QUERY]
            literals = ", ".join(soql_string(m) for m in group)  # escaped by soql_string
            soql = f"SELECT Id, Description FROM ContentVersion WHERE Description IN ({literals})"  # noqa: S608
            response = await self._api(session, "GET", "/query", "the SOQL query", params={"q": soql})
            body = json_or_none(response)
            if response.status_code != 200 or not isinstance(body, dict):
                raise _error(response, body, "the SOQL query for files of earlier attempts")
            for row in body.get("records") or []:
                description = row.get("Description")
                if description in group and row.get("Id"):  # SOQL compares text case-insensitively: recheck
                    found.setdefault(description, str(row["Id"]))
        return found

    async def _create(self, session: Session, asset: DeliveredAsset, record_id: str, mark: str) -> str:
        data = await asset.read()
        fields = {
            "Title": asset.filename.rsplit(".", 1)[0],
            "PathOnClient": asset.filename,
            "FirstPublishLocationId": record_id,
            "Description": mark,
        }
        encoded = base64.b64encode(data).decode("ascii")
        body_size = len(encoded) + len(json.dumps(fields)) + 32
        if body_size <= JSON_REQUEST_LIMIT:
            kwargs: dict[str, Any] = {"json": {**fields, "VersionData": encoded}}
        else:
            kwargs = {
                "files": {
                    "entity_content": (None, json.dumps(fields), "application/json"),
                    "VersionData": (asset.filename, data, asset.content_type),
                }
            }
        what = f"the upload of {asset.filename}"
        response = await self._api(session, "POST", "/sobjects/ContentVersion", what, **kwargs)
        body = json_or_none(response)
        if response.status_code in (200, 201) and isinstance(body, dict) and body.get("id"):
            return str(body["id"])
        raise _error(response, body, what, record_id=record_id)

    async def _send(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        return await guarded_request(
            self.http,
            method,
            url,
            refused=f"{what}: the Salesforce URL is not allowed",
            unreachable=f"{what}: Salesforce could not be reached",
            **kwargs,
        )

    @staticmethod
    def _record_url(instance_url: str, record_id: str) -> str:
        return f"{instance_url}/lightning/r/{record_id}/view"


def _error(response: httpx.Response, body: Any, what: str, *, record_id: str | None = None) -> DeliveryError:
    """The DeliveryError for a REST error answer ``[{"message", "errorCode", "fields"}]``."""
    status = response.status_code
    first = body[0] if isinstance(body, list) and body and isinstance(body[0], dict) else {}
    code = str(first.get("errorCode") or "")
    text = str(first.get("message") or response.text[:300]).strip()
    message = f"{what}: Salesforce answered {status}" + (f" {code}" if code else "") + (f": {text}" if text else "")
    retry_after = retry_after_seconds(response.headers.get("retry-after"))
    if status == 401:
        return PermanentError(message + " (even with a fresh token: check the run-as user's API access)", status=status)
    if code in MISSING_RECORD and record_id is not None:
        return PermanentError(f"{message} (does record {record_id} exist?)", status=status)
    if code in RETRYABLE_CODES:
        return RetryableError(message, status=status, retry_after=retry_after)
    return error_for_status(status, message, retry_after)
