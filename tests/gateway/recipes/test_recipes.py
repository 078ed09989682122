"""Recipes end to end on the preview backend: one record in, a batch of jobs out, with the right roles,
sizes, counts and tags; batches read back with their aggregate status."""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

from PIL import Image, ImageChops

from tests.conftest import Stack, auth

PRODUCT = {
    "id": "P-1001",
    "name": "轻羽防水冲锋衣",
    "category": "outdoor",
    "features": ["三层防水面料", "腋下透气拉链", "可收纳兜帽", "反光条"],
    "selling_point": "防水透气,轻至 380 克",
    "tagline": "风雨无阻",
}
REPORT = {
    "id": "R-2026Q3",
    "title": "2026年第三季度经营报告",
    "sections": [
        {"type": "executive_summary", "title": "摘要", "content": "本季度公司营收稳步增长,新市场拓展顺利,利润率提升。"},
        {"type": "sales_analysis", "title": "销售分析", "content": "华东区域销售额同比增长35%,线上渠道订单量翻倍。"},
        {"type": "appendix", "title": "附录", "content": "数据口径说明。"},
        {
            "type": "market_trends",
            "title": "Market trends",
            "content": "Electric vehicle demand keeps rising in Europe.",
        },
        {"type": "team_performance", "title": "团队表现", "content": "研发团队按期交付三个版本,客户满意度提高。"},
    ],
}
BRIEF = {
    "asset_type": "icons",
    "theme": "business",
    "count": 4,
    "variant": "analytics",
    "style_guide": {
        "name": "ACME 2026",
        "rules": {"color_palette": ["#0A84FF", "#FFFFFF", "#1C1C1E"], "style_description": "flat, rounded corners"},
    },
}


async def run(stack: Stack, token: str, recipe: str, record: dict[str, Any], **options: Any) -> Any:
    return await stack.client.post(
        f"/v1/recipes/{recipe}", json={"record": record, "options": options}, headers=auth(token)
    )


async def wait_batch(stack: Stack, token: str, batch_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = await stack.client.get(f"/v1/batches/{batch_id}", headers=auth(token))
        assert response.status_code == 200, response.text
        batch = response.json()
        if batch["done"]:
            return batch
        assert time.monotonic() < deadline, f"batch not done in {timeout}s: {batch['counts']}"
        await asyncio.sleep(0.1)


async def image_of(stack: Stack, token: str, asset: dict[str, Any]) -> Image.Image:
    response = await stack.client.get(asset["url"], headers=auth(token))
    assert response.status_code == 200
    return Image.open(io.BytesIO(response.content))


def steps(*roles: str, n: int = 2) -> dict[str, Any]:
    return {role: {"steps": n} for role in roles}


async def test_product_images_make_a_main_a_scene_and_up_to_three_detail_images(stack: Stack) -> None:
    crm = await stack.system("crm", "generate,batch")

    response = await run(stack, crm, "crm.product_images", PRODUCT, roles=steps("main", "scene", "detail"))

    assert response.status_code == 202, response.text
    accepted = response.json()
    assert response.headers["location"].endswith(f"/v1/batches/{accepted['id']}")
    assert (accepted["total"], accepted["record_id"], accepted["done"]) == (5, "P-1001", False)
    assert [(j["name"], j["role"], j["index"]) for j in accepted["jobs"]] == [
        ("main", "main", 0),
        ("scene", "scene", 0),
        ("detail-1", "detail", 0),
        ("detail-2", "detail", 1),
        ("detail-3", "detail", 2),
    ]
    done = await wait_batch(stack, crm, accepted["id"])
    assert (done["status"], done["counts"]["succeeded"], done["finished_at"] is not None) == ("succeeded", 5, True)
    sizes = {j["name"]: (j["job"]["assets"][0]["width"], j["job"]["assets"][0]["height"]) for j in done["jobs"]}
    assert sizes == {
        "main": (1200, 1200),
        "scene": (1600, 900),
        "detail-1": (800, 800),
        "detail-2": (800, 800),
        "detail-3": (800, 800),
    }
    scene = next(j["job"] for j in done["jobs"] if j["role"] == "scene")
    assert "a natural outdoor environment" in scene["prompt"]
    assert any("fitted to exactly 1600x900" in note for note in scene["notes"])
    real = await image_of(stack, crm, scene["assets"][0])
    assert real.size == (1600, 900)
    details = [j["job"]["prompt"] for j in done["jobs"] if j["role"] == "detail"]
    assert ["三层防水面料" in details[0], "腋下透气拉链" in details[1], "可收纳兜帽" in details[2]] == [True] * 3
    assert all("反光条" not in p for p in details)
    assert scene["batch"] == {"id": accepted["id"], "role": "scene", "name": "scene", "position": 1}
    assert set(scene["assets"][0]["tags"]) >= {"product", "scene"}


async def test_the_scene_comes_from_the_category_and_unknown_categories_get_a_studio(embedded: Stack) -> None:
    crm = await embedded.system("crm", "generate,batch")
    expected = {
        "electronics": "a modern home office",
        "clothing": "a fashion studio",
        "home": "a cozy living room",
        "Outdoor": "a natural outdoor environment",
        " home ": "a cozy living room",
        "户外": "a natural outdoor environment",
        "服装": "a fashion studio",
        "电子产品": "a modern home office",
        "家居": "a cozy living room",
        "toys": "a professional studio",
    }
    for category, scene in expected.items():
        record = {"id": category, "name": "Widget", "category": category}
        response = await run(embedded, crm, "crm.product_images", record, roles=steps("main", "scene"))
        assert response.status_code == 202, response.text
        jobs = {j["role"]: j["job"] for j in response.json()["jobs"]}
        assert set(jobs) == {"main", "scene"}  # no features: no detail images
        assert scene in jobs["scene"]["prompt"], (category, jobs["scene"]["prompt"])


async def test_daily_poster_styles_with_the_logo_watermark(embedded: Stack) -> None:
    crm = await embedded.system("crm", "generate,batch")
    logo = io.BytesIO()
    Image.new("RGBA", (200, 80), (220, 20, 20, 255)).save(logo, format="PNG")
    put = await embedded.client.put(
        "/v1/logo", content=logo.getvalue(), headers={**auth(crm), "Content-Type": "image/png"}
    )
    assert put.status_code == 204, put.text
    fixed: dict[str, Any] = {role: {"steps": 2, "seed": 7} for role in ("main", "detail", "social")}
    fixed["main"]["output_format"] = "png"  # lossless, to compare pixels with an unmarked image

    marked = await run(
        embedded,
        crm,
        "crm.product_images",
        PRODUCT,
        styles=["main", "detail", "social"],
        watermark={"logo": True, "position": "bottom-right", "opacity": 1},
        roles=fixed,
        output_format="jpeg",
    )
    plain = await run(embedded, crm, "crm.product_images", PRODUCT, styles=["main"], roles={"main": fixed["main"]})

    assert marked.status_code == 202, marked.text
    assert [j["role"] for j in marked.json()["jobs"]] == ["main", "detail", "social"]
    done = await wait_batch(embedded, crm, marked.json()["id"])
    base = await wait_batch(embedded, crm, plain.json()["id"])
    main = next(j["job"] for j in done["jobs"] if j["role"] == "main")
    assert main["prompt"].startswith("电商主图,轻羽防水冲锋衣,防水透气")
    assert "风雨无阻" in next(j["job"] for j in done["jobs"] if j["role"] == "social")["prompt"]
    assert [j["job"]["assets"][0]["format"] for j in done["jobs"]] == ["png", "jpeg", "jpeg"]
    with_mark = (await image_of(embedded, crm, main["assets"][0])).convert("RGB")
    without = (await image_of(embedded, crm, base["jobs"][0]["job"]["assets"][0])).convert("RGB")
    assert (main["seed"], main["prompt"]) == (base["jobs"][0]["job"]["seed"], base["jobs"][0]["job"]["prompt"])
    assert with_mark.size == without.size == (1024, 1024)
    box = ImageChops.difference(with_mark, without).point(lambda v: 255 if v > 40 else 0).getbbox()
    assert box is not None and box[0] > 512 and box[1] > 512, box  # the logo, in the bottom-right quarter
    r, g, b = with_mark.getpixel(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2))
    assert r > 150 and g < 90 and b < 90  # opaque red logo


async def test_report_illustrations_one_per_section_with_a_template_and_keywords(embedded: Stack) -> None:
    oa = await embedded.system("oa", "generate,batch")

    response = await run(
        embedded,
        oa,
        "oa.report_illustrations",
        REPORT,
        roles=steps("executive_summary", "sales_analysis", "market_trends", "team_performance"),
    )

    assert response.status_code == 202, response.text
    jobs = {j["role"]: j["job"] for j in response.json()["jobs"]}
    assert list(jobs) == ["executive_summary", "sales_analysis", "market_trends", "team_performance"]  # no appendix
    assert "销售额" in jobs["sales_analysis"]["prompt"]
    assert "的" not in jobs["sales_analysis"]["prompt"].split(", ")
    assert "electric" in jobs["market_trends"]["prompt"].lower()
    assert jobs["sales_analysis"]["template"]["name"] == "oa.sales_analysis"
    done = await wait_batch(embedded, oa, response.json()["id"])
    assert done["status"] == "succeeded"
    assert all({"report"} <= set(j["job"]["assets"][0]["tags"]) for j in done["jobs"])


async def test_a_section_type_added_later_is_a_template_change(embedded: Stack) -> None:
    oa = await embedded.system("oa", "generate,batch,templates:write")
    record = {**REPORT, "sections": [{"type": "risk_review", "title": "风险", "content": "汇率波动风险上升。"}]}

    before = await run(embedded, oa, "oa.report_illustrations", record)
    source = (
        "---\nname: oa.risk_review\nrecord: report\nwidth: 512\nheight: 288\ntags: [report, risk]\n---\n"
        "Risk management concept art, {{ report.section.title }}, "
        "{{ report.section.content | keywords(3) | join(', ') }}"
    )
    saved = await embedded.client.put("/v1/templates/oa.risk_review", json={"source": source}, headers=auth(oa))
    after = await run(embedded, oa, "oa.report_illustrations", record)

    assert (before.status_code, before.json()["error"]["code"]) == (422, "nothing_to_make")
    assert saved.status_code == 201, saved.text
    assert after.status_code == 202, after.text
    job = after.json()["jobs"][0]
    assert (job["role"], job["job"]["width"], job["job"]["height"]) == ("risk_review", 512, 288)
    assert "汇率" in job["job"]["prompt"]


async def test_design_assets_have_distinct_seeds_the_style_guide_and_tags(stack: Stack) -> None:
    design = await stack.system("design", "generate,batch,templates:write")

    response = await run(stack, design, "design.asset_batch", BRIEF, roles=steps("icons"))

    assert response.status_code == 202, response.text
    jobs = [j["job"] for j in response.json()["jobs"]]
    assert [j["name"] for j in response.json()["jobs"]] == ["icons-1", "icons-2", "icons-3", "icons-4"]
    assert len({j["seed"] for j in jobs}) == 4
    assert all("#0A84FF" in j["prompt"] and "flat, rounded corners" in j["prompt"] for j in jobs)
    assert all((j["width"], j["height"]) == (512, 512) for j in jobs)
    done = await wait_batch(stack, design, response.json()["id"])
    for item in done["jobs"]:
        tags = set(item["job"]["assets"][0]["tags"])
        assert {"icons", "business", "ACME 2026", "analytics", "design", "icon"} <= tags, tags


async def test_a_given_seed_makes_a_repeat_roles_seeds_consecutive(embedded: Stack) -> None:
    design = await embedded.system("design", "generate,batch")

    response = await run(embedded, design, "design.asset_batch", {**BRIEF, "count": 3}, roles={"icons": {"seed": 100}})

    assert [j["job"]["seed"] for j in response.json()["jobs"]] == [100, 101, 102]


async def test_jobs_of_several_images_never_share_a_seed(embedded: Stack) -> None:
    # Image i of a job uses seed + i: job k of a role starts at base + k x n, so no two images are one picture.
    design = await embedded.system("design", "generate,batch")
    crm = await embedded.system("crm", "generate,batch")

    icons = await run(
        embedded, design, "design.asset_batch", {**BRIEF, "count": 3}, roles={"icons": {"seed": 100, "n": 2}}
    )
    details = await run(embedded, crm, "crm.product_images", PRODUCT, roles={"detail": {"seed": 7, "n": 3}})

    assert [j["job"]["seed"] for j in icons.json()["jobs"]] == [100, 102, 104]
    seeds = {j["name"]: j["job"]["seed"] for j in details.json()["jobs"]}
    assert (seeds["detail-1"], seeds["detail-2"], seeds["detail-3"]) == (7, 10, 13)


async def test_a_given_seed_makes_an_each_roles_seeds_consecutive(embedded: Stack) -> None:
    crm = await embedded.system("crm", "generate,batch")

    response = await run(
        embedded, crm, "crm.product_images", PRODUCT, roles={"detail": {"seed": 5}, "main": {"seed": 9}}
    )

    seeds = {j["name"]: j["job"]["seed"] for j in response.json()["jobs"]}
    assert (seeds["main"], seeds["detail-1"], seeds["detail-2"], seeds["detail-3"]) == (9, 5, 6, 7)


async def test_a_count_written_as_a_whole_float_is_that_many_jobs(embedded: Stack) -> None:
    design = await embedded.system("design", "generate,batch")

    response = await run(embedded, design, "design.asset_batch", {**BRIEF, "count": 3.0}, roles=steps("icons"))

    assert response.status_code == 202, response.text
    assert [j["name"] for j in response.json()["jobs"]] == ["icons-1", "icons-2", "icons-3"]


async def test_options_for_a_role_this_record_does_not_make_are_passed_over(embedded: Stack) -> None:
    # One set of options goes with every record of a file: a product without features has no detail role,
    # a report without a team section no team_performance role, a brief for icons no backgrounds role.
    crm = await embedded.system("crm", "generate,batch")
    plain = {**PRODUCT, "features": []}
    report = {**REPORT, "sections": REPORT["sections"][:2]}
    cases = [
        ("crm.product_images", plain, {"roles": {"detail": {"steps": 3}, "main": {"steps": 2}}}, ["main", "scene"]),
        ("oa.report_illustrations", report, {"roles": {"team_performance": {"steps": 3}}}, None),
        ("design.asset_batch", {**BRIEF, "count": 1}, {"roles": {"backgrounds": {"seed": 1}}}, ["icons"]),
    ]
    for recipe, record, options, names in cases:
        response = await embedded.client.post(
            f"/v1/recipes/{recipe}", json={"record": record, "options": options}, headers=auth(crm)
        )
        assert response.status_code == 202, (recipe, response.text)
        if names is not None:
            assert [j["name"] for j in response.json()["jobs"]] == names
        if recipe == "crm.product_images":
            main = next(j["job"] for j in response.json()["jobs"] if j["role"] == "main")
            assert main["steps"] == 2  # the options of the roles it makes still apply


async def test_options_name_a_role_from_the_record_as_its_template_does(embedded: Stack) -> None:
    crm = await embedded.system("crm", "generate,batch")
    report = {**REPORT, "sections": [{"type": "Sales Analysis", "title": "销售", "content": "华东区域销售额增长。"}]}

    response = await run(embedded, crm, "oa.report_illustrations", report, roles={"sales_analysis": {"steps": 3}})

    assert response.status_code == 202, response.text
    [job] = response.json()["jobs"]
    assert (job["role"], job["name"], job["job"]["steps"]) == ("sales_analysis", "sales_analysis", 3)


async def test_options_for_a_role_no_record_could_make_are_422(embedded: Stack) -> None:
    crm = await embedded.system("crm", "generate,batch")
    cases = [
        ("crm.product_images", PRODUCT, {"roles": {"mian": {"steps": 2}}}, "options.roles.mian"),
        (
            "crm.product_images",
            PRODUCT,
            {"styles": ["main"], "roles": {"social": {"steps": 2}}},
            "options.roles.social",
        ),
        ("crm.product_images", PRODUCT, {"styles": ["main"], "roles": {"scene": {"steps": 2}}}, "options.roles.scene"),
        ("oa.report_illustrations", REPORT, {"roles": {"risk_review": {"steps": 2}}}, "options.roles.risk_review"),
        (
            "oa.report_illustrations",
            REPORT,
            {"roles": {"Risk Review": {"steps": 2}}},
            "options.roles.Risk Review",
        ),
        ("design.asset_batch", BRIEF, {"roles": {"banners": {"steps": 2}}}, "options.roles.banners"),
        ("design.asset_batch", BRIEF, {"roles": {"Icons": {"steps": 2}}}, "options.roles.Icons"),
        (
            "oa.report_illustrations",
            REPORT,
            {"roles": {"Team Performance": {"steps": 2}}},
            "options.roles.Team Performance",
        ),
    ]
    for recipe, record, options, field in cases:
        response = await embedded.client.post(
            f"/v1/recipes/{recipe}", json={"record": record, "options": options}, headers=auth(crm)
        )
        assert response.status_code == 422, (recipe, options, response.text)
        assert response.json()["error"]["details"][0]["field"] == field, response.text
        assert "makes no role" in response.json()["error"]["message"]
        if field.endswith(("Icons", "Team Performance")):
            assert "roles from the record are written" in response.json()["error"]["message"], response.text
    assert (await embedded.client.get("/v1/batches", headers=auth(crm))).json()["items"] == []


async def test_per_role_overrides_apply_to_their_role_only(embedded: Stack) -> None:
    crm = await embedded.system("crm", "generate,batch")
    roles = {"main": {"width": 640, "height": 640, "output_format": "webp", "steps": 2}, "scene": {"steps": 2}}

    response = await run(embedded, crm, "crm.product_images", {**PRODUCT, "features": []}, roles=roles)

    assert response.status_code == 202, response.text
    done = await wait_batch(embedded, crm, response.json()["id"])
    assets = {j["role"]: j["job"]["assets"][0] for j in done["jobs"]}
    assert (assets["main"]["width"], assets["main"]["height"], assets["main"]["format"]) == (640, 640, "webp")
    assert (assets["scene"]["width"], assets["scene"]["height"], assets["scene"]["format"]) == (1600, 900, "png")


async def test_bad_requests_are_refused_whole_and_write_nothing(embedded: Stack) -> None:
    crm = await embedded.system("crm", "generate,batch")
    cases = [
        ("crm.nothing", PRODUCT, {}, 404, "recipe_not_found", None),
        ("crm.product_images", {"category": "home"}, {}, 422, "validation_error", "record.name"),
        ("crm.product_images", {**PRODUCT, "features": "x"}, {}, 422, "validation_error", "record.features"),
        (
            "crm.product_images",
            PRODUCT,
            {"roles": {"hero": {"steps": 2}}},
            422,
            "validation_error",
            "options.roles.hero",
        ),
        ("crm.product_images", PRODUCT, {"styles": ["main", "holiday"]}, 422, "template_missing", "options.styles.1"),
        ("crm.product_images", PRODUCT, {"watermark": {"logo": True}}, 422, "logo_missing", "watermark.logo"),
        ("crm.product_images", PRODUCT, {"roles": {"main": {"steps": 0}}}, 422, "validation_error", None),
        ("design.asset_batch", {**BRIEF, "count": 51}, {}, 422, "validation_error", "record.count"),
        ("design.asset_batch", BRIEF, {"styles": ["main"]}, 422, "validation_error", "options.styles"),
        (
            "oa.report_illustrations",
            {**REPORT, "sections": [{"type": "x", "title": "t", "content": "c"}]},
            {},
            422,
            "nothing_to_make",
            "record",
        ),
    ]
    for recipe, record, options, status, code, field in cases:
        response = await embedded.client.post(
            f"/v1/recipes/{recipe}", json={"record": record, "options": options}, headers=auth(crm)
        )
        assert response.status_code == status, (recipe, options, response.text)
        error = response.json()["error"]
        assert error["code"] == code, (recipe, options, error)
        if field is not None:
            assert error["details"][0]["field"] == field, (recipe, options, error)
    listed = await embedded.client.get("/v1/batches", headers=auth(crm))
    jobs = await embedded.client.get("/v1/jobs", headers=auth(crm))
    assert (listed.json()["items"], jobs.json()["items"]) == ([], [])


async def test_a_refused_prompt_names_the_job_and_nothing_is_queued(embedded: Stack) -> None:
    crm = await embedded.system("crm", "generate,batch")
    record = {**PRODUCT, "tagline": "blood and gore splatter"}  # only the scene image uses the tagline

    response = await run(embedded, crm, "crm.product_images", record)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["details"]["job"], error["details"]["category"]) == (
        "content_filtered",
        "scene",
        "violence",
    )
    assert (await embedded.client.get("/v1/jobs", headers=auth(crm))).json()["items"] == []


async def test_a_batch_over_the_daily_quota_is_refused_whole(embedded: Stack) -> None:
    crm = await embedded.system("crm", "generate,batch")
    admin = await embedded.admin()
    patched = await embedded.client.patch(
        "/v1/admin/systems/crm/quota", json={"images_per_day": 6}, headers=auth(admin)
    )
    assert patched.status_code == 200, patched.text
    await embedded.submit(crm, n=2)
    bigger_than_a_day = {**PRODUCT, "features": ["a", "b", "c"]}

    response = await run(embedded, crm, "crm.product_images", PRODUCT)  # 5 images: 2 + 5 > 6
    roles = {"main": {"n": 4}}
    never = await run(embedded, crm, "crm.product_images", bigger_than_a_day, roles=roles)  # 4 + 1 + 3 > 6

    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "images_per_day_exceeded"
    assert (never.status_code, never.json()["error"]["code"]) == (422, "exceeds_daily_limit")
    assert len((await embedded.client.get("/v1/jobs", headers=auth(crm))).json()["items"]) == 1
    assert (await embedded.client.get("/v1/batches", headers=auth(crm))).json()["items"] == []


async def test_a_retried_submission_returns_the_same_batch(stack: Stack) -> None:
    crm = await stack.system("crm", "generate,batch")
    body = {"record": PRODUCT, "options": {"roles": steps("main", "scene", "detail")}}
    headers = {**auth(crm), "Idempotency-Key": "daily-2026-12-02-P-1001"}

    first = await stack.client.post("/v1/recipes/crm.product_images", json=body, headers=headers)
    again = await stack.client.post("/v1/recipes/crm.product_images", json=body, headers=headers)
    other = await stack.client.post(
        "/v1/recipes/crm.product_images", json={**body, "record": {**PRODUCT, "name": "x"}}, headers=headers
    )

    assert (first.status_code, again.status_code, other.status_code) == (202, 202, 409)
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert [j["job"]["id"] for j in again.json()["jobs"]] == [j["job"]["id"] for j in first.json()["jobs"]]
    assert len((await stack.client.get("/v1/jobs", headers=auth(crm))).json()["items"]) == 5


async def test_batches_are_listed_newest_first_and_only_the_callers(embedded: Stack) -> None:
    crm = await embedded.system("crm", "generate,batch")
    design = await embedded.system("design", "generate,batch")
    ids = []
    for name in ("A", "B", "C"):
        response = await run(embedded, crm, "crm.product_images", {"id": name, "name": name, "category": "home"})
        ids.append(response.json()["id"])
    mine = await run(embedded, design, "design.asset_batch", {**BRIEF, "count": 1})

    page = (await embedded.client.get("/v1/batches", params={"limit": 2}, headers=auth(crm))).json()
    rest = (
        await embedded.client.get("/v1/batches", params={"limit": 2, "cursor": page["next_cursor"]}, headers=auth(crm))
    ).json()
    foreign = await embedded.client.get(f"/v1/batches/{mine.json()['id']}", headers=auth(crm))

    assert [b["id"] for b in page["items"] + rest["items"]] == ids[::-1]
    assert rest["next_cursor"] is None
    assert "jobs" not in page["items"][0] and page["items"][0]["total"] == 2
    assert foreign.status_code == 404


async def test_cancelling_a_batch_cancels_its_unfinished_jobs(embedded: Stack) -> None:
    crm = await embedded.system("crm", "generate,batch")
    embedded.res.settings.preview_step_ms = 200  # slow enough to catch the jobs unfinished
    response = await run(embedded, crm, "crm.product_images", PRODUCT)

    cancelled = await embedded.client.post(f"/v1/batches/{response.json()['id']}/cancel", headers=auth(crm))

    assert cancelled.status_code == 200, cancelled.text
    done = await wait_batch(embedded, crm, response.json()["id"])
    assert done["done"] and done["counts"]["cancelled"] >= 4 and done["status"] in ("cancelled", "partial")


async def test_recipes_are_listed_with_their_roles(embedded: Stack) -> None:
    crm = await embedded.system("crm", "generate,batch")

    listed = (await embedded.client.get("/v1/recipes", headers=auth(crm))).json()["items"]
    one = (await embedded.client.get("/v1/recipes/crm.product_images", headers=auth(crm))).json()

    assert {r["name"] for r in listed} == {"crm.product_images", "oa.report_illustrations", "design.asset_batch"}
    assert [r["role"] for r in one["roles"]] == ["main", "scene", "detail"]
    assert one["schema"]["required"] == ["name", "category"] and one["styles"] == "crm.poster_{style}"


async def test_running_a_recipe_needs_the_batch_scope(embedded: Stack) -> None:
    oa = await embedded.system("oa", "generate")

    response = await run(embedded, oa, "oa.report_illustrations", REPORT)

    assert response.status_code == 403


async def test_sections_left_out_are_listed_as_skipped(embedded: Stack) -> None:
    oa = await embedded.system("oa", "generate,batch")
    record = {**REPORT, "sections": [*REPORT["sections"], {"type": "../x", "title": "t", "content": "c"}]}

    response = await run(embedded, oa, "oa.report_illustrations", record)

    assert response.status_code == 202, response.text
    assert response.json()["skipped"] == [
        {"role": "appendix", "template": "oa.appendix", "reason": "no template 'oa.appendix'"},
        {"role": "../x", "template": None, "reason": "not a template name"},
    ]
    listed = (await embedded.client.get("/v1/batches", headers=auth(oa))).json()["items"]
    assert len(listed[0]["skipped"]) == 2 and "jobs" not in listed[0]


async def test_a_report_near_the_record_limit_is_accepted(embedded: Stack) -> None:
    oa = await embedded.system("oa", "generate,batch")
    content = "华东区域销售额同比增长,线上渠道订单量翻倍。" * 90  # ~2,000 characters, ~6 KB of UTF-8
    sections = [{"type": "sales_analysis", "title": f"销售 {i}", "content": content} for i in range(10)]

    response = await run(embedded, oa, "oa.report_illustrations", {"title": "年报", "sections": sections})

    assert response.status_code == 202, response.text
    assert [j["name"] for j in response.json()["jobs"]] == [f"sales_analysis-{i}" for i in range(1, 11)]


async def test_a_batch_bigger_than_the_concurrency_limit_is_a_422_not_an_endless_429(embedded: Stack) -> None:
    crm = await embedded.system("crm", "generate,batch")
    admin = await embedded.admin()
    await embedded.client.patch("/v1/admin/systems/crm/quota", json={"concurrent_jobs": 3}, headers=auth(admin))
    embedded.res.settings.preview_step_ms = 300

    too_big = await run(embedded, crm, "crm.product_images", PRODUCT)  # 5 jobs
    await embedded.submit(crm, steps=20)
    await embedded.submit(crm, steps=20)
    no_room_now = await run(embedded, crm, "crm.product_images", {"id": "x", "name": "x", "category": "home"})

    assert (too_big.status_code, too_big.json()["error"]["code"]) == (422, "batch_exceeds_concurrent_jobs")
    assert (no_room_now.status_code, no_room_now.json()["error"]["code"]) == (429, "concurrent_jobs_exceeded")
    assert "retry-after" in no_room_now.headers


async def test_batches_can_be_found_by_record_id(embedded: Stack) -> None:
    crm = await embedded.system("crm", "generate,batch")
    for product in ("P-1", "P-2", "P-1"):
        await run(embedded, crm, "crm.product_images", {"id": product, "name": "n", "category": "home"}, tags=[product])

    found = (await embedded.client.get("/v1/batches", params={"record_id": "P-1"}, headers=auth(crm))).json()

    assert [b["record_id"] for b in found["items"]] == ["P-1", "P-1"]


async def test_a_big_logo_upload_still_watermarks_and_is_stored_small(embedded: Stack) -> None:
    crm = await embedded.system("crm", "generate,batch")
    noisy = Image.effect_noise((1500, 1500), 80).convert("RGB")
    jpeg = io.BytesIO()
    noisy.save(jpeg, format="JPEG", quality=85)

    put = await embedded.client.put(
        "/v1/logo", content=jpeg.getvalue(), headers={**auth(crm), "Content-Type": "image/jpeg"}
    )
    stored = Image.open(io.BytesIO((await embedded.client.get("/v1/logo", headers=auth(crm))).content))
    job = await embedded.wait(crm, (await embedded.submit(crm, watermark={"logo": True}))["id"])

    assert put.status_code == 204, put.text
    assert max(stored.size) == 1024
    assert job["status"] == "succeeded", job["error"]


async def test_a_logo_gone_from_the_store_fails_the_job_before_generating(embedded: Stack) -> None:
    crm = await embedded.system("crm", "generate,batch")
    logo = io.BytesIO()
    Image.new("RGBA", (64, 64), (255, 0, 0, 255)).save(logo, format="PNG")
    await embedded.client.put("/v1/logo", content=logo.getvalue(), headers={**auth(crm), "Content-Type": "image/png"})
    for path in embedded.res.store.root.rglob("*.png"):
        path.unlink()  # the store lost the logo
    accepted = await embedded.submit(crm, watermark={"logo": True})

    job = await embedded.wait(crm, accepted["id"])

    assert job["status"] == "failed" and job["error"]["code"] == "logo_missing", job
    assert job["backend"] is None  # no GPU time was spent on it
