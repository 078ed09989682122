"""The native jobs API, run against both stacks (embedded default and PostgreSQL + Redis/arq)."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import Stack, auth, running_worker, start_stack


async def test_submitted_job_runs_to_success_with_downloadable_assets(stack: Stack) -> None:
    token = await stack.system()
    job = await stack.submit(token, prompt="a red bicycle", width=320, height=192, n=2, seed=1234)
    assert job["status"] == "queued"
    assert job["seed"] == 1234

    done = await stack.wait(token, job["id"])
    assert done["status"] == "succeeded", done
    assert done["progress"] == 1.0
    assert done["backend"] == "preview"
    assert done["started_at"] and done["finished_at"]
    assert [a["seed"] for a in done["assets"]] == [1234, 1235]
    for asset in done["assets"]:
        response = await stack.client.get(asset["url"].removeprefix("http://testserver"), headers=auth(token))
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        assert hashlib.sha256(response.content).hexdigest() == asset["sha256"]
        assert len(response.content) == asset["bytes"]
        assert Image.open(io.BytesIO(response.content)).size == (320, 192)


@pytest.mark.parametrize(
    ("fmt", "content_type", "pil"), [("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")]
)
async def test_output_format_sets_stored_bytes_and_content_type(
    stack: Stack, fmt: str, content_type: str, pil: str
) -> None:
    token = await stack.system()
    job = await stack.wait(token, (await stack.submit(token, output_format=fmt))["id"])
    asset = job["assets"][0]
    assert asset["format"] == fmt
    response = await stack.client.get(f"/v1/assets/{asset['id']}", headers=auth(token))
    assert response.headers["content-type"] == content_type
    assert Image.open(io.BytesIO(response.content)).format == pil


async def test_absent_seed_is_resolved_and_recorded(stack: Stack) -> None:
    token = await stack.system()
    first = await stack.submit(token)
    second = await stack.submit(token, seed=-1)
    for job in (first, second):
        assert 0 <= job["seed"] <= 2**32 - 1
    assert first["seed"] != second["seed"]


async def test_same_idempotency_key_and_body_returns_the_same_job(stack: Stack) -> None:
    token = await stack.system()
    headers = {**auth(token), "Idempotency-Key": "order-42"}
    body = {"prompt": "a teapot", "width": 128, "height": 128, "steps": 2}
    first = await stack.client.post("/v1/jobs", json=body, headers=headers)
    second = await stack.client.post("/v1/jobs", json=body, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    listed = (await stack.client.get("/v1/jobs", headers=auth(token))).json()
    assert len(listed["items"]) == 1


async def test_same_idempotency_key_with_another_body_is_409(stack: Stack) -> None:
    token = await stack.system()
    headers = {**auth(token), "Idempotency-Key": "order-43"}
    await stack.client.post("/v1/jobs", json={"prompt": "a teapot"}, headers=headers)
    response = await stack.client.post("/v1/jobs", json={"prompt": "a kettle"}, headers=headers)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_key_reused"


async def test_concurrent_requests_with_one_idempotency_key_create_one_job(stack: Stack) -> None:
    token = await stack.system()
    headers = {**auth(token), "Idempotency-Key": "burst-1"}
    body = {"prompt": "a teapot", "width": 128, "height": 128, "steps": 2}
    responses = await asyncio.gather(*(stack.client.post("/v1/jobs", json=body, headers=headers) for _ in range(8)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1


async def test_idempotency_keys_are_per_system(stack: Stack) -> None:
    a, b = await stack.system(), await stack.system()
    body = {"prompt": "a teapot"}
    ja = await stack.client.post("/v1/jobs", json=body, headers={**auth(a), "Idempotency-Key": "k"})
    jb = await stack.client.post("/v1/jobs", json=body, headers={**auth(b), "Idempotency-Key": "k"})
    assert ja.json()["id"] != jb.json()["id"]


async def test_cancel_of_a_running_job_stops_its_generation(stack: Stack) -> None:
    token = await stack.system()
    job = await stack.submit(token, steps=150)  # 3 s on the test preview backend
    await stack.wait(token, job["id"], until=lambda j: j["status"] == "running" and j["progress"] > 0)
    assert stack.running_tasks() == 1
    response = await stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(token))
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    await asyncio.sleep(1.5)  # a heartbeat later: the run noticed and stopped, long before its 3 s were up
    assert stack.running_tasks() == 0
    after = (await stack.client.get(f"/v1/jobs/{job['id']}", headers=auth(token))).json()
    assert after["status"] == "cancelled"
    assert after["assets"] == []
    again = await stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(token))
    assert again.status_code == 200


async def test_cancelled_queued_job_never_runs(tmp_path: Path, pg_database: str) -> None:
    async for stack in start_stack("distributed", tmp_path, pg_database, with_worker=False):
        token = await stack.system()
        job = await stack.submit(token)
        cancelled = await stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(token))
        assert cancelled.json()["status"] == "cancelled"
        other = await stack.submit(token)
        async with running_worker(stack.res.settings):
            await stack.wait(token, other["id"])  # the worker ran the queue past the cancelled job
        after = (await stack.client.get(f"/v1/jobs/{job['id']}", headers=auth(token))).json()
        assert (after["status"], after["attempts"], after["started_at"]) == ("cancelled", 0, None)


async def test_cancel_of_finished_job_is_409(stack: Stack) -> None:
    token = await stack.system()
    job = await stack.wait(token, (await stack.submit(token))["id"])
    response = await stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(token))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "job_not_cancellable"


async def test_list_is_newest_first_paginated_filtered_and_own_only(stack: Stack) -> None:
    mine, other = await stack.system(), await stack.system()
    ids = [(await stack.submit(mine, prompt=f"p{i}"))["id"] for i in range(5)]
    await stack.submit(other)
    for job_id in ids:
        await stack.wait(mine, job_id)

    page1 = (await stack.client.get("/v1/jobs?limit=2", headers=auth(mine))).json()
    page2 = (await stack.client.get(f"/v1/jobs?limit=2&cursor={page1['next_cursor']}", headers=auth(mine))).json()
    page3 = (await stack.client.get(f"/v1/jobs?limit=2&cursor={page2['next_cursor']}", headers=auth(mine))).json()
    seen = [j["id"] for j in page1["items"] + page2["items"] + page3["items"]]
    assert seen == list(reversed(ids))
    assert page3["next_cursor"] is None

    succeeded = (await stack.client.get("/v1/jobs?status=succeeded", headers=auth(mine))).json()
    assert len(succeeded["items"]) == 5
    queued = (await stack.client.get("/v1/jobs?status=cancelled", headers=auth(mine))).json()
    assert queued["items"] == []


async def test_other_systems_job_and_asset_answer_404_like_missing_ones(stack: Stack) -> None:
    owner, intruder = await stack.system(), await stack.system()
    job = await stack.wait(owner, (await stack.submit(owner))["id"])
    asset_id = job["assets"][0]["id"]
    for path, method in [
        (f"/v1/jobs/{job['id']}", "GET"),
        (f"/v1/jobs/{job['id']}/cancel", "POST"),
        (f"/v1/assets/{asset_id}", "GET"),
    ]:
        foreign = await stack.client.request(method, path, headers=auth(intruder))
        missing = await stack.client.request(
            method, path.replace(job["id"], "job_0").replace(asset_id, "ast_0"), headers=auth(intruder)
        )
        assert foreign.status_code == missing.status_code == 404
        assert foreign.json()["error"]["code"] == missing.json()["error"]["code"]


async def test_job_of_model_no_backend_serves_fails_with_no_backend(tmp_path: Path) -> None:
    async for embedded in start_stack("embedded", tmp_path, None, preview_models="preview"):
        token = await embedded.system()
        job = await embedded.wait(token, (await embedded.submit(token, model="sdxl-base"))["id"])
        assert job["status"] == "failed"
        assert job["error"]["code"] == "no_backend"
        assert "sdxl-base" in job["error"]["message"]


async def test_many_concurrent_submits_are_all_accepted(stack: Stack) -> None:
    """More requests at once than the database pool has connections: each waits its turn, none fails."""
    token = await stack.system()
    body = {"prompt": "burst", "width": 64, "height": 64, "steps": 1}
    responses = await asyncio.gather(
        *(stack.client.post("/v1/jobs", json=body, headers=auth(token)) for _ in range(60))
    )
    assert [r.status_code for r in responses] == [202] * 60


@pytest.mark.parametrize(
    "path",
    ["/v1/jobs/job_%00x", "/v1/jobs/job_%00x/cancel", "/v1/assets/ast_%00x", "/v1/jobs/" + "j" * 5000],
)
async def test_malformed_ids_answer_404_without_echoing_them(stack: Stack, path: str) -> None:
    token = await stack.system()
    method = "POST" if path.endswith("/cancel") else "GET"
    response = await stack.client.request(method, path, headers=auth(token))
    assert response.status_code == 404
    assert response.json()["error"]["message"] in ("No such job.", "No such asset.")
