"""Content screening on job submission: refusals name the category only; masking continues; per-system rules."""

from __future__ import annotations

from typing import Any

import pytest

from policies.semantic import SemanticCheck
from tests.conftest import Stack, auth


async def submit(stack: Stack, token: str, **body: Any):  # type: ignore[no-untyped-def]
    body = {"width": 256, "height": 256, "steps": 2, **body}
    return await stack.client.post("/v1/jobs", json=body, headers=auth(token))


async def set_policy(stack: Stack, name: str, **policy: Any):  # type: ignore[no-untyped-def]
    admin = await stack.admin()
    return await stack.client.put(f"/v1/admin/systems/{name}/content-policy", json=policy, headers=auth(admin))


@pytest.mark.parametrize(
    ("prompt", "category"),
    [
        ("a naked woman on a beach", "sexual"),
        ("ＮＡＫＥＤ model", "sexual"),
        ("n a k e d model", "sexual"),
        ("na\u200bked model", "sexual"),
        ("街头暴力场景", "violence"),
        ("街头暴 力场景", "violence"),
    ],
)
async def test_a_filtered_prompt_is_a_422_naming_only_the_category(embedded: Stack, prompt: str, category: str) -> None:
    token = await embedded.system()

    response = await submit(embedded, token, prompt=prompt)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "content_filtered"
    assert error["details"] == {"category": category, "field": "prompt"}
    assert "naked" not in response.text.lower() and "暴力" not in response.text
    assert (await embedded.client.get("/v1/jobs", headers=auth(token))).json()["items"] == []


async def test_the_negative_prompt_is_screened_too(embedded: Stack) -> None:
    token = await embedded.system()

    response = await submit(embedded, token, prompt="a castle", negative_prompt="街头暴力")

    assert response.status_code == 422
    assert response.json()["error"]["details"] == {"category": "violence", "field": "negative_prompt"}


async def test_brand_terms_are_masked_and_the_job_runs(embedded: Stack) -> None:
    token = await embedded.system()

    response = await submit(embedded, token, prompt="a can of Coca-Cola on a desk, product photo")

    assert response.status_code == 202, response.text
    job = response.json()
    assert job["prompt"] == "a can of *** on a desk, product photo"
    assert job["notes"] == ["Terms of the content category 'brand' were masked."]
    done = await embedded.wait(token, job["id"])
    assert done["status"] == "succeeded"
    assert done["notes"][0] == "Terms of the content category 'brand' were masked."


async def test_per_system_extra_terms_allow_list_and_actions(embedded: Stack) -> None:
    crm, oa = await embedded.system("crm"), await embedded.system("oa")
    saved = await set_policy(
        embedded,
        "crm",
        extra={"codenames": ["project falcon"]},
        allow=["coca-cola"],
        actions={"codenames": "mask"},
    )
    assert saved.status_code == 200, saved.text

    masked = await submit(embedded, crm, prompt="poster for Project  Falcon")
    own_brand = await submit(embedded, crm, prompt="a can of Coca-Cola")
    other_system = await submit(embedded, oa, prompt="a can of Coca-Cola")

    assert masked.json()["prompt"] == "poster for ***"
    assert own_brand.json()["prompt"] == "a can of Coca-Cola"
    assert other_system.json()["prompt"] == "a can of ***"


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"actions": {"minors": "mask"}}, "actions.minors"),
        ({"actions": {"violence": "ignore"}}, "actions.violence"),
        ({"extra": {"Bad Name": ["x"]}}, "extra.Bad Name.[key]"),
        ({"extra": {"brand": ["x" * 101]}}, "extra.brand.0"),
        ({"extra": {"brand": "acme"}}, "extra.brand"),
        ({"allow": ["ok"], "system_id": "sys_x"}, "system_id"),
    ],
)
async def test_invalid_policies_are_refused_whole(embedded: Stack, policy: dict[str, Any], field: str) -> None:
    await embedded.system("crm")
    admin = await embedded.admin()

    response = await set_policy(embedded, "crm", **policy)

    assert response.status_code == 422, response.text
    assert field in {d["field"] for d in response.json()["error"]["details"]}
    current = await embedded.client.get("/v1/admin/systems/crm/content-policy", headers=auth(admin))
    assert current.json() == {"system": "crm", "extra": {}, "allow": [], "actions": {}}


class _KeywordEmbedder:
    """Two dimensions: 'harm' words and everything else (enough to test the wiring, not the model)."""

    def encode(self, sentences: list[str]) -> list[list[float]]:
        rows = []
        for sentence in sentences:
            harm = sum(word in sentence.lower() for word in ("bleeding", "stabbed", "wounded"))
            rows.append([float(harm), 1.0 if harm == 0 else 0.0])
        return rows


async def test_the_semantic_stage_refuses_paraphrases_when_enabled(embedded: Stack) -> None:
    token = await embedded.system()
    embedded.res.semantic = SemanticCheck(
        _KeywordEmbedder(), exemplars={"violence": ["a man stabbed and bleeding"]}, threshold=0.9
    )

    refused = await submit(embedded, token, prompt="a wounded soldier bleeding out")
    admitted = await submit(embedded, token, prompt="a bright office with plants")

    assert refused.status_code == 422
    assert refused.json()["error"]["details"] == {"category": "violence", "field": "prompt"}
    assert admitted.status_code == 202
