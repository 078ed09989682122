"""The Salesforce connector against the Salesforce emulator on loopback: files on the record, once."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

import connectors.salesforce as salesforce
from connectors.base import PermanentError, RetryableError
from connectors.salesforce import SalesforceConnector, marker
from gateway.emulators.salesforce import DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, create_app, to18
from tests.connectors.support import asset, delivery, emulated, fault, outbound, png
from tests.processes import free_port

PRODUCT = "01t000000000001"


def org(**options: Any) -> contextlib.AbstractAsyncContextManager[tuple[str, Any]]:
    return emulated(create_app, **options)


def connector(base: str, http: Any, **config: Any) -> SalesforceConnector:
    values = {"instance_url": base, "client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET, **config}
    return SalesforceConnector(SalesforceConnector.Config.model_validate(values), http=http)


def versions(app: Any) -> list[Any]:
    return list(app.state.org.versions.values())


def creates(app: Any) -> int:
    return sum(1 for r in app.state.received if r["path"].endswith("/sobjects/ContentVersion") and "fields" in r)


async def test_each_image_becomes_a_file_on_the_record_with_the_same_bytes() -> None:
    images = [png(40, 30, (10, 20, 30)), png(50, 20, (90, 10, 10))]
    shipped = delivery(
        asset(images[0], name="P-1_main"), asset(images[1], index=1, name="P-1_main_2"), target={"record_id": PRODUCT}
    )
    async with org() as (base, app), outbound() as http:
        result = await connector(base, http).deliver(shipped)
    stored = versions(app)
    assert [v.data for v in stored] == images
    assert {v.first_publish_location_id for v in stored} == {to18(PRODUCT)}
    assert [v.path_on_client for v in stored] == ["P-1_main.png", "P-1_main_2.png"]
    assert [v.description for v in stored] == [marker(shipped, a) for a in shipped.assets]
    assert result.external_id == ",".join(v.id for v in stored) and result.detail["reused"] == []
    assert result.url == f"{base}/lightning/r/{PRODUCT}/view"


async def test_a_lost_answer_then_a_retry_makes_no_second_file() -> None:
    shipped = delivery(target={"record_id": PRODUCT})
    async with org() as (base, app), outbound() as http:
        await fault(base, path="/sobjects/ContentVersion", lose=True)
        with pytest.raises(RetryableError):  # the file was created; its answer never arrived
            await connector(base, http).deliver(shipped)
        assert len(versions(app)) == 1
        retried = await connector(base, http).deliver(delivery(target={"record_id": PRODUCT}, attempt=2))
    [only] = versions(app)
    assert retried.external_id == only.id and retried.detail["reused"] == [only.id]
    assert creates(app) == 1 and app.state.org.duplicates() == []


async def test_a_second_attempt_with_the_same_key_finds_the_files_by_their_marker() -> None:
    async with org() as (base, app), outbound() as http:
        first = await connector(base, http).deliver(delivery(target={"record_id": PRODUCT}))
        second = await connector(base, http).deliver(delivery(target={"record_id": PRODUCT}, attempt=2))
    assert first.external_id == second.external_id and len(versions(app)) == 1 and creates(app) == 1


async def test_an_attempt_that_stopped_half_way_creates_only_the_missing_files() -> None:
    a, b = asset(png(colour=(1, 1, 1))), asset(png(colour=(2, 2, 2)), index=1, name="P-1_main_2")
    async with org() as (base, app), outbound() as http:
        half = await connector(base, http).deliver(delivery(a, target={"record_id": PRODUCT}))
        whole = await connector(base, http).deliver(delivery(a, b, target={"record_id": PRODUCT}, attempt=2))
    assert whole.external_id is not None and whole.external_id.split(",")[0] == half.external_id
    assert [v.data for v in versions(app)] == [png(colour=(1, 1, 1)), png(colour=(2, 2, 2))] and creates(app) == 2


async def test_many_images_are_looked_up_in_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(salesforce, "MARKERS_PER_QUERY", 2)
    images = [asset(png(colour=(n, n, n)), index=n, name=f"P-1_main_{n}") for n in range(3)]
    async with org() as (base, app), outbound() as http:
        first = await connector(base, http).deliver(delivery(*images, target={"record_id": PRODUCT}))
        again = await connector(base, http).deliver(delivery(*images, target={"record_id": PRODUCT}, attempt=2))
    queries = [r for r in app.state.received if r["path"].endswith("/query")]
    assert len(queries) == 4 and creates(app) == 3
    assert again.external_id == first.external_id and len(again.detail["reused"]) == 3


async def test_a_stored_external_id_is_returned_without_calling_salesforce() -> None:
    async with org() as (base, app), outbound() as http:
        result = await connector(base, http).deliver(
            delivery(target={"record_id": PRODUCT}, attempt=3, external_id="068A,068B")
        )
    assert result.external_id == "068A,068B" and result.detail["reused"] == ["068A", "068B"]
    assert app.state.received == []


async def test_an_image_beyond_the_json_limit_goes_as_multipart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(salesforce, "JSON_REQUEST_LIMIT", 1000)
    image = png(300, 300, (5, 100, 200))
    async with org(max_request_bytes=1000) as (base, app), outbound() as http:
        await connector(base, http).deliver(delivery(asset(image), target={"record_id": PRODUCT}))
    [stored] = versions(app)
    assert stored.data == image
    assert [r["multipart"] for r in app.state.received if "multipart" in r] == [True]


async def test_an_expired_session_mid_delivery_is_replaced_once() -> None:
    async with org() as (base, app), outbound() as http:
        expired = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
        await fault(base, path="/query", status=401, body=expired)
        await connector(base, http).deliver(delivery(target={"record_id": PRODUCT}))
    tokens = [r for r in app.state.received if r["path"] == "/services/oauth2/token"]
    assert len(tokens) == 2 and len(versions(app)) == 1


# -- errors --------------------------------------------------------------------------------------------------


async def test_a_wrong_client_secret_is_permanent() -> None:
    async with org() as (base, _), outbound() as http:
        with pytest.raises(PermanentError, match="invalid_client") as caught:
            await connector(base, http, client_secret="wrong").deliver(delivery(target={"record_id": PRODUCT}))
    assert caught.value.status == 400


async def test_a_record_that_does_not_exist_is_permanent_and_creates_nothing() -> None:
    async with org() as (base, app), outbound() as http:
        with pytest.raises(PermanentError, match=r"FIELD_INTEGRITY_EXCEPTION.*does record 01t000000000099 exist"):
            await connector(base, http).deliver(delivery(target={"record_id": "01t000000000099"}))
    assert versions(app) == []


async def test_a_target_without_a_salesforce_id_is_permanent() -> None:
    async with outbound() as http:
        with pytest.raises(PermanentError, match="invalid Salesforce target"):
            await connector("http://127.0.0.1:9", http).deliver(delivery(target={"record_id": "x' OR Id != '"}))


@pytest.mark.parametrize(
    ("spec", "retry_after"),
    [
        (
            {
                "status": 503,
                "body": [{"message": "down", "errorCode": "SERVER_UNAVAILABLE"}],
                "headers": {"Retry-After": "7"},
            },
            7.0,
        ),
        (
            {
                "status": 403,
                "body": [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}],
            },
            None,
        ),
        ({"status": 500, "body": [{"message": "boom", "errorCode": "UNKNOWN_EXCEPTION"}]}, None),
    ],
)
async def test_server_errors_and_api_limits_are_retryable(spec: dict[str, Any], retry_after: float | None) -> None:
    async with org() as (base, app), outbound() as http:
        await fault(base, path="/sobjects/ContentVersion", **spec)
        with pytest.raises(RetryableError) as caught:
            await connector(base, http).deliver(delivery(target={"record_id": PRODUCT}))
    assert caught.value.status == spec["status"] and caught.value.retry_after == retry_after
    assert versions(app) == []


async def test_the_token_endpoint_s_unknown_error_is_retryable() -> None:
    async with org() as (base, _), outbound() as http:
        body = {"error": "unknown_error", "error_description": "retry your request"}
        await fault(base, path="/services/oauth2/token", status=400, body=body)
        with pytest.raises(RetryableError, match="retry your request"):
            await connector(base, http).deliver(delivery(target={"record_id": PRODUCT}))


async def test_an_unreachable_instance_is_retryable() -> None:
    async with outbound(timeout=2) as http:
        with pytest.raises(RetryableError, match="could not be reached"):
            await connector(f"http://127.0.0.1:{free_port()}", http).deliver(delivery(target={"record_id": PRODUCT}))


# -- test_connection -----------------------------------------------------------------------------------------


async def test_test_connection_gets_a_token() -> None:
    async with org() as (base, app), outbound() as http:
        said = await connector(base, http).test_connection()
    assert "issued a token" in said and [r["grant_type"] for r in app.state.received] == ["client_credentials"]


async def test_test_connection_with_an_unknown_client_is_permanent() -> None:
    async with org() as (base, _), outbound() as http:
        with pytest.raises(PermanentError, match="invalid_client_id"):
            await connector(base, http, client_id="3MVGnobody").test_connection()


def test_the_config_schema_keeps_the_secret_secret() -> None:
    schema = SalesforceConnector.Config.model_json_schema()
    assert schema["properties"]["client_secret"]["format"] == "password"
    assert schema["properties"]["api_version"]["default"] == "v61.0"
    assert set(schema["required"]) == {"instance_url", "client_id", "client_secret"}
