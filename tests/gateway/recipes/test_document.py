"""Planning a record's jobs from a recipe: roles, items, repeats, placeholders and bounds."""

from __future__ import annotations

import pytest

from gateway.recipes.document import MAX_JOBS, RecipeError, parse, plan, shipped

OPEN_REPEAT = """
name: t.repeat
record: brief
roles:
  - role: "{kind}"
    template: t.{kind}
    repeat: count
"""


def test_the_shipped_recipes_parse() -> None:
    assert set(shipped()) == {"crm.product_images", "oa.report_illustrations", "design.asset_batch"}


def test_a_huge_repeat_is_refused_before_any_job_is_planned() -> None:
    recipe = parse(OPEN_REPEAT)  # no `maximum` in its schema: the planner's own bound holds

    with pytest.raises(RecipeError) as caught:
        plan(recipe, {"kind": "icon", "count": 10**9}, None)

    assert caught.value.field == "record.count" and str(MAX_JOBS) in caught.value.message


def test_a_long_list_without_a_limit_stops_at_the_bound() -> None:
    recipe = shipped()["oa.report_illustrations"]
    sections = [{"type": "sales_analysis", "title": "t", "content": "c"}] * (MAX_JOBS + 1)

    with pytest.raises(RecipeError):
        plan(recipe, {"title": "r", "sections": sections}, None)


@pytest.mark.parametrize("kind", ["../x", "a.b", "Sales/Analysis", "", "销售", "x" * 51, "ok}{", "a b.c"])
def test_a_placeholder_cannot_make_a_template_name_outside_its_family(kind: str) -> None:
    recipe = shipped()["oa.report_illustrations"]
    planned = plan(recipe, {"title": "r", "sections": [{"type": kind, "title": "t", "content": "c"}]}, None)

    assert planned[0].template in ("oa.!", "oa."), planned[0].template  # never a name of another family


@pytest.mark.parametrize("kind", ["Sales Analysis", "sales-analysis", " SALES_ANALYSIS ", "Sales - Analysis"])
def test_a_section_type_names_its_template_whatever_its_case_and_separators(kind: str) -> None:
    recipe = shipped()["oa.report_illustrations"]
    planned = plan(recipe, {"title": "r", "sections": [{"type": kind, "title": "t", "content": "c"}]}, None)

    assert (planned[0].template, planned[0].role) == ("oa.sales_analysis", "sales_analysis")
    assert planned[0].tags == ["report", kind]  # tags keep the record's own word


@pytest.mark.parametrize("kind", [True, 7, "\u212aey", "Ｓales"])
def test_only_plain_ascii_text_names_a_template(kind: object) -> None:
    recipe = shipped()["oa.report_illustrations"]
    planned = plan(recipe, {"title": "r", "sections": [{"type": kind, "title": "t", "content": "c"}]}, None)

    assert planned[0].template == "oa.!", planned[0].template


def test_roles_from_data_are_single_spaced_and_bounded() -> None:
    recipe = shipped()["oa.report_illustrations"]
    planned = plan(
        recipe, {"title": "r", "sections": [{"type": " a \n b " + "x" * 200, "title": "t", "content": "c"}]}, None
    )

    assert planned[0].role.startswith("a b x") and len(planned[0].role) == 100


def test_each_item_joins_the_record_under_its_key_and_repeats_get_their_number() -> None:
    product = shipped()["crm.product_images"]
    brief = shipped()["design.asset_batch"]

    details = [
        p for p in plan(product, {"name": "n", "category": "c", "features": ["a", "b"]}, None) if p.role == "detail"
    ]
    assets = plan(brief, {"asset_type": "icons", "theme": "t", "count": 2, "style_guide": {"name": "s"}}, None)

    assert [(p.index, p.record["feature"]) for p in details] == [(0, "a"), (1, "b")]
    assert [(p.role, p.template, p.record["number"], p.seed_offset) for p in assets] == [
        ("icons", "design.icons", 1, 0),
        ("icons", "design.icons", 2, 1),
    ]
