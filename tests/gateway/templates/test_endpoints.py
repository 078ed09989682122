"""The templates API and jobs rendered from templates: library and private templates, versions, previews."""

from __future__ import annotations

from typing import Any

from gateway.templates.service import load_shipped
from tests.conftest import Stack, auth

LAMP = {"id": "P-1", "name": "智能台灯", "category": "electronics", "features": ["护眼", "无线充电", "APP 控制", "x"]}

CUSTOM = """---
name: design.banner
description: A banner
record: campaign
schema: {type: object, required: [title], properties: {title: {type: string, maxLength: 100}}}
width: 512
height: 256
tags: [banner]
---
A bold banner for {{ campaign.title }}.
"""


def private(source: str) -> str:
    return source.replace("tags: [banner]", "tags: [banner]\nprivate: true")


async def put(stack: Stack, token: str, name: str, source: str):  # type: ignore[no-untyped-def]
    return await stack.client.put(f"/v1/templates/{name}", json={"source": source}, headers=auth(token))


async def test_the_shipped_library_is_listed_for_a_generating_system(embedded: Stack) -> None:
    oa = await embedded.system("oa", scopes="generate")

    listed = (await embedded.client.get("/v1/templates", headers=auth(oa))).json()["items"]

    names = {t["name"] for t in listed}
    assert {"crm.product_main", "crm.product_scene", "crm.product_detail"} <= names
    main = next(t for t in listed if t["name"] == "crm.product_main")
    assert (main["record"], main["private"], main["version"]) == ("product", False, 1)


async def test_loading_the_shipped_library_again_adds_nothing(embedded: Stack) -> None:
    assert await load_shipped(embedded.res.sessionmaker) == 0


async def test_saving_creates_versions_and_old_versions_stay_readable(embedded: Stack) -> None:
    design = await embedded.system("design", scopes="generate,batch,templates:write")

    first = await put(embedded, design, "design.banner", CUSTOM)
    again = await put(embedded, design, "design.banner", CUSTOM)
    second = await put(embedded, design, "design.banner", CUSTOM.replace("A bold", "A calm"))

    assert (first.status_code, again.status_code, second.status_code) == (201, 200, 201)
    assert second.json()["version"] == 2
    assert [v["version"] for v in second.json()["versions"]] == [2, 1]
    old = await embedded.client.get("/v1/templates/design.banner", params={"version": 1}, headers=auth(design))
    assert "A bold" in old.json()["source"]


async def test_only_template_writers_save(embedded: Stack) -> None:
    crm = await embedded.system("crm", scopes="generate,batch,templates:read")

    response = await put(embedded, crm, "design.banner", CUSTOM)

    assert response.status_code == 403


async def test_invalid_templates_are_refused_naming_the_part(embedded: Stack) -> None:
    design = await embedded.system("design", scopes="templates:write")

    wrong_name = await put(embedded, design, "design.other", CUSTOM)
    escape = await put(embedded, design, "design.banner", CUSTOM.replace("{{ campaign.title }}", "{{ ''.__class__ }}"))
    syntax = await put(embedded, design, "design.banner", CUSTOM.replace("{{ campaign.title }}", "{{ campaign"))

    assert wrong_name.status_code == 422
    assert escape.status_code == 422 and escape.json()["error"]["details"][0]["field"] == "prompt"
    assert syntax.json()["error"]["code"] == "template_invalid"
    listed = await embedded.client.get("/v1/templates", headers=auth(design))
    assert "design.banner" not in {t["name"] for t in listed.json()["items"]}


async def test_a_private_template_is_invisible_to_other_systems(embedded: Stack) -> None:
    design = await embedded.system("design", scopes="generate,templates:write")
    crm = await embedded.system("crm", scopes="generate,templates:read")
    await put(embedded, design, "design.banner", private(CUSTOM))

    mine = await embedded.client.get("/v1/templates/design.banner", headers=auth(design))
    theirs = await embedded.client.get("/v1/templates/design.banner", headers=auth(crm))
    missing = await embedded.client.get("/v1/templates/design.nothing", headers=auth(crm))
    job = await embedded.client.post(
        "/v1/jobs", json={"template": "design.banner", "record": {"title": "x"}}, headers=auth(crm)
    )

    assert mine.status_code == 200 and mine.json()["private"] is True
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["code"] == missing.json()["error"]["code"] == "template_not_found"
    assert job.status_code == 404


async def test_render_previews_the_prompt_and_parameters(embedded: Stack) -> None:
    crm = await embedded.system("crm", scopes="generate,batch")

    response = await embedded.client.post(
        "/v1/templates/crm.product_scene/render", json={"record": LAMP}, headers=auth(crm)
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["prompt"].startswith("智能台灯 in a modern home office")
    assert (body["parameters"]["width"], body["parameters"]["height"]) == (1600, 900)
    assert body["tags"] == ["product", "scene"]
    assert (await embedded.client.get("/v1/jobs", headers=auth(crm))).json()["items"] == []


async def test_records_failing_the_schema_and_filtered_renderings_are_422(embedded: Stack) -> None:
    crm = await embedded.system("crm")
    path = "/v1/templates/crm.product_main/render"

    no_name = await embedded.client.post(path, json={"record": {"category": "home"}}, headers=auth(crm))
    filtered = await embedded.client.post(
        path, json={"record": {"name": "血腥暴力玩偶", "category": "home"}}, headers=auth(crm)
    )

    assert no_name.status_code == 422 and no_name.json()["error"]["details"][0]["field"] == "record.name"
    assert filtered.status_code == 422 and filtered.json()["error"]["code"] == "content_filtered"


async def test_a_job_from_a_template_records_the_exact_version_and_takes_its_parameters(embedded: Stack) -> None:
    design = await embedded.system("design", scopes="generate,templates:write")
    await put(embedded, design, "design.banner", CUSTOM)

    job = await embedded.client.post(
        "/v1/jobs", json={"template": "design.banner", "record": {"title": "双十一"}, "steps": 2}, headers=auth(design)
    )
    await put(embedded, design, "design.banner", CUSTOM.replace("A bold", "A calm"))

    assert job.status_code == 202, job.text
    body: dict[str, Any] = job.json()
    assert body["prompt"] == "A bold banner for 双十一."
    assert (body["width"], body["height"], body["steps"]) == (512, 256, 2)  # steps given: it wins
    assert body["template"]["name"] == "design.banner" and body["template"]["version"] == 1
    done = await embedded.wait(design, body["id"])
    assert done["status"] == "succeeded" and done["template"]["version"] == 1
    assert (done["assets"][0]["width"], done["assets"][0]["height"]) == (512, 256)


async def test_jobs_need_a_prompt_or_a_template_with_its_record(embedded: Stack) -> None:
    crm = await embedded.system("crm")
    bodies = [
        {},
        {"prompt": "a cat", "template": "crm.product_main", "record": LAMP},
        {"template": "crm.product_main"},
        {"prompt": "a cat", "record": LAMP},
    ]

    for body in bodies:
        response = await embedded.client.post("/v1/jobs", json=body, headers=auth(crm))
        assert response.status_code == 422, body


async def test_rendered_prompts_are_held_to_the_prompt_rules(embedded: Stack) -> None:
    design = await embedded.system("design", scopes="generate,templates:write")
    long = CUSTOM.replace("A bold banner for {{ campaign.title }}.", "{% for i in range(900) %}word {% endfor %}")
    await put(embedded, design, "design.long", long.replace("name: design.banner", "name: design.long"))

    too_long = await embedded.client.post(
        "/v1/jobs", json={"template": "design.long", "record": {"title": "x"}}, headers=auth(design)
    )
    control = await embedded.client.post(
        "/v1/jobs", json={"template": "crm.product_main", "record": {**LAMP, "name": "a\u0001b"}}, headers=auth(design)
    )
    huge = await embedded.client.post(
        "/v1/jobs",
        json={"template": "crm.product_main", "record": {**LAMP, "features": [0] * 30000}},
        headers=auth(design),
    )

    assert too_long.status_code == 422 and too_long.json()["error"]["code"] == "template_invalid"
    assert control.status_code == 422
    assert huge.status_code == 422


async def test_the_preview_refuses_what_a_job_would_refuse(embedded: Stack) -> None:
    design = await embedded.system("design", scopes="generate,templates:write")
    long = CUSTOM.replace("A bold banner for {{ campaign.title }}.", "{% for i in range(900) %}word {% endfor %}")
    await put(embedded, design, "design.long", long.replace("name: design.banner", "name: design.long"))
    bell = CUSTOM.replace("tags: [banner]", 'tags: [banner]\ndata: {bell: "\\u0007"}').replace(
        "{{ campaign.title }}", "{{ campaign.title }}{{ bell }}"
    )
    assert (await put(embedded, design, "design.bell", bell.replace("design.banner", "design.bell"))).status_code == 201

    for name in ("design.long", "design.bell"):
        preview = await embedded.client.post(
            f"/v1/templates/{name}/render", json={"record": {"title": "x"}}, headers=auth(design)
        )
        job = await embedded.client.post(
            "/v1/jobs", json={"template": name, "record": {"title": "x"}}, headers=auth(design)
        )

        assert preview.status_code == job.status_code == 422, (name, preview.text, job.text)
        assert preview.json()["error"]["code"] == job.json()["error"]["code"] == "template_invalid"
        assert preview.json()["error"]["details"][0]["field"] == "prompt"
    assert (await embedded.client.get("/v1/jobs", headers=auth(design))).json()["items"] == []


async def test_a_record_nested_too_deeply_is_refused_as_the_record(embedded: Stack) -> None:
    design = await embedded.system("design", scopes="generate,batch,templates:write")
    deep: dict[str, object] = {"title": "x"}
    for _ in range(20):  # {"title"} 21 levels down
        deep = {"a": deep}
    fine: dict[str, object] = {"title": "x"}
    for _ in range(19):  # 20 levels down: the most there may be
        fine = {"a": fine}

    refused = [
        await embedded.client.post(path, json=body, headers=auth(design))
        for path, body in (
            ("/v1/templates/crm.product_main/render", {"record": {**LAMP, "extra": deep}}),
            ("/v1/jobs", {"template": "crm.product_main", "record": {**LAMP, "extra": deep}}),
            ("/v1/recipes/crm.product_images", {"record": {**LAMP, "extra": deep}}),
        )
    ]
    accepted = await embedded.client.post(
        "/v1/templates/crm.product_main/render", json={"record": {**LAMP, "extra": fine}}, headers=auth(design)
    )

    for response in refused:
        assert response.status_code == 422, response.text
        assert response.json()["error"]["details"][0]["field"] == "record", response.text
        assert "20 levels" in response.json()["error"]["message"]
    assert accepted.status_code == 200, accepted.text


async def test_saving_an_older_text_again_makes_it_the_newest(embedded: Stack) -> None:
    design = await embedded.system("design", scopes="templates:write")
    await put(embedded, design, "design.banner", CUSTOM)
    await put(embedded, design, "design.banner", CUSTOM.replace("A bold", "A calm"))

    reverted = await put(embedded, design, "design.banner", CUSTOM)

    assert reverted.status_code == 201
    assert reverted.json()["version"] == 3 and "A bold" in reverted.json()["source"]
