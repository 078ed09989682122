"""OAuth2 client credentials: the token endpoint, and JWT access tokens accepted as bearer tokens."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from tests.conftest import Stack, auth, wrong


async def oauth_system(stack: Stack, name: str = "crm", scopes: list[str] | None = None) -> dict[str, Any]:
    admin = await stack.admin()
    body = {"name": name, "scopes": scopes or ["generate", "batch"], "oauth": True}
    response = await stack.client.post("/v1/admin/systems", json=body, headers=auth(admin))
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


async def token_for(stack: Stack, created: dict[str, Any], **form: str) -> httpx.Response:
    return await stack.client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", **form},
        headers=basic(created["client_id"], created["client_secret"]),
    )


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": "imagegate",
        "aud": "imagegate-api",
        "sub": "",
        "sid": "",
        "scope": "generate",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _gateway_key(stack: Stack) -> OctKey:
    secret = stack.res.settings.secret_key.encode()
    return OctKey.import_key(hmac.new(secret, b"imagegate/oauth2-access-token/v1", hashlib.sha256).digest())


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_client_credentials_with_basic_auth_give_a_bearer_token_that_submits_jobs(embedded: Stack) -> None:
    created = await oauth_system(embedded)

    response = await token_for(embedded, created)

    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 600
    assert body["scope"] == "batch generate"
    job = await embedded.submit(body["access_token"])
    assert (await embedded.wait(body["access_token"], job["id"]))["status"] == "succeeded"


async def test_client_secret_post_works_too(embedded: Stack) -> None:
    created = await oauth_system(embedded)

    response = await embedded.client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": created["client_id"],
            "client_secret": created["client_secret"],
        },
    )

    assert response.status_code == 200, response.text


async def test_a_narrower_scope_can_be_requested_and_is_enforced(embedded: Stack) -> None:
    created = await oauth_system(embedded)
    token = (await token_for(embedded, created, scope="batch")).json()["access_token"]

    response = await embedded.client.post("/v1/jobs", json={"prompt": "a cat"}, headers=auth(token))

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insufficient_scope"


@pytest.mark.parametrize(
    ("form", "headers", "status", "error"),
    [
        ({"grant_type": "password"}, "good", 400, "unsupported_grant_type"),
        ({"grant_type": "client_credentials", "scope": "admin"}, "good", 400, "invalid_scope"),
        ({"grant_type": "client_credentials"}, "wrong-secret", 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, "unknown-client", 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, "none", 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, "garbage-basic", 401, "invalid_client"),
    ],
)
async def test_token_endpoint_errors_follow_rfc_6749(
    embedded: Stack, form: dict[str, str], headers: str, status: int, error: str
) -> None:
    created = await oauth_system(embedded)
    header = {
        "good": basic(created["client_id"], created["client_secret"]),
        "wrong-secret": basic(created["client_id"], wrong(created["client_secret"])),
        "unknown-client": basic("cli_0000000000000000000000000000", created["client_secret"]),
        "none": {},
        "garbage-basic": {"Authorization": "Basic !!!notbase64"},
    }[headers]

    response = await embedded.client.post("/oauth/token", data=form, headers=header)

    assert response.status_code == status
    assert response.json()["error"] == error
    assert created["client_secret"] not in response.text


async def test_a_json_body_is_an_invalid_request(embedded: Stack) -> None:
    created = await oauth_system(embedded)

    response = await embedded.client.post(
        "/oauth/token",
        json={"grant_type": "client_credentials"},
        headers=basic(created["client_id"], created["client_secret"]),
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_revoking_the_client_ends_its_issued_tokens(embedded: Stack) -> None:
    created = await oauth_system(embedded)
    token = (await token_for(embedded, created)).json()["access_token"]
    assert (await embedded.client.get("/v1/jobs", headers=auth(token))).status_code == 200

    admin = await embedded.admin()
    revoke = f"/v1/admin/systems/crm/oauth-clients/{created['client_id']}/revoke"
    assert (await embedded.client.post(revoke, headers=auth(admin))).status_code == 200

    assert (await embedded.client.get("/v1/jobs", headers=auth(token))).status_code == 401
    assert (await token_for(embedded, created)).status_code == 401


async def test_narrowing_the_systems_scopes_narrows_its_live_tokens(embedded: Stack) -> None:
    created = await oauth_system(embedded)
    token = (await token_for(embedded, created)).json()["access_token"]
    admin = await embedded.admin()

    await embedded.client.patch("/v1/admin/systems/crm", json={"scopes": ["batch"]}, headers=auth(admin))

    response = await embedded.client.post("/v1/jobs", json={"prompt": "a cat"}, headers=auth(token))
    assert response.status_code == 403


def _bad_tokens(stack: Stack, good: str, client_id: str, system_id: str) -> dict[str, str]:
    key = _gateway_key(stack)
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    own = {"sub": client_id, "sid": system_id}

    def signed(**overrides: Any) -> str:
        return jwt.encode({"alg": "HS256"}, _claims(**{**own, **overrides}), key)

    rsa = RSAKey.generate_key(2048)
    return {
        "alg-none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "alg-none-no-dot": f"{_b64({'alg': 'none'})}.{payload}",
        "tampered-payload": f"{header}.{_b64({**claims, 'scope': 'admin generate'})}.{signature}",
        "tampered-signature": f"{header}.{payload}.{signature[:-2]}{'BA' if signature.endswith('AA') else 'AA'}",
        "truncated": good[:-10],
        "expired": signed(exp=int(time.time()) - 120, iat=int(time.time()) - 900, nbf=int(time.time()) - 900),
        "not-yet-valid": signed(nbf=int(time.time()) + 600),
        "wrong-issuer": signed(iss="https://evil.example"),
        "wrong-audience": signed(aud="another-api"),
        "no-expiry": signed(exp=None),
        "other-key": jwt.encode({"alg": "HS256"}, _claims(**own), OctKey.generate_key(256)),
        "rs256": jwt.encode({"alg": "RS256"}, _claims(**own), rsa, algorithms=["RS256"]),
        "other-system": signed(sid="sys_00000000000000000000000000000000"),
        "unknown-client": signed(sub="cli_0000000000000000000000000000"),
    }


async def test_every_bad_access_token_gets_the_same_401(embedded: Stack) -> None:
    created = await oauth_system(embedded)
    good = (await token_for(embedded, created)).json()["access_token"]
    reference = await embedded.client.get("/v1/jobs", headers=auth("igw_nonsense"))
    assert (await embedded.client.get("/v1/jobs", headers=auth(good))).status_code == 200

    for name, token in _bad_tokens(embedded, good, created["client_id"], created["id"]).items():
        response = await embedded.client.get("/v1/jobs", headers=auth(token))
        assert response.status_code == 401, name
        assert response.json() == reference.json(), name
        assert response.headers["www-authenticate"] == reference.headers["www-authenticate"], name


async def test_a_signed_token_with_exactly_the_right_claims_is_accepted(embedded: Stack) -> None:
    """The forged-token cases above fail for their one defect, not because the forging is wrong."""
    created = await oauth_system(embedded)
    token = jwt.encode({"alg": "HS256"}, _claims(sub=created["client_id"], sid=created["id"]), _gateway_key(embedded))

    assert (await embedded.client.get("/v1/jobs", headers=auth(token))).status_code == 200
