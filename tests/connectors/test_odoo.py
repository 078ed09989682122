"""The Odoo connector against the Odoo emulator on loopback, over JSON-RPC and JSON-2."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import pytest

from connectors.base import PermanentError, RetryableError
from connectors.odoo import OdooConnector
from gateway.emulators.odoo import DEFAULT_API_KEY, DEFAULT_DATABASE, DEFAULT_LOGIN, create_app
from tests.connectors.support import asset, delivery, emulated, fault, outbound, png
from tests.processes import free_port

TARGET = {"product_template_id": 2}
PROTOCOLS = ["jsonrpc", "json2"]


def odoo(**options: Any) -> contextlib.AbstractAsyncContextManager[tuple[str, Any]]:
    return emulated(create_app, **options)


def connector(base: str, http: Any, **config: Any) -> OdooConnector:
    values = {"url": base, "database": DEFAULT_DATABASE, "login": DEFAULT_LOGIN, "api_key": DEFAULT_API_KEY, **config}
    return OdooConnector(OdooConnector.Config.model_validate(values), http=http)


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_the_first_image_becomes_the_product_template_s_image(protocol: str) -> None:
    image, extra = png(64, 48, (1, 2, 3)), png(10, 10)
    async with odoo() as (base, app), outbound() as http:
        result = await connector(base, http, protocol=protocol).deliver(
            delivery(asset(image), asset(extra, index=1, name="P-1_main_2"), target=TARGET)
        )
    assert app.state.products[2]["image_1920"] == image and app.state.products[1]["image_1920"] is None
    assert (
        result.external_id == "product.template:2"
        and result.url == f"{base}/web#id=2&model=product.template&view_type=form"
    )
    assert len(result.detail["not_written"]) == 1 and app.state.writes == [{"ids": [2], "fields": ["image_1920"]}]


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_lost_answer_then_a_retry_writes_the_same_image_again_harmlessly(protocol: str) -> None:
    image = png(30, 30, (9, 9, 9))
    path = "/jsonrpc" if protocol == "jsonrpc" else "/json/2/product.template/write"
    async with odoo() as (base, app), outbound() as http:
        # JSON-RPC authenticates first: the answer lost is the write's (the second call).
        await fault(base, path=path, lose=True, after=1 if protocol == "jsonrpc" else 0)
        with pytest.raises(RetryableError, match="could not be reached"):
            await connector(base, http, protocol=protocol).deliver(delivery(asset(image), target=TARGET))
        assert app.state.products[2]["image_1920"] == image  # written, though the connector never heard so
        retried = await connector(base, http, protocol=protocol).deliver(
            delivery(asset(image), target=TARGET, attempt=2)
        )
    assert retried.external_id == "product.template:2" and app.state.products[2]["image_1920"] == image
    assert len(app.state.writes) == 2  # both writes landed; the record holds one image, as sent


# -- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_wrong_api_key_is_permanent(protocol: str) -> None:
    async with odoo() as (base, app), outbound() as http:
        with pytest.raises(PermanentError, match=r"login|apikey|API key") as caught:
            await connector(base, http, protocol=protocol, api_key="wrong").deliver(delivery(target=TARGET))
    assert app.state.writes == []
    if protocol == "json2":
        assert caught.value.status == 401


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_product_template_that_does_not_exist_is_permanent(protocol: str) -> None:
    async with odoo() as (base, _), outbound() as http:
        with pytest.raises(PermanentError, match=r"MissingError.*does product.template 999 exist"):
            await connector(base, http, protocol=protocol).deliver(delivery(target={"product_template_id": 999}))


async def test_an_image_odoo_cannot_read_is_permanent() -> None:
    async def junk() -> bytes:
        return b"\x89PNG truncated"

    async with odoo() as (base, _), outbound() as http:
        with pytest.raises(PermanentError, match="UserError: This file could not be decoded as an image file"):
            await connector(base, http).deliver(delivery(dataclasses.replace(asset(), read=junk), target=TARGET))


async def test_an_unknown_database_is_permanent() -> None:
    async with odoo() as (base, _), outbound() as http:
        with pytest.raises(PermanentError, match="does not exist"):
            await connector(base, http, database="nope").deliver(delivery(target=TARGET))


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_server_error_is_retryable_with_its_retry_after(protocol: str) -> None:
    async with odoo() as (base, _), outbound() as http:
        await fault(base, path="/j", status=503, body={"message": "maintenance"}, headers={"Retry-After": "30"})
        with pytest.raises(RetryableError) as caught:
            await connector(base, http, protocol=protocol).deliver(delivery(target=TARGET))
    assert (caught.value.status, caught.value.retry_after) == (503, 30.0)


async def test_odoo_s_lock_error_is_retryable() -> None:
    body = {"name": "odoo.exceptions.LockError", "message": "could not obtain lock", "arguments": [], "context": {}}
    async with odoo() as (base, _), outbound() as http:
        await fault(base, path="/json/2/", status=409, body=body)
        with pytest.raises(RetryableError, match="LockError") as caught:
            await connector(base, http, protocol="json2").deliver(delivery(target=TARGET))
    assert caught.value.status == 409


async def test_an_odoo_without_json2_is_permanent_for_the_json2_protocol() -> None:
    async with odoo(json2=False) as (base, _), outbound() as http:
        with pytest.raises(PermanentError, match="404"):
            await connector(base, http, protocol="json2").deliver(delivery(target=TARGET))


async def test_an_unreachable_odoo_is_retryable() -> None:
    async with outbound(timeout=2) as http:
        with pytest.raises(RetryableError, match="could not be reached"):
            await connector(f"http://127.0.0.1:{free_port()}", http).deliver(delivery(target=TARGET))


async def test_a_target_without_a_record_id_is_permanent() -> None:
    async with outbound() as http:
        with pytest.raises(PermanentError, match="invalid Odoo target"):
            await connector("http://127.0.0.1:9", http).deliver(delivery(target={"product_template_id": "two"}))


# -- test_connection -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_test_connection_authenticates_and_reaches_product_templates(protocol: str) -> None:
    async with odoo() as (base, _), outbound() as http:
        said = await connector(base, http, protocol=protocol).test_connection()
    assert DEFAULT_LOGIN in said and "3 product templates" in said


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_test_connection_with_a_wrong_key_is_permanent(protocol: str) -> None:
    async with odoo() as (base, _), outbound() as http:
        with pytest.raises(PermanentError):
            await connector(base, http, protocol=protocol, api_key="wrong").test_connection()
