"""The HubSpot connector against the HubSpot emulator on loopback: files uploaded once, the product linked."""

from __future__ import annotations

import contextlib
from typing import Any

import httpx
import pytest

from connectors.base import PermanentError, RetryableError
from connectors.hubspot import HubSpotConnector, file_stem
from gateway.emulators.hubspot import DEFAULT_TOKEN, create_app
from tests.connectors.support import asset, delivery, emulated, fault, outbound, png
from tests.processes import free_port

TARGET = {"product_id": "1001"}


def portal(**options: Any) -> contextlib.AbstractAsyncContextManager[tuple[str, Any]]:
    return emulated(create_app, **options)


def connector(base: str, http: Any, **config: Any) -> HubSpotConnector:
    values = {"base_url": base, "access_token": DEFAULT_TOKEN, **config}
    return HubSpotConnector(HubSpotConnector.Config.model_validate(values), http=http)


def live(app: Any) -> list[Any]:
    return app.state.portal.live()


async def test_the_images_are_uploaded_and_the_product_gets_the_first_one_s_url() -> None:
    images = [png(40, 30, (10, 20, 30)), png(20, 20, (200, 0, 0))]
    shipped = delivery(asset(images[0]), asset(images[1], index=1, name="P-1_main_2"), target=TARGET)
    async with portal() as (base, app), outbound() as http:
        result = await connector(base, http).deliver(shipped)
        async with httpx.AsyncClient() as client:
            hosted = (await client.get(result.url or "")).content
    files = live(app)
    assert [f.data for f in files] == images and hosted == images[0]
    assert [f.path for f in files] == [f"/imagegate/{file_stem(shipped, a)}.png" for a in shipped.assets]
    assert {f.access for f in files} == {"PUBLIC_NOT_INDEXABLE"}
    assert app.state.portal.products["1001"]["hs_images"] == result.url
    assert result.external_id == ",".join(f.id for f in files) and result.detail["reused"] == []


async def test_the_file_name_is_readable_and_the_same_on_every_attempt() -> None:
    first, second = delivery(attempt=1), delivery(attempt=2)
    stem = file_stem(first, first.assets[0])
    assert stem == file_stem(second, second.assets[0]) and stem.startswith("P-1_main-ig")
    other = delivery(idempotency_key="job_other:crm-files")
    assert file_stem(other, other.assets[0]) != stem


async def test_a_lost_upload_answer_then_a_retry_uploads_nothing_again() -> None:
    async with portal() as (base, app), outbound() as http:
        await fault(base, path="/files/v3/files", method="POST", lose=True)
        with pytest.raises(RetryableError):
            await connector(base, http).deliver(delivery(target=TARGET))
        retried = await connector(base, http).deliver(delivery(target=TARGET, attempt=2))
    [only] = live(app)
    assert app.state.portal.uploads == 1 and app.state.portal.duplicates() == []
    assert retried.external_id == only.id and retried.detail["reused"] == [only.id]
    assert app.state.portal.products["1001"]["hs_images"] == retried.url


async def test_when_the_search_has_not_seen_the_lost_upload_yet_the_overwrite_keeps_one_file() -> None:
    async with portal(search_lag_seconds=3600) as (base, app), outbound() as http:
        await fault(base, path="/files/v3/files", method="POST", lose=True)
        with pytest.raises(RetryableError):
            await connector(base, http).deliver(delivery(target=TARGET))
        first_url = live(app)[0].json(base)["url"]
        retried = await connector(base, http).deliver(delivery(target=TARGET, attempt=2))
    [only] = live(app)
    assert app.state.portal.uploads == 2 and app.state.portal.duplicates() == []  # uploaded again, replaced
    assert retried.url == first_url and retried.external_id == only.id


async def test_a_stored_external_id_is_returned_without_calling_hubspot() -> None:
    async with portal() as (base, app), outbound() as http:
        result = await connector(base, http).deliver(delivery(target=TARGET, attempt=2, external_id="111,222"))
    assert result.external_id == "111,222" and app.state.received == []


async def test_another_image_property_and_indexable_access_are_honoured() -> None:
    async with portal(properties=["name", "image_url"]) as (base, app), outbound() as http:
        http_connector = connector(base, http, image_property="image_url", access="PUBLIC_INDEXABLE")
        result = await http_connector.deliver(delivery(target=TARGET))
    assert app.state.portal.products["1001"]["image_url"] == result.url and live(app)[0].access == "PUBLIC_INDEXABLE"


def test_private_access_is_not_a_choice() -> None:
    with pytest.raises(ValueError, match="PUBLIC_INDEXABLE"):
        HubSpotConnector.Config.model_validate({"access_token": "x", "access": "PRIVATE"})


# -- errors --------------------------------------------------------------------------------------------------


async def test_a_bad_token_is_permanent_and_uploads_nothing() -> None:
    async with portal() as (base, app), outbound() as http:
        with pytest.raises(PermanentError, match="INVALID_AUTHENTICATION") as caught:
            await connector(base, http, access_token="pat-na1-wrong").deliver(delivery(target=TARGET))
    assert caught.value.status == 401 and app.state.portal.files == {}


async def test_a_token_without_the_files_scope_is_permanent() -> None:
    async with portal(tokens={"crm-only": ["e-commerce"]}) as (base, _), outbound() as http:
        with pytest.raises(PermanentError, match="MISSING_SCOPES") as caught:
            await connector(base, http, access_token="crm-only").deliver(delivery(target=TARGET))
    assert caught.value.status == 403


async def test_a_product_that_does_not_exist_is_permanent() -> None:
    async with portal() as (base, _), outbound() as http:
        with pytest.raises(PermanentError, match="OBJECT_NOT_FOUND") as caught:
            await connector(base, http).deliver(delivery(target={"product_id": "999"}))
    assert caught.value.status == 404


async def test_a_target_that_is_not_a_hubspot_id_is_permanent() -> None:
    async with outbound() as http:
        with pytest.raises(PermanentError, match="invalid HubSpot target"):
            await connector("http://127.0.0.1:9", http).deliver(delivery(target={"product_id": "../contacts/1"}))


async def test_the_ten_secondly_limit_is_retryable_after_the_window() -> None:
    async with portal(rate_limit=1) as (base, _), outbound() as http:
        with pytest.raises(RetryableError, match="RATE_LIMIT") as caught:
            await connector(base, http).deliver(delivery(target=TARGET))  # the search passes, the upload does not
    assert (caught.value.status, caught.value.retry_after) == (429, 10.0)


async def test_a_retry_after_header_wins_over_the_window() -> None:
    async with portal() as (base, _), outbound() as http:
        await fault(
            base,
            path="/crm/v3/objects/products",
            status=429,
            body={"errorType": "RATE_LIMIT"},
            headers={"Retry-After": "3"},
        )
        with pytest.raises(RetryableError) as caught:
            await connector(base, http).deliver(delivery(target=TARGET))
    assert caught.value.retry_after == 3.0


async def test_a_hubspot_outage_is_retryable_and_the_retry_reuses_the_upload() -> None:
    async with portal() as (base, app), outbound() as http:
        await fault(
            base, path="/crm/v3/objects/products", status=502, body={"status": "error", "message": "bad gateway"}
        )
        with pytest.raises(RetryableError) as caught:
            await connector(base, http).deliver(delivery(target=TARGET))
        await connector(base, http).deliver(delivery(target=TARGET, attempt=2))
    assert caught.value.status == 502 and app.state.portal.uploads == 1
    assert app.state.portal.products["1001"]["hs_images"]


async def test_an_unreachable_hubspot_is_retryable() -> None:
    async with outbound(timeout=2) as http:
        with pytest.raises(RetryableError, match="could not be reached"):
            await connector(f"http://127.0.0.1:{free_port()}", http).deliver(delivery(target=TARGET))


# -- test_connection -----------------------------------------------------------------------------------------


async def test_test_connection_checks_the_token_and_the_image_property() -> None:
    async with portal() as (base, _), outbound() as http:
        said = await connector(base, http).test_connection()
    assert "hs_images" in said


async def test_test_connection_without_the_image_property_is_permanent() -> None:
    async with portal(properties=["name", "price"]) as (base, _), outbound() as http:
        with pytest.raises(PermanentError, match="no property 'hs_images'"):
            await connector(base, http).test_connection()


async def test_test_connection_with_a_bad_token_is_permanent() -> None:
    async with portal() as (base, _), outbound() as http:
        with pytest.raises(PermanentError, match="check the access token"):
            await connector(base, http, access_token="nope").test_connection()
