"""Odoo: the first image becomes the product template's main image (``image_1920``).

Two protocols:

* ``jsonrpc`` (Odoo 8 to 19; deprecated from 19): ``POST /jsonrpc`` ``common.authenticate [db, login, api_key, {}]``
  gives the uid (``false`` for wrong credentials), then ``object.execute_kw [db, uid, api_key, "product.template",
  "write", [[id], {"image_1920": "<base64>"}]]``. Every answer is HTTP 200; errors are in the body
  (``error.data.name`` is the Odoo exception).
* ``json2`` (Odoo 19+): ``POST /json/2/product.template/write`` with ``Authorization: bearer <api key>``,
  ``X-Odoo-Database`` and ``{"ids": [id], "vals": {"image_1920": "<base64>"}}``; errors are HTTP statuses with
  ``{"name", "message", ...}``.

Idempotency: writing ``image_1920`` sets the record's image; writing the same image again leaves the record as it
was. A retried delivery simply writes again, so no earlier attempt needs to be looked up. A product template has one
main image: further images of the delivery are not written (they are listed in the result's ``detail``). Odoo scales
an image larger than 1920x1920 down to fit, so the stored bytes equal the sent ones only up to that size.

Errors: wrong credentials (``false`` from authenticate, ``AccessDenied``, 401), a product template that does not
exist (``MissingError``, 404), refused access (``AccessError``, 403), an image Odoo cannot read (``UserError``,
422), an unknown database and other client errors are permanent; 429, 5xx, Odoo's lock and concurrency errors,
timeouts and unreachable hosts are retryable.
"""

from __future__ import annotations

import base64
import itertools
from typing import Any, ClassVar, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from connectors.base import (
    BaseUrl,
    CRMConnector,
    Delivered,
    Delivery,
    DeliveryError,
    PermanentError,
    RetryableError,
    error_for_status,
    guarded_request,
    json_or_none,
    retry_after_seconds,
)

RETRYABLE_EXCEPTIONS = (
    "odoo.exceptions.LockError",
    "odoo.exceptions.ConcurrencyError",
    "psycopg2.errors.SerializationFailure",
    "psycopg2.errors.LockNotAvailable",
    "psycopg2.errors.DeadlockDetected",
    "psycopg.errors.SerializationFailure",
)
_ids = itertools.count(1)


class OdooConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: BaseUrl = Field(min_length=8, max_length=300, description="The Odoo server, e.g. https://acme.odoo.com")
    database: str = Field(min_length=1, max_length=100, description="The database name")
    login: str = Field(min_length=1, max_length=200, description="The API user's login")
    api_key: SecretStr = Field(description="An API key of that user (Preferences > Account Security)")
    protocol: Literal["jsonrpc", "json2"] = Field(
        default="jsonrpc", description="jsonrpc (any Odoo) or json2 (Odoo 19 and later)"
    )


class OdooTarget(BaseModel):
    product_template_id: int = Field(gt=0, description="The product.template record id")


class OdooConnector(CRMConnector[OdooConfig]):
    kind: ClassVar[str] = "odoo"
    title: ClassVar[str] = "Odoo (product image)"
    Config: ClassVar[type[BaseModel]] = OdooConfig
    Target: ClassVar[type[BaseModel]] = OdooTarget

    async def test_connection(self) -> str:
        config = self.config
        if config.protocol == "json2":
            count = await self._json2("search_count", {"domain": []}, "counting product templates")
            return f"{config.url} accepted the API key of {config.login} (JSON-2); {count} product templates"
        uid = await self._authenticate()
        count = await self._execute(uid, "search_count", [[]], "counting product templates")
        return f"{config.url} authenticated {config.login} (uid {uid}) on {config.database}; {count} product templates"

    async def deliver(self, delivery: Delivery) -> Delivered:
        try:
            target = OdooTarget.model_validate(delivery.target)
        except ValidationError as exc:
            raise PermanentError(f"invalid Odoo target: {exc.errors()[0]['msg']}") from None
        if not delivery.assets:
            raise PermanentError("the delivery has no images")
        config = self.config
        asset, *rest = delivery.assets
        image = base64.b64encode(await asset.read()).decode("ascii")
        record = target.product_template_id
        what = f"the write of product.template {record}"
        vals = {"image_1920": image}
        if config.protocol == "json2":
            await self._json2("write", {"ids": [record], "vals": vals}, what, record=record)
        else:
            uid = await self._authenticate()
            await self._execute(uid, "write", [[record], vals], what, record=record)
        return Delivered(
            external_id=f"product.template:{record}",
            url=f"{config.url}/web#id={record}&model=product.template&view_type=form",
            detail={"product_template_id": record, "asset_id": asset.id, "not_written": [a.id for a in rest]},
        )

    # -- JSON-RPC ------------------------------------------------------------------------------------------

    async def _authenticate(self) -> int:
        config = self.config
        args = [config.database, config.login, config.api_key.get_secret_value(), {}]
        uid = await self._rpc("common", "authenticate", args, "the login")
        if not isinstance(uid, int) or isinstance(uid, bool) or uid <= 0:
            raise PermanentError(f"Odoo refused the login {config.login!r} on {config.database!r}: check the API key")
        return uid

    async def _execute(self, uid: int, method: str, args: list[Any], what: str, *, record: int | None = None) -> Any:
        config = self.config
        params = [config.database, uid, config.api_key.get_secret_value(), "product.template", method, args]
        return await self._rpc("object", "execute_kw", params, what, record=record)

    async def _rpc(self, service: str, method: str, args: list[Any], what: str, *, record: int | None = None) -> Any:
        payload = {
            "jsonrpc": "2.0",
            "method": "call",
            "id": next(_ids),
            "params": {"service": service, "method": method, "args": args},
        }
        response = await self._send(f"{self.config.url}/jsonrpc", what, json=payload)
        body = json_or_none(response)
        if response.status_code != 200 or not isinstance(body, dict):
            raise _http_error(response, what)
        if "error" in body:
            error: dict[str, Any] = body["error"] if isinstance(body["error"], dict) else {}
            data: dict[str, Any] = error["data"] if isinstance(error.get("data"), dict) else {}
            raise _odoo_error(
                str(data.get("name") or ""), str(data.get("message") or error.get("message")), what, record
            )
        return body.get("result")

    # -- JSON-2 --------------------------------------------------------------------------------------------

    async def _json2(self, method: str, body: dict[str, Any], what: str, *, record: int | None = None) -> Any:
        config = self.config
        headers = {
            "Authorization": f"bearer {config.api_key.get_secret_value()}",
            "X-Odoo-Database": config.database,
            "Content-Type": "application/json; charset=utf-8",
        }
        response = await self._send(f"{config.url}/json/2/product.template/{method}", what, json=body, headers=headers)
        if response.status_code == 200:
            return json_or_none(response)
        error = json_or_none(response)
        if isinstance(error, dict) and error.get("name"):  # Odoo's own error object: its exception decides
            exc = _odoo_error(str(error["name"]), str(error.get("message") or ""), what, record)
            exc.status = response.status_code
            if exc.retryable:
                exc.retry_after = retry_after_seconds(response.headers.get("retry-after"))
            raise exc
        raise _http_error(response, what)

    async def _send(self, url: str, what: str, **kwargs: Any) -> httpx.Response:
        return await guarded_request(
            self.http,
            "POST",
            url,
            refused=f"{what}: the Odoo URL is not allowed",
            unreachable=f"{what}: Odoo could not be reached",
            **kwargs,
        )


def _odoo_error(name: str, text: str, what: str, record: int | None) -> DeliveryError:
    message = f"{what}: Odoo raised {name or 'an error'}: {' '.join(text.split())[:300]}"
    short = name.rsplit(".", 1)[-1]
    if name in RETRYABLE_EXCEPTIONS:
        return RetryableError(message)
    if short == "OperationalError":  # the database server: gone for good, or only unreachable for now
        return PermanentError(message) if "does not exist" in text else RetryableError(message)
    if short == "AccessDenied" or name == "werkzeug.exceptions.Unauthorized":
        return PermanentError(message + " (check the login and API key)")
    if short == "MissingError" and record is not None:
        return PermanentError(message + f" (does product.template {record} exist?)")
    if name.startswith(("odoo.exceptions.", "psycopg", "builtins.", "werkzeug.exceptions.")):
        return PermanentError(message)
    return RetryableError(message)


def _http_error(response: httpx.Response, what: str) -> DeliveryError:
    status = response.status_code
    message = f"{what}: Odoo answered HTTP {status}"
    if status == 404:
        message += " (no such endpoint: is this an Odoo server, and does it have this protocol?)"
    return error_for_status(status, message, retry_after_seconds(response.headers.get("retry-after")))
