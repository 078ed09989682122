"""Quotas: images and GPU-seconds per day, concurrent jobs, requests per minute; exact under concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from gateway.db.engine import transaction
from gateway.quotas import service as quotas
from gateway.quotas.models import JobCharge
from tests.conftest import Stack, auth


async def set_quota(stack: Stack, system_token: str, **limits: Any) -> dict[str, Any]:
    admin = await stack.admin()
    name = (await stack.client.get("/v1/usage", headers=auth(system_token))).json()["system"]
    response = await stack.client.patch(f"/v1/admin/systems/{name}/quota", json=limits, headers=auth(admin))
    assert response.status_code == 200, response.text
    return response.json()


async def usage(stack: Stack, token: str) -> dict[str, Any]:
    response = await stack.client.get("/v1/usage", headers=auth(token))
    assert response.status_code == 200, response.text
    return response.json()


def job_body(**extra: Any) -> dict[str, Any]:
    return {"prompt": "a teapot on a table", "width": 256, "height": 256, "steps": 2, **extra}


async def test_200_parallel_submissions_against_50_images_a_day_admit_exactly_50(stack: Stack) -> None:
    token = await stack.system()
    await set_quota(stack, token, images_per_day=50)

    responses = await asyncio.gather(
        *[stack.client.post("/v1/jobs", json=job_body(), headers=auth(token)) for _ in range(200)]
    )

    statuses = [r.status_code for r in responses]
    assert statuses.count(202) == 50
    assert statuses.count(429) == 150
    refusal = next(r for r in responses if r.status_code == 429)
    assert refusal.json()["error"]["code"] == "images_per_day_exceeded"
    assert int(refusal.headers["Retry-After"]) >= 1
    assert (await usage(stack, token))["used"]["images"] == 50


async def test_images_per_day_counts_n_images_per_job(embedded: Stack) -> None:
    token = await embedded.system()
    await set_quota(embedded, token, images_per_day=5)
    await embedded.submit(token, n=4)

    refused = await embedded.client.post("/v1/jobs", json=job_body(n=2), headers=auth(token))

    assert refused.status_code == 429
    assert refused.json()["error"]["details"] == {
        "limit": "images_per_day",
        "value": 5,
        "used": 4,
        "retry_after": int(refused.headers["Retry-After"]),
    }
    assert (await embedded.client.post("/v1/jobs", json=job_body(n=1), headers=auth(token))).status_code == 202


async def test_one_systems_exhausted_quota_does_not_refuse_another(embedded: Stack) -> None:
    crm, oa = await embedded.system(), await embedded.system()
    await set_quota(embedded, crm, images_per_day=1)
    await embedded.submit(crm)

    assert (await embedded.client.post("/v1/jobs", json=job_body(), headers=auth(crm))).status_code == 429
    assert (await embedded.client.post("/v1/jobs", json=job_body(), headers=auth(oa))).status_code == 202


async def test_gpu_seconds_are_estimated_at_admission_and_settled_with_the_measured_time(tmp_path: Any) -> None:
    from tests.conftest import start_stack

    async for stack in start_stack("embedded", tmp_path, None, preview_step_ms=150.0):
        token = await stack.system()
        await set_quota(stack, token, gpu_seconds_per_day=1000)
        job = await stack.submit(token, width=1024, height=1024, steps=4, n=1)
        # Estimate: 1.048576 MP x 4 steps x 1 image x 0.05 s per MP-step.
        expected = round(1024 * 1024 / 1e6 * 4 * 0.05, 3)
        assert (await usage(stack, token))["used"]["gpu_seconds"] == pytest.approx(expected)

        done = await stack.wait(token, job["id"])

        assert done["status"] == "succeeded"
        settled = (await usage(stack, token))["used"]["gpu_seconds"]
        assert settled != pytest.approx(expected)
        assert 0.5 <= settled <= 5.0  # four 150 ms steps, measured around the backend call
        async with transaction(stack.res.sessionmaker) as session:
            charge = (await session.execute(select(JobCharge).where(JobCharge.job_id == job["id"]))).scalar_one()
        assert charge.state == "settled"
        assert charge.settled_images == 1


async def test_a_job_over_the_gpu_seconds_left_today_is_refused(tmp_path: Any) -> None:
    from tests.conftest import start_stack

    async for stack in start_stack("embedded", tmp_path, None, preview_step_ms=2000.0):
        token = await stack.system()
        await set_quota(stack, token, gpu_seconds_per_day=2.0)
        big = job_body(width=1024, height=1024, steps=30)  # estimated 1.57 GPU-seconds
        assert (await stack.client.post("/v1/jobs", json=big, headers=auth(token))).status_code == 202

        refused = await stack.client.post("/v1/jobs", json=big, headers=auth(token))

        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "gpu_seconds_per_day_exceeded"
        assert (await usage(stack, token))["used"]["gpu_seconds"] == pytest.approx(1.573)


async def test_a_job_bigger_than_the_whole_gpu_seconds_limit_is_422(embedded: Stack) -> None:
    token = await embedded.system()
    await set_quota(embedded, token, gpu_seconds_per_day=1.0)

    refused = await embedded.client.post(
        "/v1/jobs", json=job_body(width=1024, height=1024, steps=30), headers=auth(token)
    )

    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "exceeds_daily_limit"
    assert (await usage(embedded, token))["used"] == {"images": 0, "gpu_seconds": 0.0, "concurrent_jobs": 0}


async def test_cancelled_jobs_are_refunded(tmp_path: Any) -> None:
    from tests.conftest import start_stack

    async for stack in start_stack("embedded", tmp_path, None, preview_step_ms=2000.0):
        token = await stack.system()
        await set_quota(stack, token, images_per_day=1)
        job = await stack.submit(token, steps=50)
        assert (await stack.client.post("/v1/jobs", json=job_body(), headers=auth(token))).status_code == 429

        assert (await stack.client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth(token))).status_code == 200

        assert (await usage(stack, token))["used"] == {"images": 0, "gpu_seconds": 0.0, "concurrent_jobs": 0}
        assert (await stack.client.post("/v1/jobs", json=job_body(), headers=auth(token))).status_code == 202


async def test_failed_jobs_are_refunded(embedded: Stack) -> None:
    token = await embedded.system()
    await set_quota(embedded, token, images_per_day=2)
    await embedded.client.post(
        "/v1/admin/backends",
        json={"name": "gpu-a", "kind": "a1111", "url": "http://127.0.0.1:9", "models": ["sdxl"]},
        headers=auth(await embedded.admin()),
        params={"probe": "false"},
    )
    await asyncio.sleep(0.5)  # the pool re-reads its table: the preview now serves only while nothing else exists
    job = await embedded.submit(token, model="flux-unserved", n=2)

    failed = await embedded.wait(token, job["id"])

    assert failed["status"] == "failed"
    assert (await usage(embedded, token))["used"]["images"] == 0


async def test_settling_or_refunding_a_job_twice_changes_nothing(embedded: Stack) -> None:
    token = await embedded.system()
    job = await embedded.submit(token)
    await embedded.wait(token, job["id"])
    before = await usage(embedded, token)

    async with transaction(embedded.res.sessionmaker) as session:
        assert not await quotas.settle(session, job["id"], images=5, gpu_seconds=99.0)
        assert not await quotas.refund(session, job["id"])

    assert await usage(embedded, token) == before
    assert before["used"]["images"] == 1


async def test_concurrent_jobs_limit_refuses_until_a_job_finishes(tmp_path: Any) -> None:
    from tests.conftest import start_stack

    async for stack in start_stack("embedded", tmp_path, None, preview_step_ms=2000.0):
        token = await stack.system()
        await set_quota(stack, token, concurrent_jobs=2)
        first = await stack.submit(token, steps=50)
        await stack.submit(token, steps=50)

        refused = await stack.client.post("/v1/jobs", json=job_body(), headers=auth(token))
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "concurrent_jobs_exceeded"
        assert int(refused.headers["Retry-After"]) >= 1

        await stack.client.post(f"/v1/jobs/{first['id']}/cancel", headers=auth(token))
        assert (await stack.client.post("/v1/jobs", json=job_body(), headers=auth(token))).status_code == 202


async def test_requests_per_minute_refuses_with_retry_after(stack: Stack) -> None:
    token = await stack.system()
    await set_quota(stack, token, requests_per_minute=10)

    responses = await asyncio.gather(*[stack.client.get("/v1/usage", headers=auth(token)) for _ in range(30)])

    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == 10
    assert statuses.count(429) == 20
    refusal = next(r for r in responses if r.status_code == 429)
    assert refusal.json()["error"]["code"] == "requests_per_minute_exceeded"
    assert 1 <= int(refusal.headers["Retry-After"]) <= 60


async def test_usage_shows_the_callers_own_limits_and_use(embedded: Stack) -> None:
    token = await embedded.system("crm")
    await set_quota(embedded, token, images_per_day=100, concurrent_jobs=4)
    job = await embedded.submit(token, n=2)
    await embedded.wait(token, job["id"])

    body = await usage(embedded, token)

    assert body["system"] == "crm"
    assert body["limits"] == {
        "images_per_day": 100,
        "gpu_seconds_per_day": None,
        "concurrent_jobs": 4,
        "requests_per_minute": None,
    }
    assert body["used"]["images"] == 2
    assert body["used"]["concurrent_jobs"] == 0
    assert body["resets_at"].endswith("T00:00:00Z")


@pytest.mark.parametrize(
    "limits",
    [{"images_per_day": -1}, {"images_per_day": "10"}, {"requests_per_minute": 0}, {"system_id": "sys_x"}],
)
async def test_invalid_limits_are_refused_and_change_nothing(embedded: Stack, limits: dict[str, Any]) -> None:
    token = await embedded.system("crm")
    admin = await embedded.admin()

    response = await embedded.client.patch("/v1/admin/systems/crm/quota", json=limits, headers=auth(admin))

    assert response.status_code == 422
    assert (await usage(embedded, token))["limits"]["images_per_day"] is None


async def test_a_null_limit_removes_it(embedded: Stack) -> None:
    token = await embedded.system("crm")
    await set_quota(embedded, token, images_per_day=0)
    assert (await embedded.client.post("/v1/jobs", json=job_body(), headers=auth(token))).status_code == 429

    await set_quota(embedded, token, images_per_day=None)

    assert (await embedded.client.post("/v1/jobs", json=job_body(), headers=auth(token))).status_code == 202
