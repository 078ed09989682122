"""Function-level authorisation and inventory: every route declares a scope, admin routes refuse business
tokens, and the routes served are exactly the documented ones (OWASP API5, API9)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.audit.models import AuditEvent
from gateway.main import create_app
from policies.scopes import ALL_SCOPES, Scope
from tests.conftest import Stack, auth, make_settings
from tests.gateway.security.routes import PROTECTED, PUBLIC, routes

BUSINESS_SCOPES = ",".join(sorted(ALL_SCOPES - {Scope.admin}))


def _app(tmp_path: Path):  # type: ignore[no-untyped-def]
    return create_app(make_settings(tmp_path))


def test_every_v1_route_declares_at_least_one_scope(tmp_path: Path) -> None:
    for route in routes(_app(tmp_path)):
        if route.path.startswith("/v1"):
            assert route.scopes and all(route.scopes), f"{route.key} declares no scope"


def test_every_admin_route_needs_the_admin_scope_and_only_it(tmp_path: Path) -> None:
    admin_routes = [r for r in routes(_app(tmp_path)) if r.path.startswith("/v1/admin")]
    assert len(admin_routes) >= 19
    for route in admin_routes:
        assert route.scopes == (frozenset({Scope.admin}),), route.key


def test_public_routes_are_exactly_the_allowlist(tmp_path: Path) -> None:
    served = {r.key for r in routes(_app(tmp_path))}

    assert {key for key in served if not key.split(" ", 1)[1].startswith("/v1")} == PUBLIC
    assert {key for key in served if key.split(" ", 1)[1].startswith("/v1")} == PROTECTED


async def test_the_openapi_schema_documents_exactly_the_api_routes(embedded: Stack) -> None:
    schema = (await embedded.client.get("/openapi.json")).json()
    documented = {f"{method.upper()} {path}" for path, item in schema["paths"].items() for method in item}

    assert documented == (PUBLIC | PROTECTED) - {
        "GET /openapi.json",
        "GET /docs",
        "GET /docs/oauth2-redirect",
        "GET /redoc",
    }


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "crm", path)


async def test_every_admin_route_refuses_a_business_token_with_403_and_changes_nothing(embedded: Stack) -> None:
    business = await embedded.system("crm", scopes=BUSINESS_SCOPES)
    admin_routes = [r for r in routes(embedded.app) if r.path.startswith("/v1/admin")]
    async with embedded.res.sessionmaker() as session:
        changes_before = (await session.execute(select(func.count()).where(AuditEvent.outcome == "ok"))).scalar()

    for route in admin_routes:
        response = await embedded.client.request(
            route.method, _concrete(route.path), headers=auth(business), json={"name": "x", "scopes": ["admin"]}
        )
        assert response.status_code == 403, route.key
        assert response.json()["error"]["code"] == "insufficient_scope", route.key

    await embedded.res.audit.flush()
    async with embedded.res.sessionmaker() as session:
        changes_after = (await session.execute(select(func.count()).where(AuditEvent.outcome == "ok"))).scalar()
        refusals = (await session.execute(select(func.count()).where(AuditEvent.action == "scope.refused"))).scalar()
    assert changes_after == changes_before
    assert refusals == len(admin_routes)


@pytest.mark.parametrize(
    ("scopes", "method", "path", "allowed"),
    [
        ("batch", "POST", "/v1/jobs", False),
        ("templates:read", "GET", "/v1/jobs", False),
        ("generate", "GET", "/v1/jobs", True),
        ("batch", "GET", "/v1/jobs", True),
        ("templates:read", "GET", "/v1/usage", True),
    ],
)
async def test_business_routes_follow_their_declared_scopes(
    embedded: Stack, scopes: str, method: str, path: str, allowed: bool
) -> None:
    token = await embedded.system(scopes=scopes)

    response = await embedded.client.request(method, path, headers=auth(token), json={"prompt": "a cat"})

    assert (response.status_code != 403) is allowed, response.text
