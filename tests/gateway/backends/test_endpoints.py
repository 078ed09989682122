"""The admin API of the backend pool (/v1/admin/backends), against the A1111 emulator as a real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from sqlmodel import select

from gateway.backends import repository
from gateway.backends.models import Backend
from gateway.common.crypto import SecretBox
from gateway.db.engine import transaction
from tests.conftest import Stack, auth
from tests.live import serve_asgi
from tests.processes import free_port

ROUTE = "/v1/admin/backends"
MODELS = ["sd15-pruned", "juggernaut-xl"]
USER, PASSWORD = "gw", "pw-Kx81-never-shown"
TOKEN = "tok-Qz55-never-shown"


def _webui(auth: str | None = f"{USER}:{PASSWORD}") -> Any:
    from gateway.emulators.a1111 import create_app
    from gateway.emulators.core import EmulatorOptions

    return create_app(EmulatorOptions(models=list(MODELS), auth=auth, step_ms=5, load_ms=10))


@contextlib.asynccontextmanager
async def _serve_on(app: Any, port: int) -> AsyncIterator[None]:
    """Like ``serve_asgi`` but on a given port (a server that comes up where a backend already points)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "emulator did not start"
        yield
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=10)


@pytest.fixture
async def webui() -> AsyncIterator[str]:
    async with serve_asgi(_webui()) as url:
        yield url


@pytest.fixture
async def admin(embedded: Stack) -> dict[str, str]:
    """An admin's headers. The pool's background prober is stopped first: these tests are about the admin API,
    and a pool probe still writing a row when the stack shuts down can hang the test's event loop at close
    (``BackendPool.probe_due`` gathers probes without ``return_exceptions``, so a cancel leaves some running)."""
    await embedded.res.pool.aclose()
    return auth(await embedded.system(scopes="admin"))


def _closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def _body(url: str, name: str = "gpu-01", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": name,
        "kind": "a1111",
        "url": url,
        "auth": {"type": "basic", "username": USER, "password": PASSWORD},
    }
    body.update(overrides)
    return body


async def _create(stack: Stack, headers: dict[str, str], body: dict[str, Any], probe: bool = True) -> dict[str, Any]:
    response = await stack.client.post(ROUTE, json=body, headers=headers, params={"probe": str(probe).lower()})
    assert response.status_code == 201, response.text
    return response.json()


async def _names(stack: Stack, headers: dict[str, str]) -> list[str]:
    response = await stack.client.get(ROUTE, headers=headers)
    assert response.status_code == 200, response.text
    return [item["name"] for item in response.json()["items"]]


async def _row(stack: Stack, name: str) -> Backend:
    async with transaction(stack.res.sessionmaker) as session:
        row = (await session.execute(select(Backend).where(Backend.name == name))).scalar_one()
        session.expunge(row)
        return row


# --- create and probe ---------------------------------------------------------------------------------------


async def test_create_probes_the_server_and_records_its_models_and_health(
    embedded: Stack, admin: dict[str, str], webui: str
) -> None:
    backend = await _create(embedded, admin, _body(webui))
    assert backend["name"] == "gpu-01"
    assert backend["kind"] == "a1111"
    assert backend["url"] == webui
    assert backend["health"] == "healthy"
    assert backend["health_error"] is None
    assert backend["discovered_models"] == MODELS
    assert backend["loaded_model"] in MODELS
    assert backend["checked_at"] is not None
    assert backend["models"] == []
    assert backend["slots"] == 1
    assert backend["enabled"] is True
    assert (backend["auth_type"], backend["username"]) == ("basic", USER)


async def test_create_with_an_unreachable_server_is_kept_as_unhealthy(embedded: Stack, admin: dict[str, str]) -> None:
    backend = await _create(embedded, admin, _body(_closed_url()))
    assert backend["health"] == "unhealthy"
    assert "unreachable" in backend["health_error"]
    assert backend["discovered_models"] is None
    assert await _names(embedded, admin) == ["gpu-01"]


async def test_create_without_probe_leaves_health_unknown(embedded: Stack, admin: dict[str, str]) -> None:
    backend = await _create(embedded, admin, _body(_closed_url()), probe=False)
    assert (backend["health"], backend["checked_at"]) == ("unknown", None)


async def test_a_wrong_password_makes_the_backend_unhealthy_with_a_credentials_message(
    embedded: Stack, admin: dict[str, str], webui: str
) -> None:
    body = _body(webui, auth={"type": "basic", "username": USER, "password": "wrong"})
    backend = await _create(embedded, admin, body)
    assert backend["health"] == "unhealthy"
    assert "credentials" in backend["health_error"]
    assert backend["discovered_models"] is None


async def test_probe_refreshes_health_once_the_server_is_up(embedded: Stack, admin: dict[str, str]) -> None:
    port = free_port()
    first = await _create(embedded, admin, _body(f"http://127.0.0.1:{port}"))
    assert first["health"] == "unhealthy"
    async with _serve_on(_webui(), port):
        response = await embedded.client.post(f"{ROUTE}/gpu-01/probe", headers=admin)
    assert response.status_code == 200, response.text
    probed = response.json()
    assert probed["health"] == "healthy"
    assert probed["health_error"] is None
    assert probed["discovered_models"] == MODELS
    assert probed["checked_at"] > first["checked_at"]


async def test_probe_of_an_unknown_backend_is_404(embedded: Stack, admin: dict[str, str]) -> None:
    response = await embedded.client.post(f"{ROUTE}/nobody/probe", headers=admin)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_a_duplicate_name_is_409_backend_exists(embedded: Stack, admin: dict[str, str]) -> None:
    await _create(embedded, admin, _body(_closed_url()), probe=False)
    response = await embedded.client.post(ROUTE, json=_body(_closed_url()), headers=admin)
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "backend_exists"
    assert "gpu-01" in error["message"]
    assert await _names(embedded, admin) == ["gpu-01"]


# --- validation --------------------------------------------------------------------------------------------

GOOD_URL = "http://10.0.0.5:7860"
BAD_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-kind", {"kind": "nope"}, "kind"),
    ("ftp-url", {"url": "ftp://10.0.0.5/models"}, "url"),
    ("file-url", {"url": "file:///etc/passwd"}, "url"),
    ("url-without-scheme", {"url": "10.0.0.5:7860"}, "url"),
    ("url-with-space", {"url": "http://10.0.0.5:7860/a b"}, "url"),
    ("url-with-credentials", {"url": f"http://{USER}:{PASSWORD}@10.0.0.5:7860"}, "url"),
    ("url-javascript", {"url": "javascript:alert(1)//x"}, "url"),
    ("slots-0", {"slots": 0}, "slots"),
    ("slots-65", {"slots": 65}, "slots"),
    ("slots-string", {"slots": "2"}, "slots"),
    ("unknown-field", {"colour": "red"}, "colour"),
    ("basic-without-password", {"auth": {"type": "basic", "username": USER}}, "auth"),
    ("basic-empty-password", {"auth": {"type": "basic", "username": USER, "password": ""}}, "auth"),
    ("auth-unknown-type", {"auth": {"type": "digest", "username": USER, "password": "x"}}, "auth"),
    ("bearer-without-token", {"auth": {"type": "bearer"}}, "auth"),
    ("name-uppercase", {"name": "GPU-01"}, "name"),
    ("name-space", {"name": "gpu 01"}, "name"),
    ("name-too-long", {"name": "g" * 65}, "name"),
    ("model-empty", {"models": [""]}, "models"),
    ("options-not-object", {"options": ["a"]}, "options"),
    ("options-too-big", {"options": {"blob": "x" * (256 * 1024)}}, "options"),
    ("timeout-0", {"timeout_seconds": 0}, "timeout_seconds"),
    ("enabled-string", {"enabled": "yes"}, "enabled"),
]


@pytest.mark.parametrize(("overrides", "field"), [b[1:] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES])
async def test_a_bad_create_body_is_422_naming_the_field_and_creates_nothing(
    embedded: Stack, admin: dict[str, str], overrides: dict[str, Any], field: str
) -> None:
    await _create(embedded, admin, _body(GOOD_URL, name="existing"), probe=False)
    response = await embedded.client.post(ROUTE, json=_body(GOOD_URL) | overrides, headers=admin)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert any(d["field"].split(".")[0] == field for d in error["details"]), error
    assert PASSWORD not in response.text
    assert await _names(embedded, admin) == ["existing"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"slots": 2}, "slots"),
        ({"options": {"poll_seconds": "often"}}, "options"),
        ({"options": {"poll_seconds": -1}}, "options"),
        ({"options": {"poll_seconds": None}}, "options"),
    ],
)
async def test_a1111_settings_its_adapter_cannot_use_are_422_and_change_nothing(
    embedded: Stack, admin: dict[str, str], body: dict[str, Any], field: str
) -> None:
    refused = await embedded.client.post(ROUTE, json=_body(GOOD_URL, **body), headers=admin, params={"probe": "false"})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["details"][0]["field"] == field
    assert await _names(embedded, admin) == []
    await _create(embedded, admin, _body(GOOD_URL), probe=False)
    patched = await embedded.client.patch(f"{ROUTE}/gpu-01", json=body, headers=admin)
    assert patched.status_code == 422, patched.text
    row = await _row(embedded, "gpu-01")
    assert (row.slots, row.options) == (1, {})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "http://10.0.0.5:abc"}, "url"),
        ({"options": {"poll_seconds": 10**400}}, "options"),
        ({"kind": "gradio", "options": {"fn_index": 1e308 * 10}}, "options"),
    ],
)
async def test_values_the_pattern_lets_through_but_no_client_can_use_are_422(
    embedded: Stack, admin: dict[str, str], body: dict[str, Any], field: str
) -> None:
    refused = await embedded.client.post(
        ROUTE,
        content=json.dumps(_body(**{"url": GOOD_URL, **body})),
        headers={**admin, "content-type": "application/json"},
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["details"][0]["field"] == field
    assert await _names(embedded, admin) == []


async def test_a_row_that_no_longer_passes_the_checks_can_still_be_disabled(
    embedded: Stack, admin: dict[str, str]
) -> None:
    await _create(embedded, admin, _body(GOOD_URL), probe=False)
    async with transaction(embedded.res.sessionmaker) as session:  # written before today's checks, or by hand
        row = (await session.execute(select(Backend).where(Backend.name == "gpu-01"))).scalar_one()
        row.slots, row.options = 2, {"poll_seconds": 0}
    disabled = await embedded.client.patch(f"{ROUTE}/gpu-01", json={"enabled": False}, headers=admin)
    assert disabled.status_code == 200, disabled.text
    fixed = await embedded.client.patch(f"{ROUTE}/gpu-01", json={"options": {}}, headers=admin)
    assert fixed.status_code == 200, fixed.text
    spec = repository.spec_of(await _row(embedded, "gpu-01"), SecretBox(embedded.res.settings.secret_key))
    assert spec.slots == 1, "the pool never uses more A1111 slots than the protocol allows"


async def test_comfyui_workflows_that_could_never_run_are_refused_when_added(
    embedded: Stack, admin: dict[str, str]
) -> None:
    ui_format = {"nodes": [], "links": []}
    body = _body(GOOD_URL, kind="comfyui", options={"workflows": {"*": ui_format}})
    refused = await embedded.client.post(ROUTE, json=body, headers=admin, params={"probe": "false"})
    assert refused.status_code == 422
    assert "UI format" in refused.json()["error"]["message"]
    assert await _names(embedded, admin) == []


async def test_a_server_answering_outside_the_protocol_is_unhealthy_not_a_500(
    embedded: Stack, admin: dict[str, str]
) -> None:
    async def not_comfyui(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # no lifespan
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        body = (
            b'{"CheckpointLoaderSimple": {"input": ["not", "a", "dict"]}}' if "object_info" in scope["path"] else b"{}"
        )
        await send({"type": "http.response.body", "body": body})

    async with serve_asgi(not_comfyui) as url:
        created = await _create(embedded, admin, _body(url, kind="comfyui", auth=None))
    assert created["health"] == "unhealthy"
    assert created["health_error"]


async def test_a_bad_patch_body_is_422_and_changes_nothing(embedded: Stack, admin: dict[str, str]) -> None:
    before = await _create(embedded, admin, _body(GOOD_URL), probe=False)
    for patch, field in [({"slots": 0}, "slots"), ({"url": "ftp://x.y/z"}, "url"), ({"name": "other"}, "name")]:
        response = await embedded.client.patch(f"{ROUTE}/gpu-01", json=patch, headers=admin)
        assert response.status_code == 422, response.text
        assert any(d["field"] == field for d in response.json()["error"]["details"])
    after = (await embedded.client.get(f"{ROUTE}/gpu-01", headers=admin)).json()
    assert after == before


# --- secrets ------------------------------------------------------------------------------------------------


async def test_the_password_never_leaves_the_gateway_and_is_sealed_in_the_database(
    embedded: Stack, admin: dict[str, str], webui: str
) -> None:
    created = await embedded.client.post(ROUTE, json=_body(webui), headers=admin)
    got = await embedded.client.get(f"{ROUTE}/gpu-01", headers=admin)
    listed = await embedded.client.get(ROUTE, headers=admin)
    patched = await embedded.client.patch(f"{ROUTE}/gpu-01", json={"timeout_seconds": 60}, headers=admin)
    probed = await embedded.client.post(f"{ROUTE}/gpu-01/probe", headers=admin)
    for response in (created, got, listed, patched, probed):
        assert response.status_code in (200, 201), response.text
        assert PASSWORD not in response.text
        assert "password" not in response.text
        assert "secret" not in response.text
    assert probed.json()["health"] == "healthy"  # the sealed password still opens the server

    row = await _row(embedded, "gpu-01")
    assert row.auth_secret is not None
    assert PASSWORD not in row.auth_secret
    assert SecretBox(embedded.res.settings.secret_key).open(row.auth_secret) == PASSWORD
    with pytest.raises(ValueError, match="cannot decrypt"):
        SecretBox("another-secret-key").open(row.auth_secret)


async def test_a_bearer_token_never_leaves_the_gateway_and_is_sealed(embedded: Stack, admin: dict[str, str]) -> None:
    body = _body(GOOD_URL, kind="openai", auth={"type": "bearer", "token": TOKEN})
    created = await _create(embedded, admin, body, probe=False)
    assert (created["auth_type"], created["username"], created["slots"]) == ("bearer", None, 4)
    new_token = TOKEN + "-rotated"
    patched = await embedded.client.patch(
        f"{ROUTE}/gpu-01", json={"auth": {"type": "bearer", "token": new_token}}, headers=admin
    )
    listed = await embedded.client.get(ROUTE, headers=admin)
    for text in (str(created), patched.text, listed.text):
        assert TOKEN not in text
    row = await _row(embedded, "gpu-01")
    assert row.auth_secret is not None and TOKEN not in row.auth_secret
    assert SecretBox(embedded.res.settings.secret_key).open(row.auth_secret) == new_token


async def test_patching_auth_to_none_drops_the_stored_secret(embedded: Stack, admin: dict[str, str]) -> None:
    await _create(embedded, admin, _body(GOOD_URL), probe=False)
    response = await embedded.client.patch(f"{ROUTE}/gpu-01", json={"auth": {"type": "none"}}, headers=admin)
    assert response.status_code == 200, response.text
    assert (response.json()["auth_type"], response.json()["username"]) == ("none", None)
    row = await _row(embedded, "gpu-01")
    assert (row.auth_kind, row.auth_username, row.auth_secret) == ("none", None, None)


# --- read, change, delete -----------------------------------------------------------------------------------


async def test_list_shows_every_backend_by_name(embedded: Stack, admin: dict[str, str], webui: str) -> None:
    assert await _names(embedded, admin) == []
    await _create(embedded, admin, _body(webui, name="gpu-b"))
    await _create(embedded, admin, _body(_closed_url(), name="gpu-a"), probe=False)
    await _create(embedded, admin, _body(GOOD_URL, name="cloud", kind="openai", auth={"type": "none"}), probe=False)
    items = {i["name"]: i for i in (await embedded.client.get(ROUTE, headers=admin)).json()["items"]}
    assert list(items) == ["cloud", "gpu-a", "gpu-b"]
    assert (items["gpu-b"]["health"], items["gpu-a"]["health"], items["cloud"]["health"]) == (
        "healthy",
        "unknown",
        "unknown",
    )
    assert items["gpu-b"]["discovered_models"] == MODELS
    assert all(item["speeds"] == [] for item in items.values())


async def test_get_returns_one_backend_and_404_for_an_unknown_name(embedded: Stack, admin: dict[str, str]) -> None:
    created = await _create(
        embedded, admin, _body(GOOD_URL, models=["a", "b", "a"], slots=3, kind="comfyui"), probe=False
    )
    got = await embedded.client.get(f"{ROUTE}/gpu-01", headers=admin)
    assert got.status_code == 200
    assert got.json() == created
    assert created["models"] == ["a", "b"]
    assert created["slots"] == 3
    missing = await embedded.client.get(f"{ROUTE}/gpu-02", headers=admin)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_patch_enabled_false_disables_it_and_moves_updated_at(embedded: Stack, admin: dict[str, str]) -> None:
    created = await _create(embedded, admin, _body(GOOD_URL), probe=False)
    response = await embedded.client.patch(f"{ROUTE}/gpu-01", json={"enabled": False}, headers=admin)
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["enabled"] is False
    assert patched["updated_at"] > created["updated_at"]
    assert patched["created_at"] == created["created_at"]
    assert (patched["url"], patched["slots"], patched["auth_type"]) == (GOOD_URL, 1, "basic")
    reread = (await embedded.client.get(f"{ROUTE}/gpu-01", headers=admin)).json()
    assert reread["enabled"] is False
    assert (await _row(embedded, "gpu-01")).enabled is False


async def test_patch_changes_only_the_given_fields(embedded: Stack, admin: dict[str, str]) -> None:
    await _create(embedded, admin, _body(GOOD_URL, models=["sd15"], kind="comfyui"), probe=False)
    body = {"url": "https://gpu.example.com/a1111/", "slots": 4, "timeout_seconds": 30}
    patched = (await embedded.client.patch(f"{ROUTE}/gpu-01", json=body, headers=admin)).json()
    assert (patched["url"], patched["slots"], patched["timeout_seconds"]) == ("https://gpu.example.com/a1111", 4, 30)
    assert (patched["models"], patched["enabled"], patched["auth_type"]) == (["sd15"], True, "basic")
    row = await _row(embedded, "gpu-01")
    assert row.auth_secret is not None
    assert SecretBox(embedded.res.settings.secret_key).open(row.auth_secret) == PASSWORD


async def test_patch_of_an_unknown_backend_is_404(embedded: Stack, admin: dict[str, str]) -> None:
    response = await embedded.client.patch(f"{ROUTE}/nobody", json={"enabled": False}, headers=admin)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_delete_is_204_then_the_backend_is_gone(embedded: Stack, admin: dict[str, str]) -> None:
    await _create(embedded, admin, _body(GOOD_URL), probe=False)
    response = await embedded.client.delete(f"{ROUTE}/gpu-01", headers=admin)
    assert response.status_code == 204
    assert response.content == b""
    assert (await embedded.client.get(f"{ROUTE}/gpu-01", headers=admin)).status_code == 404
    assert await _names(embedded, admin) == []
    again = await embedded.client.delete(f"{ROUTE}/gpu-01", headers=admin)
    assert again.status_code == 404
    # The name is free again.
    await _create(embedded, admin, _body(GOOD_URL), probe=False)


# --- authorization ------------------------------------------------------------------------------------------

ROUTES = [
    ("GET", ROUTE, None),
    ("POST", ROUTE, _body(GOOD_URL, name="intruder")),
    ("GET", f"{ROUTE}/gpu-01", None),
    ("PATCH", f"{ROUTE}/gpu-01", {"enabled": False}),
    ("DELETE", f"{ROUTE}/gpu-01", None),
    ("POST", f"{ROUTE}/gpu-01/probe", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
async def test_admin_routes_refuse_business_tokens_with_403_and_anonymous_calls_with_401(
    embedded: Stack, admin: dict[str, str], method: str, path: str, body: dict[str, Any] | None
) -> None:
    before = await _create(embedded, admin, _body(GOOD_URL), probe=False)
    business = auth(await embedded.system(scopes="generate,batch"))
    refused = await embedded.client.request(method, path, json=body, headers=business)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "insufficient_scope"
    anonymous = await embedded.client.request(method, path, json=body)
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.json()["error"]["code"] == "unauthorized"
    wrong = await embedded.client.request(method, path, json=body, headers=auth("igw_" + "0" * 49))
    assert wrong.status_code == 401
    # Nothing changed.
    assert await _names(embedded, admin) == ["gpu-01"]
    assert (await embedded.client.get(f"{ROUTE}/gpu-01", headers=admin)).json() == before
