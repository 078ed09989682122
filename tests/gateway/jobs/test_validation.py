"""Bad input to POST /v1/jobs: a 422 naming the field, in the one error envelope, and nothing created."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Stack, auth

BAD_BODIES: list[tuple[dict[str, Any], str]] = [
    ({}, "body"),  # neither a prompt nor a template
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * 4001}, "prompt"),
    ({"prompt": "a\x00b"}, "prompt"),
    ({"prompt": 42}, "prompt"),
    ({"prompt": "ok", "negative_prompt": "x" * 4001}, "negative_prompt"),
    ({"prompt": "ok", "width": 63}, "width"),
    ({"prompt": "ok", "width": 2056}, "width"),
    ({"prompt": "ok", "watermark": {"position": "top-left"}}, "watermark"),
    ({"prompt": "ok", "watermark": {"text": "ACME", "opacity": 2}}, "watermark.opacity"),
    ({"prompt": "ok", "tags": ["x" * 101]}, "tags.0"),
    ({"prompt": "ok", "height": "512"}, "height"),
    ({"prompt": "ok", "height": 512.5}, "height"),
    ({"prompt": "ok", "height": True}, "height"),
    ({"prompt": "ok", "steps": 0}, "steps"),
    ({"prompt": "ok", "steps": 151}, "steps"),
    ({"prompt": "ok", "guidance_scale": -0.1}, "guidance_scale"),
    ({"prompt": "ok", "guidance_scale": 30.5}, "guidance_scale"),
    ({"prompt": "ok", "seed": -2}, "seed"),
    ({"prompt": "ok", "seed": 2**32}, "seed"),
    ({"prompt": "ok", "seed": 2**70}, "seed"),
    ({"prompt": "ok", "n": 0}, "n"),
    ({"prompt": "ok", "n": 9}, "n"),
    ({"prompt": "ok", "model": ""}, "model"),
    ({"prompt": "ok", "output_format": "gif"}, "output_format"),
    ({"prompt": "ok", "system_id": "sys_x"}, "system_id"),
    ({"prompt": "ok", "status": "succeeded"}, "status"),
]


@pytest.mark.parametrize(("body", "field"), BAD_BODIES, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_BODIES)])
async def test_bad_job_body_is_422_naming_the_field_and_creates_nothing(
    embedded: Stack, body: dict[str, Any], field: str
) -> None:
    token = await embedded.system()
    response = await embedded.client.post("/v1/jobs", json=body, headers=auth(token))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert field in error["message"]
    assert any(d["field"] == field for d in error["details"])
    listed = (await embedded.client.get("/v1/jobs", headers=auth(token))).json()
    assert listed["items"] == []


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        (b"{not json", 422, "validation_error"),
        (b"[]", 422, "validation_error"),
        (b'"prompt"', 422, "validation_error"),
        (b"", 422, "validation_error"),
        (b'{"prompt": "\\ud800"}', 422, "validation_error"),
        (b"\xff\xfe", 422, "validation_error"),
        (b"\x80z^", 400, "invalid_body"),
    ],
    ids=["broken", "array", "string", "empty", "lone-surrogate", "utf16-bom", "not-utf8"],
)
async def test_malformed_json_is_a_4xx_envelope_not_500(embedded: Stack, raw: bytes, status: int, code: str) -> None:
    token = await embedded.system()
    response = await embedded.client.post(
        "/v1/jobs", content=raw, headers={**auth(token), "Content-Type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


async def test_integral_json_numbers_count_as_integers(embedded: Stack) -> None:
    token = await embedded.system()
    body = {"prompt": "ok", "width": 512.0, "height": 256.0, "steps": 2.0, "n": 1.0, "seed": 5.0}
    response = await embedded.client.post("/v1/jobs", json=body, headers=auth(token))
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["width"], job["height"], job["steps"], job["n"], job["seed"]) == (512, 256, 2, 1, 5)


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "ключ".encode()])
async def test_malformed_idempotency_key_is_422(embedded: Stack, key: str | bytes) -> None:
    token = await embedded.system()
    headers: dict[str, Any] = {**auth(token), "Idempotency-Key": key}
    response = await embedded.client.post("/v1/jobs", json={"prompt": "ok"}, headers=headers)
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "query", ["status=done", "limit=0", "limit=101", "limit=x", "cursor=../../etc", "cursor=" + "f" * 50]
)
async def test_bad_list_query_is_422(embedded: Stack, query: str) -> None:
    token = await embedded.system()
    response = await embedded.client.get(f"/v1/jobs?{query}", headers=auth(token))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


async def test_valid_edge_values_are_accepted(embedded: Stack) -> None:
    token = await embedded.system()
    body = {
        "prompt": "界" * 4000,
        "negative_prompt": "blurry",
        "width": 64,
        "height": 2048,
        "steps": 1,
        "guidance_scale": 0,
        "seed": 2**32 - 1,
        "n": 1,
        "model": "any-model",
        "output_format": "webp",
    }
    response = await embedded.client.post("/v1/jobs", json=body, headers=auth(token))
    assert response.status_code == 202, response.text
    job = await embedded.wait(token, response.json()["id"])
    assert job["status"] == "succeeded"
    assert (job["assets"][0]["width"], job["assets"][0]["height"]) == (64, 2048)
