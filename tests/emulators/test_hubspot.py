"""The HubSpot emulator answers like Files v3 and CRM v3 products: uploads, search, product updates, errors."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.emulators.hubspot import DEFAULT_TOKEN, PORTAL_ID, create_app
from tests.connectors.support import png
from tests.emulators.support import emulator_process

AUTH = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}


@contextlib.asynccontextmanager
async def emulator(**options: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(**options)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hs", timeout=30) as client:
        yield client, app


async def upload(
    client: httpx.AsyncClient,
    data: bytes,
    name: str = "hero.png",
    *,
    folder: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    **options: Any,
) -> httpx.Response:
    return await client.post(
        "/files/v3/files",
        data={"fileName": name, **(folder or {"folderPath": "/imagegate"}), "options": json.dumps(options)},
        files={"file": (name, data, "image/png")},
        headers=AUTH if headers is None else headers,
    )


async def test_an_upload_answers_201_with_the_file_and_its_url_serves_the_bytes() -> None:
    image = png(40, 30)
    async with emulator() as (client, _):
        response = await upload(client, image, access="PUBLIC_NOT_INDEXABLE")
        body = response.json()
        hosted = await client.get(body["url"])
    assert response.status_code == 201
    assert {
        "id",
        "name",
        "extension",
        "path",
        "parentFolderId",
        "access",
        "url",
        "defaultHostingUrl",
        "size",
        "createdAt",
        "updatedAt",
        "archived",
    } <= set(body)
    assert (body["name"], body["extension"], body["path"]) == ("hero", "png", "/imagegate/hero.png")
    assert (body["access"], body["archived"], body["size"], body["width"], body["height"]) == (
        "PUBLIC_NOT_INDEXABLE",
        False,
        len(image),
        40,
        30,
    )
    assert body["url"] == f"http://hs/hubfs/{PORTAL_ID}/imagegate/hero.png"
    assert hosted.content == image and hosted.headers["x-robots-tag"] == "noindex"


async def test_uploading_the_same_name_again_renames_it_and_the_state_shows_the_duplicate() -> None:
    async with emulator() as (client, _):
        first = (await upload(client, png(), access="PUBLIC_INDEXABLE")).json()
        second = (await upload(client, png(), access="PUBLIC_INDEXABLE")).json()
        state = (await client.get("/_emulator/state")).json()
    assert first["id"] != second["id"] and (first["name"], second["name"]) == ("hero", "hero-1")
    assert state["uploads"] == 2 and state["duplicates"][0]["file_ids"] == [first["id"], second["id"]]


async def test_overwrite_replaces_the_file_of_the_same_name_keeping_its_path() -> None:
    async with emulator() as (client, _):
        first = (await upload(client, png(colour=(1, 2, 3)), access="PUBLIC_INDEXABLE")).json()
        second = (await upload(client, png(colour=(4, 5, 6)), access="PUBLIC_INDEXABLE", overwrite=True)).json()
        old = (await client.get(f"/files/v3/files/{first['id']}", headers=AUTH)).json()
        hosted = await client.get(second["url"])
        state = (await client.get("/_emulator/state")).json()
    assert second["id"] != first["id"] and second["path"] == first["path"] and second["url"] == first["url"]
    assert old["archived"] is True and hosted.content == png(colour=(4, 5, 6)) and state["duplicates"] == []


@pytest.mark.parametrize(
    ("folder", "options", "message"),
    [
        ({"folderPath": "/a"}, {}, "options.access is required"),
        ({"folderPath": "/a"}, {"access": "EVERYONE"}, "options.access must be one of"),
        ({}, {"access": "PRIVATE"}, "Exactly one of folderId or folderPath"),
        ({"folderPath": "/a", "folderId": "0"}, {"access": "PRIVATE"}, "Exactly one of folderId or folderPath"),
    ],
)
async def test_an_upload_without_access_or_with_both_or_no_folder_is_a_validation_error(
    folder: dict[str, str], options: dict[str, Any], message: str
) -> None:
    async with emulator() as (client, _):
        response = await client.post(
            "/files/v3/files",
            data={"fileName": "a.png", **folder, "options": json.dumps(options)},
            files={"file": ("a.png", png(), "image/png")},
            headers=AUTH,
        )
    body = response.json()
    assert response.status_code == 400 and body["status"] == "error" and body["category"] == "VALIDATION_ERROR"
    assert message in body["message"] and body["correlationId"]


async def test_a_private_file_is_not_served_without_a_signed_url() -> None:
    async with emulator() as (client, _):
        body = (await upload(client, png(), access="PRIVATE")).json()
        hosted = await client.get(body["url"])
    assert hosted.status_code == 403


async def test_search_finds_files_whose_name_contains_the_text_and_skips_archived_ones() -> None:
    async with emulator() as (client, _):
        await upload(client, png(), "lamp-ig0001.png", access="PUBLIC_INDEXABLE")
        await upload(client, png(), "lamp-ig0001-extra.png", access="PUBLIC_INDEXABLE")
        await upload(client, png(), "other.png", access="PUBLIC_INDEXABLE")
        await upload(client, png(), "lamp-ig0001.png", access="PUBLIC_INDEXABLE", overwrite=True)
        found = await client.get("/files/v3/files/search", params={"name": "lamp-ig0001"}, headers=AUTH)
    names = sorted(f["name"] for f in found.json()["results"])
    assert found.status_code == 200 and names == ["lamp-ig0001", "lamp-ig0001-extra"]


async def test_search_pages_with_after() -> None:
    async with emulator() as (client, _):
        for n in range(3):
            await upload(client, png(), f"p{n}.png", access="PUBLIC_INDEXABLE")
        page = (await client.get("/files/v3/files/search", params={"name": "p", "limit": 2}, headers=AUTH)).json()
        rest = await client.get(
            "/files/v3/files/search",
            params={"name": "p", "limit": 2, "after": page["paging"]["next"]["after"]},
            headers=AUTH,
        )
    assert len(page["results"]) == 2 and len(rest.json()["results"]) == 1 and "paging" not in rest.json()


async def test_search_lag_hides_a_new_file_for_a_while() -> None:
    now = [1000.0]
    async with emulator(search_lag_seconds=5, clock=lambda: now[0]) as (client, _):
        await upload(client, png(), access="PUBLIC_INDEXABLE")
        early = (await client.get("/files/v3/files/search", params={"name": "hero"}, headers=AUTH)).json()
        now[0] += 6
        later = (await client.get("/files/v3/files/search", params={"name": "hero"}, headers=AUTH)).json()
    assert (len(early["results"]), len(later["results"])) == (0, 1)


async def test_patching_a_product_sets_its_image_property() -> None:
    async with emulator() as (client, app):
        response = await client.patch(
            "/crm/v3/objects/products/1001", json={"properties": {"hs_images": "https://x/y.png"}}, headers=AUTH
        )
        read = await client.get("/crm/v3/objects/products/1001", params={"properties": "hs_images,name"}, headers=AUTH)
    body = response.json()
    assert response.status_code == 200 and body["id"] == "1001" and body["properties"]["hs_images"] == "https://x/y.png"
    assert {"createdAt", "updatedAt", "archived"} <= set(body)
    assert read.json()["properties"]["hs_images"] == "https://x/y.png"
    assert app.state.portal.products["1001"]["hs_images"] == "https://x/y.png"


async def test_a_missing_product_is_404_object_not_found() -> None:
    async with emulator() as (client, _):
        response = await client.patch(
            "/crm/v3/objects/products/999", json={"properties": {"hs_images": "https://x"}}, headers=AUTH
        )
    body = response.json()
    assert response.status_code == 404
    assert (body["status"], body["category"], body["message"]) == ("error", "OBJECT_NOT_FOUND", "resource not found")
    assert body["correlationId"]


async def test_an_unknown_property_is_a_validation_error_naming_it() -> None:
    async with emulator(properties=["name", "price"]) as (client, _):
        response = await client.patch(
            "/crm/v3/objects/products/1001", json={"properties": {"hs_images": "https://x"}}, headers=AUTH
        )
        listed = (await client.get("/crm/v3/properties/products", headers=AUTH)).json()
    body = response.json()
    assert response.status_code == 400 and body["category"] == "VALIDATION_ERROR"
    assert "PROPERTY_DOESNT_EXIST" in body["message"] and "hs_images" in body["message"]
    assert [p["name"] for p in listed["results"]] == ["name", "price"]


async def test_the_product_properties_list_has_hs_images() -> None:
    async with emulator() as (client, _):
        response = await client.get("/crm/v3/properties/products", headers=AUTH)
    images = next(p for p in response.json()["results"] if p["name"] == "hs_images")
    assert response.status_code == 200 and images["type"] == "string" and images["groupName"] == "productinformation"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer pat-na1-wrong"}, {"Authorization": "Basic x"}])
async def test_a_missing_or_unknown_token_is_401_invalid_authentication(headers: dict[str, str]) -> None:
    async with emulator() as (client, app):
        uploaded = await upload(client, png(), headers=headers, access="PUBLIC_INDEXABLE")
        patched = await client.patch("/crm/v3/objects/products/1001", json={"properties": {}}, headers=headers)
    for response in (uploaded, patched):
        body = response.json()
        assert response.status_code == 401 and body["category"] == "INVALID_AUTHENTICATION"
        assert body["message"].startswith("Authentication credentials not found.") and body["status"] == "error"
    assert app.state.portal.files == {}


async def test_a_token_without_the_scope_is_403_missing_scopes() -> None:
    async with emulator(tokens={"crm-only": ["e-commerce"]}) as (client, _):
        response = await upload(client, png(), headers={"Authorization": "Bearer crm-only"}, access="PRIVATE")
    body = response.json()
    assert response.status_code == 403 and body["category"] == "MISSING_SCOPES"
    assert body["errors"][0]["context"]["requiredGranularScopes"] == ["files"]


async def test_more_calls_than_the_ten_second_window_allows_are_429_with_the_rate_limit_body() -> None:
    now = [1000.0]
    async with emulator(rate_limit=2, clock=lambda: now[0]) as (client, _):
        ok = [await client.get("/crm/v3/properties/products", headers=AUTH) for _ in range(2)]
        limited = await client.get("/crm/v3/properties/products", headers=AUTH)
        now[0] += 10
        again = await client.get("/crm/v3/properties/products", headers=AUTH)
    body = limited.json()
    assert [r.status_code for r in ok] == [200, 200] and ok[1].headers["x-hubspot-ratelimit-remaining"] == "0"
    assert limited.status_code == 429
    assert (body["status"], body["errorType"], body["policyName"]) == ("error", "RATE_LIMIT", "TEN_SECONDLY_ROLLING")
    assert body["message"] == "You have reached your ten_secondly_rolling limit." and body["correlationId"]
    assert limited.headers["x-hubspot-ratelimit-interval-milliseconds"] == "10000"
    assert (
        limited.headers["x-hubspot-ratelimit-max"] == "2" and "x-hubspot-ratelimit-daily-remaining" in limited.headers
    )
    assert again.status_code == 200


def test_imagegate_emulate_hubspot_serves_the_portal_as_a_process() -> None:
    with emulator_process("hubspot", "--credentials", "pat-test", "--products", "77") as base:
        patched = httpx.patch(
            f"{base}/crm/v3/objects/products/77",
            json={"properties": {"hs_images": "https://x"}},
            headers={"Authorization": "Bearer pat-test"},
            timeout=5,
        )
        refused = httpx.get(f"{base}/crm/v3/properties/products", headers=AUTH, timeout=5)
    assert patched.status_code == 200 and refused.status_code == 401
