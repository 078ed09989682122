"""The Salesforce emulator answers like the REST API: OAuth client credentials, ContentVersion, SOQL, errors."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.emulators.salesforce import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    SoqlError,
    create_app,
    parse_soql,
    to18,
)
from tests.connectors.support import png
from tests.emulators.support import emulator_process

PRODUCT = "01t000000000001"
API = "/services/data/v61.0"
CLIENT_CREDENTIALS = {
    "grant_type": "client_credentials",
    "client_id": DEFAULT_CLIENT_ID,
    "client_secret": DEFAULT_CLIENT_SECRET,
}


@contextlib.asynccontextmanager
async def emulator(**options: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(**options)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sf", timeout=30) as client:
        yield client, app


async def token(client: httpx.AsyncClient) -> str:
    response = await client.post("/services/oauth2/token", data=CLIENT_CREDENTIALS)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def version_body(data: bytes, **fields: Any) -> dict[str, Any]:
    return {
        "Title": "Hero",
        "PathOnClient": "hero.png",
        "VersionData": base64.b64encode(data).decode(),
        "FirstPublishLocationId": PRODUCT,
        **fields,
    }


# -- OAuth ---------------------------------------------------------------------------------------------------


async def test_client_credentials_give_a_bearer_token_for_this_instance_and_no_refresh_token() -> None:
    async with emulator() as (client, _):
        response = await client.post("/services/oauth2/token", data=CLIENT_CREDENTIALS)
    body = response.json()
    assert response.status_code == 200
    assert {"access_token", "instance_url", "id", "token_type", "issued_at", "signature", "scope"} <= set(body)
    assert body["token_type"] == "Bearer" and body["instance_url"] == "http://sf" and "refresh_token" not in body
    assert body["access_token"].startswith("00D")


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        (
            {"client_secret": "wrong"},
            {"error": "invalid_client", "error_description": "invalid client credentials"},
        ),
        ({"client_id": "3MVGnope"}, {"error": "invalid_client_id", "error_description": "client identifier invalid"}),
        (
            {"grant_type": "password"},
            {"error": "unsupported_grant_type", "error_description": "grant type not supported"},
        ),
    ],
)
async def test_a_refused_token_request_is_400_with_the_oauth_error_body(form: dict[str, str], expected: Any) -> None:
    data = {"grant_type": "client_credentials", "client_id": DEFAULT_CLIENT_ID, "client_secret": DEFAULT_CLIENT_SECRET}
    async with emulator() as (client, _):
        response = await client.post("/services/oauth2/token", data={**data, **form})
    assert (response.status_code, response.json()) == (400, expected)


# -- ContentVersion ------------------------------------------------------------------------------------------


async def test_a_json_insert_creates_a_file_on_the_record_with_the_bytes_sent() -> None:
    image = png(40, 30)
    async with emulator() as (client, app):
        headers = bearer(await token(client))
        created = await client.post(f"{API}/sobjects/ContentVersion", json=version_body(image), headers=headers)
        version_id = created.json()["id"]
        record = (await client.get(f"{API}/sobjects/ContentVersion/{version_id}", headers=headers)).json()
        blob = await client.get(f"{API}/sobjects/ContentVersion/{version_id}/VersionData", headers=headers)
    assert created.status_code == 201
    assert created.json() == {"id": version_id, "success": True, "errors": []}
    assert version_id.startswith("068") and len(version_id) == 18
    assert blob.content == image
    assert record["FirstPublishLocationId"] == to18(PRODUCT) and record["Title"] == "Hero"
    assert record["ContentDocumentId"].startswith("069") and record["ContentSize"] == len(image)
    assert app.state.org.versions[version_id].data == image


async def test_inserting_the_same_file_twice_makes_two_files_and_the_state_shows_the_duplicate() -> None:
    async with emulator() as (client, _):
        headers = bearer(await token(client))
        first = await client.post(f"{API}/sobjects/ContentVersion", json=version_body(png()), headers=headers)
        second = await client.post(f"{API}/sobjects/ContentVersion", json=version_body(png()), headers=headers)
        state = (await client.get("/_emulator/state")).json()
    ids = [first.json()["id"], second.json()["id"]]
    assert ids[0] != ids[1]
    [duplicate] = state["duplicates"]
    assert duplicate["record_id"] == to18(PRODUCT) and duplicate["content_version_ids"] == ids


async def test_15_and_18_character_record_ids_name_the_same_record() -> None:
    assert to18("001A0000006Vm9r") == "001A0000006Vm9rIAC"  # the example of Salesforce's documentation
    async with emulator() as (client, _):
        headers = bearer(await token(client))
        response = await client.post(
            f"{API}/sobjects/ContentVersion",
            json=version_body(png(), FirstPublishLocationId=to18(PRODUCT)),
            headers=headers,
        )
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("location", "code"),
    [("01t000000000099", "FIELD_INTEGRITY_EXCEPTION"), ("not-an-id", "MALFORMED_ID")],
)
async def test_an_unknown_or_malformed_record_is_400_with_salesforce_s_error_list(location: str, code: str) -> None:
    async with emulator() as (client, app):
        headers = bearer(await token(client))
        response = await client.post(
            f"{API}/sobjects/ContentVersion", json=version_body(png(), FirstPublishLocationId=location), headers=headers
        )
    [error] = response.json()
    assert response.status_code == 400
    assert error["errorCode"] == code and error["fields"] == ["FirstPublishLocationId"] and location in error["message"]
    assert app.state.org.versions == {}


@pytest.mark.parametrize(
    ("headers", "expire"),
    [({}, False), ({"Authorization": "Bearer 00Dbogus"}, False), (None, True)],
    ids=["missing", "unknown", "expired"],
)
async def test_a_missing_unknown_or_expired_token_is_401_invalid_session_id(
    headers: dict[str, str] | None, expire: bool
) -> None:
    async with emulator() as (client, _):
        if headers is None:
            headers = bearer(await token(client))
        if expire:
            await client.post("/_emulator/expire-tokens")
        response = await client.post(f"{API}/sobjects/ContentVersion", json=version_body(png()), headers=headers)
        query = await client.get(f"{API}/query", params={"q": "SELECT Id FROM ContentVersion"}, headers=headers)
    expected = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    assert (response.status_code, response.json()) == (401, expected)
    assert (query.status_code, query.json()) == (401, expected)


async def test_a_session_ends_after_its_timeout() -> None:
    now = [1000.0]
    async with emulator(session_seconds=60, clock=lambda: now[0]) as (client, _):
        headers = bearer(await token(client))
        fresh = await client.get(f"{API}/query", params={"q": "SELECT Id FROM ContentVersion"}, headers=headers)
        now[0] += 61
        stale = await client.get(f"{API}/query", params={"q": "SELECT Id FROM ContentVersion"}, headers=headers)
    assert (fresh.status_code, stale.status_code) == (200, 401)


async def test_a_json_body_over_the_request_limit_is_salesforce_s_maximum_size_error() -> None:
    async with emulator(max_request_bytes=10_000) as (client, app):
        headers = bearer(await token(client))
        response = await client.post(
            f"{API}/sobjects/ContentVersion", json=version_body(b"\x89PNG" + bytes(20_000)), headers=headers
        )
    assert (response.status_code, response.json()) == (
        400,
        [
            {
                "message": "Maximum size of request reached. Maximum size of request is 10000 bytes.",
                "errorCode": "JSON_PARSER_ERROR",
            }
        ],
    )
    assert app.state.org.versions == {}


async def test_the_default_request_limit_is_50_mb() -> None:
    app = create_app()
    limit = 52_428_800
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sf") as client:
        headers = bearer(await token(client))
        response = await client.post(
            f"{API}/sobjects/ContentVersion",
            content=b"{" + b" " * limit + b"}",
            headers={**headers, "Content-Type": "application/json"},
        )
    assert response.status_code == 400 and f"is {limit} bytes" in response.json()[0]["message"]


async def test_a_multipart_insert_takes_a_file_beyond_the_json_limit() -> None:
    image = png(200, 200) + bytes(30_000)  # a PNG with trailing bytes: a blob is a blob
    entity = {"Title": "Big", "PathOnClient": "big.png", "FirstPublishLocationId": PRODUCT}
    async with emulator(max_request_bytes=10_000) as (client, app):
        headers = bearer(await token(client))
        response = await client.post(
            f"{API}/sobjects/ContentVersion",
            files={
                "entity_content": (None, json.dumps(entity), "application/json"),
                "VersionData": ("big.png", image, "image/png"),
            },
            headers=headers,
        )
    assert response.status_code == 201
    assert app.state.org.versions[response.json()["id"]].data == image


@pytest.mark.parametrize(
    ("change", "code", "fields"),
    [
        ({"PathOnClient": None}, "REQUIRED_FIELD_MISSING", ["PathOnClient"]),
        ({"Colour__c": "red"}, "INVALID_FIELD", None),
        ({"Checksum": "abc"}, "INVALID_FIELD_FOR_INSERT_UPDATE", ["Checksum"]),
        ({"Description": "x" * 1001}, "STRING_TOO_LONG", ["Description"]),
    ],
)
async def test_field_errors_are_400_with_their_error_code(change: dict[str, Any], code: str, fields: Any) -> None:
    body = {k: v for k, v in {**version_body(png()), **change}.items() if v is not None}
    async with emulator() as (client, _):
        response = await client.post(f"{API}/sobjects/ContentVersion", json=body, headers=bearer(await token(client)))
    [error] = response.json()
    assert response.status_code == 400 and error["errorCode"] == code and error.get("fields") == fields


async def test_an_api_version_salesforce_does_not_have_is_404() -> None:
    async with emulator() as (client, _):
        response = await client.get(
            "/services/data/v7.0/query", params={"q": "SELECT Id FROM ContentVersion"}, headers=bearer("x")
        )
    assert (response.status_code, response.json()) == (
        404,
        [{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND"}],
    )


# -- SOQL ----------------------------------------------------------------------------------------------------


async def test_soql_finds_a_content_version_by_its_description_marker() -> None:
    async with emulator() as (client, _):
        headers = bearer(await token(client))
        created = await client.post(
            f"{API}/sobjects/ContentVersion",
            json=version_body(png(), Description="imagegate:job_1:crm:ast_1"),
            headers=headers,
        )
        await client.post(
            f"{API}/sobjects/ContentVersion", json=version_body(png(), Description="other"), headers=headers
        )
        exact = await client.get(
            f"{API}/query",
            params={"q": "SELECT Id, Description FROM ContentVersion WHERE Description = 'imagegate:job_1:crm:ast_1'"},
            headers=headers,
        )
        listed = await client.get(
            f"{API}/query",
            params={"q": "select id from contentversion where Description in ('IMAGEGATE:JOB_1:CRM:AST_1', 'x')"},
            headers=headers,
        )
    version_id = created.json()["id"]
    assert exact.json() == {
        "totalSize": 1,
        "done": True,
        "records": [
            {
                "attributes": {"type": "ContentVersion", "url": f"{API}/sobjects/ContentVersion/{version_id}"},
                "Id": version_id,
                "Description": "imagegate:job_1:crm:ast_1",
            }
        ],
    }
    assert [r["Id"] for r in listed.json()["records"]] == [version_id]  # text compares case-insensitively


def test_soql_string_literals_take_backslash_escapes() -> None:
    query = parse_soql(
        r"SELECT Id FROM ContentVersion WHERE Description = 'it\'s a \\ test' AND IsLatest = true LIMIT 5"
    )
    assert query.where == [("Description", ["it's a \\ test"]), ("IsLatest", [True])] and query.limit == 5


@pytest.mark.parametrize(
    ("soql", "code", "detail"),
    [
        ("SELECT Id FROM ContentVersion WHERE", "MALFORMED_QUERY", "unexpected token: <EOF>"),
        ("SELECT Id FROM ContentVersion WHERE Description LIKE 'a%'", "MALFORMED_QUERY", "unexpected token: LIKE"),
        ("SELECT Id FROM ContentVersion ORDER BY Id", "MALFORMED_QUERY", "unexpected token: ORDER"),
        ("SELECT Colour__c FROM ContentVersion", "INVALID_FIELD", "No such column 'Colour__c'"),
        ("SELECT Id FROM Account", "INVALID_TYPE", "sObject type 'Account' is not supported"),
    ],
)
async def test_queries_outside_the_supported_shape_are_refused_like_salesforce(
    soql: str, code: str, detail: str
) -> None:
    async with emulator() as (client, _):
        response = await client.get(f"{API}/query", params={"q": soql}, headers=bearer(await token(client)))
    [error] = response.json()
    assert response.status_code == 400 and error["errorCode"] == code and detail in error["message"]
    assert "ERROR at Row:1:Column:" in error["message"]
    with pytest.raises(SoqlError):
        parse_soql(soql)


async def test_a_query_without_q_is_malformed() -> None:
    async with emulator() as (client, _):
        response = await client.get(f"{API}/query", headers=bearer(await token(client)))
    assert response.json() == [{"message": "A query string has to be specified", "errorCode": "MALFORMED_QUERY"}]


# -- inspection and faults -----------------------------------------------------------------------------------


async def test_received_requests_are_listed_without_the_file_bytes() -> None:
    async with emulator() as (client, _):
        headers = bearer(await token(client))
        await client.post(f"{API}/sobjects/ContentVersion", json=version_body(png()), headers=headers)
        received = (await client.get("/_emulator/received")).json()["received"]
    insert = received[-1]
    assert insert["path"] == f"{API}/sobjects/ContentVersion" and insert["bytes"] == len(png())
    assert "VersionData" not in insert["fields"] and insert["fields"]["PathOnClient"] == "hero.png"


async def test_an_injected_fault_answers_its_status_for_the_matching_requests_only() -> None:
    async with emulator() as (client, _):
        headers = bearer(await token(client))
        fault = {"status": 503, "body": [{"errorCode": "SERVER_UNAVAILABLE", "message": "down"}], "path": "/query"}
        await client.post("/_emulator/faults", json={**fault, "headers": {"Retry-After": "9"}})
        faulted = await client.get(f"{API}/query", params={"q": "SELECT Id FROM ContentVersion"}, headers=headers)
        after = await client.get(f"{API}/query", params={"q": "SELECT Id FROM ContentVersion"}, headers=headers)
    assert (faulted.status_code, faulted.headers["retry-after"], faulted.json()[0]["errorCode"]) == (
        503,
        "9",
        "SERVER_UNAVAILABLE",
    )
    assert after.status_code == 200


# -- as a process --------------------------------------------------------------------------------------------


def test_imagegate_emulate_salesforce_serves_the_org_as_a_process() -> None:
    form = {"grant_type": "client_credentials", "client_id": "cid", "client_secret": "csecret"}
    with emulator_process("salesforce", "--credentials", "cid:csecret", "--products", "01t00000000ABCD") as base:
        issued = httpx.post(f"{base}/services/oauth2/token", data=form, timeout=5)
        created = httpx.post(
            f"{base}{API}/sobjects/ContentVersion",
            json=version_body(png(), FirstPublishLocationId="01t00000000ABCD"),
            headers=bearer(issued.json()["access_token"]),
            timeout=10,
        )
    assert issued.status_code == 200 and issued.json()["instance_url"] == base
    assert created.status_code == 201
