"""The Odoo emulator answers like Odoo's JSON-RPC and JSON-2 APIs for product.template images."""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image

from gateway.emulators.odoo import DEFAULT_API_KEY, DEFAULT_DATABASE, DEFAULT_LOGIN, create_app
from tests.connectors.support import png
from tests.emulators.support import emulator_process


@contextlib.asynccontextmanager
async def emulator(**options: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(**options)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://odoo", timeout=30) as client:
        yield client, app


async def rpc(client: httpx.AsyncClient, service: str, method: str, *args: Any) -> httpx.Response:
    return await client.post(
        "/jsonrpc",
        json={
            "jsonrpc": "2.0",
            "method": "call",
            "id": 7,
            "params": {"service": service, "method": method, "args": list(args)},
        },
    )


async def execute(
    client: httpx.AsyncClient, method: str, args: list[Any], *, key: str = DEFAULT_API_KEY, uid: int = 2
) -> Any:
    response = await rpc(client, "object", "execute_kw", DEFAULT_DATABASE, uid, key, "product.template", method, args)
    assert response.status_code == 200  # JSON-RPC answers its errors with HTTP 200 too
    return response.json()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_authenticate_answers_the_uid_and_false_for_a_wrong_key() -> None:
    async with emulator() as (client, _):
        good = await rpc(client, "common", "authenticate", DEFAULT_DATABASE, DEFAULT_LOGIN, DEFAULT_API_KEY, {})
        bad = await rpc(client, "common", "authenticate", DEFAULT_DATABASE, DEFAULT_LOGIN, "wrong", {})
        version = await rpc(client, "common", "version")
    assert good.json() == {"jsonrpc": "2.0", "id": 7, "result": 2}
    assert bad.status_code == 200 and bad.json() == {"jsonrpc": "2.0", "id": 7, "result": False}
    assert version.json()["result"]["server_version_info"][0] == 19


async def test_authenticate_on_an_unknown_database_is_an_operational_error() -> None:
    async with emulator() as (client, _):
        response = await rpc(client, "common", "authenticate", "nope", DEFAULT_LOGIN, DEFAULT_API_KEY, {})
    error = response.json()["error"]
    assert response.status_code == 200 and error["data"]["name"] == "psycopg2.OperationalError"
    assert 'database "nope" does not exist' in error["data"]["message"]


async def test_writing_image_1920_stores_the_image_and_reading_it_back_gives_the_same_bytes() -> None:
    image = png(60, 40)
    async with emulator() as (client, app):
        written = await execute(client, "write", [[1], {"image_1920": b64(image)}])
        again = await execute(client, "write", [[1], {"image_1920": b64(image)}])
        read = await execute(client, "read", [[1], ["image_1920", "name"]])
    assert written == {"jsonrpc": "2.0", "id": 7, "result": True} and again["result"] is True
    assert base64.b64decode(read["result"][0]["image_1920"]) == image
    assert app.state.products[1]["image_1920"] == image and len(app.state.writes) == 2


async def test_a_wrong_key_in_execute_kw_is_access_denied_in_odoo_s_error_envelope() -> None:
    async with emulator() as (client, app):
        body = await execute(client, "write", [[1], {"image_1920": b64(png())}], key="wrong")
        wrong_uid = await execute(client, "write", [[1], {"image_1920": b64(png())}], uid=False)  # type: ignore[arg-type]
    assert body["id"] == 7 and "result" not in body
    error = body["error"]
    assert (error["code"], error["message"]) == (200, "Odoo Server Error")
    assert error["data"]["name"] == "odoo.exceptions.AccessDenied" and error["data"]["message"] == "Access Denied"
    assert {"name", "message", "arguments", "context", "debug"} <= set(error["data"])
    assert wrong_uid["error"]["data"]["name"] == "odoo.exceptions.AccessDenied"
    assert app.state.products[1]["image_1920"] is None


async def test_writing_an_unknown_record_is_a_missing_error() -> None:
    async with emulator() as (client, _):
        body = await execute(client, "write", [[999], {"image_1920": b64(png())}])
    data = body["error"]["data"]
    assert data["name"] == "odoo.exceptions.MissingError" and "999" in data["message"]


@pytest.mark.parametrize(
    ("args", "model", "name", "text"),
    [
        (
            [[1], {"image_1920": b64(b"not an image")}],
            "product.template",
            "odoo.exceptions.UserError",
            "decoded as an image",
        ),
        ([[1], {"colour": "red"}], "product.template", "builtins.ValueError", "Invalid field 'colour'"),
        ([[1], {"image_1920": b64(png())}], "res.partner.nope", "odoo.exceptions.UserError", "doesn't exist"),
    ],
)
async def test_bad_values_models_are_refused_with_odoo_s_exceptions(
    args: list[Any], model: str, name: str, text: str
) -> None:
    async with emulator() as (client, _):
        response = await rpc(client, "object", "execute_kw", DEFAULT_DATABASE, 2, DEFAULT_API_KEY, model, "write", args)
    data = response.json()["error"]["data"]
    assert data["name"] == name and text in data["message"]


async def test_unknown_and_private_methods_are_refused() -> None:
    async with emulator() as (client, _):
        unknown = await execute(client, "frobnicate", [[1]])
        private = await execute(client, "_write", [[1], {}])
    assert unknown["error"]["data"]["name"] == "builtins.AttributeError"
    assert private["error"]["data"]["name"] == "odoo.exceptions.AccessError"


async def test_an_image_larger_than_1920_is_scaled_down_to_fit_like_odoo_s_image_field() -> None:
    async with emulator() as (client, app):
        await execute(client, "write", [[1], {"image_1920": b64(png(2400, 600))}])
    with Image.open(io.BytesIO(app.state.products[1]["image_1920"])) as stored:
        assert stored.size == (1920, 480) and stored.format == "PNG"


async def test_json2_write_answers_true_and_stores_the_image() -> None:
    image = png(32, 32)
    async with emulator() as (client, app):
        response = await client.post(
            "/json/2/product.template/write",
            json={"ids": [2], "vals": {"image_1920": b64(image)}},
            headers={"Authorization": f"bearer {DEFAULT_API_KEY}", "X-Odoo-Database": DEFAULT_DATABASE},
        )
    assert (response.status_code, response.json()) == (200, True)
    assert app.state.products[2]["image_1920"] == image


async def test_json2_with_a_bad_key_is_401_invalid_apikey() -> None:
    async with emulator() as (client, _):
        response = await client.post(
            "/json/2/product.template/write",
            json={"ids": [2], "vals": {}},
            headers={"Authorization": "bearer nope"},
        )
    body = response.json()
    assert response.status_code == 401
    assert (body["name"], body["message"], body["arguments"]) == (
        "werkzeug.exceptions.Unauthorized",
        "Invalid apikey",
        ["Invalid apikey", 401],
    )


async def test_json2_errors_take_the_http_status_of_odoo_s_exception() -> None:
    headers = {"Authorization": f"bearer {DEFAULT_API_KEY}"}
    async with emulator() as (client, _):
        missing = await client.post(
            "/json/2/product.template/write", json={"ids": [999], "vals": {"image_1920": b64(png())}}, headers=headers
        )
        bad_image = await client.post(
            "/json/2/product.template/write", json={"ids": [1], "vals": {"image_1920": "AAAA"}}, headers=headers
        )
    assert (missing.status_code, missing.json()["name"]) == (404, "odoo.exceptions.MissingError")
    assert (bad_image.status_code, bad_image.json()["name"]) == (422, "odoo.exceptions.UserError")


async def test_an_odoo_before_19_has_no_json2() -> None:
    async with emulator(json2=False) as (client, _):
        response = await client.post(
            "/json/2/product.template/write", json={}, headers={"Authorization": f"bearer {DEFAULT_API_KEY}"}
        )
    assert response.status_code == 404


def test_imagegate_emulate_odoo_serves_the_database_as_a_process() -> None:
    call = {"jsonrpc": "2.0", "method": "call", "id": 1}
    with emulator_process("odoo", "--credentials", "shop:bot:k3y", "--products", "41,42") as base:
        login = httpx.post(
            f"{base}/jsonrpc",
            json={
                **call,
                "params": {"service": "common", "method": "authenticate", "args": ["shop", "bot", "k3y", {}]},
            },
            timeout=5,
        )
        args = ["shop", 2, "k3y", "product.template", "write", [[42], {"image_1920": b64(png())}]]
        written = httpx.post(
            f"{base}/jsonrpc",
            json={**call, "params": {"service": "object", "method": "execute_kw", "args": args}},
            timeout=5,
        )
    assert login.json()["result"] == 2 and written.json()["result"] is True
