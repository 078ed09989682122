"""The shipped OA report-section templates: parse, render Chinese and English sections with their keywords, refuse
records without a section's fields, naming the field."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest

from gateway.templates.document import TemplateDocument, TemplateInvalid, parse
from gateway.templates.keywords import keywords, warm
from gateway.templates.service import ENV, shipped_sources

FILES = sorted(
    (entry for entry in resources.files("templates").joinpath("oa").iterdir() if entry.name.endswith(".j2")),
    key=lambda entry: entry.name,
)
TYPES = [entry.name.removesuffix(".j2") for entry in FILES]

ZH_SECTION = {
    "title": "销售分析",
    "content": "2026年第三季度，公司实现销售额3.2亿元，同比增长18%，其中华东区域销售额增长最快。我们通过优化渠道"
    "结构和加强大客户管理，进一步提升了毛利率。线上渠道的销售额占比达到35%，新客户数量增长了20%。",
}
EN_SECTION = {
    "title": "Sales Analysis",
    "content": "In the third quarter, revenue grew 18% year over year to $320 million. The growth was driven by "
    "enterprise customers in the East region, and online channels now account for 35% of revenue.",
}


@pytest.fixture(scope="module", autouse=True)
def warmed() -> Iterator[None]:
    warm()  # jieba's dictionary, as load_shipped does at start: a render has half a second
    yield


def document(type_: str) -> TemplateDocument:
    return parse(resources.files("templates").joinpath("oa", f"{type_}.j2").read_text(encoding="utf-8"), ENV)


def report(type_: str, section: dict[str, Any], title: str = "2026年第三季度经营报告") -> dict[str, Any]:
    current = {"type": type_, **section}
    return {
        "id": "r-1",
        "title": title,
        "sections": [current, {"type": "appendix", "title": "附录"}],
        "section": current,
    }


def test_the_four_section_types_of_seed_002_are_shipped() -> None:
    assert TYPES == ["executive_summary", "market_trends", "sales_analysis", "team_performance"]
    shipped = {parse(source, ENV).name for source in shipped_sources()}
    assert {f"oa.{t}" for t in TYPES} <= shipped


@pytest.mark.parametrize("type_", TYPES)
def test_each_parses_as_a_report_template_named_by_its_section_type(type_: str) -> None:
    front = document(type_).front

    assert front.name == f"oa.{type_}"
    assert front.record == "report"
    assert front.tags == ["report", type_]
    assert (front.width, front.height) == (1024, 576)
    assert front.width % 8 == 0 and front.height % 8 == 0
    assert "text" in front.negative_prompt and "watermark" in front.negative_prompt


@pytest.mark.parametrize("type_", TYPES)
@pytest.mark.parametrize("section", [ZH_SECTION, EN_SECTION], ids=["zh", "en"])
def test_each_renders_a_section_with_its_title_and_keywords(type_: str, section: dict[str, str]) -> None:
    rendered = document(type_).render(report(type_, section), ENV)

    words = keywords(section["content"], 5)
    assert len(words) == 5
    assert f"featuring {', '.join(words)}." in rendered.prompt
    assert section["title"] in rendered.prompt
    assert "{" not in rendered.prompt and "\n" not in rendered.prompt
    assert rendered.negative_prompt.startswith("text, letters")
    assert rendered.parameters["width"] == 1024 and rendered.tags == ["report", type_]


def test_the_chinese_sales_section_features_its_sales_words() -> None:
    rendered = document("sales_analysis").render(report("sales_analysis", ZH_SECTION), ENV)

    assert rendered.prompt.startswith("3D chart showing sales growth, upward trend arrow")
    assert rendered.prompt.endswith(
        "illustrating the report section 销售分析, featuring 销售额, 渠道, 增长, 客户, 线上."
    )
    assert "我们" not in rendered.prompt and "的" not in rendered.prompt


@pytest.mark.parametrize("type_", TYPES)
def test_a_section_without_words_to_feature_still_renders(type_: str) -> None:
    rendered = document(type_).render(report(type_, {"title": "附录", "content": "2026 / 100% / ……"}), ENV)

    assert "featuring" not in rendered.prompt and rendered.prompt.endswith("附录.")


@pytest.mark.parametrize("type_", TYPES)
@pytest.mark.parametrize(
    ("change", "field", "mentions"),
    [
        (lambda r: r["section"].pop("content"), "record.section.content", "required"),
        (lambda r: r["section"].pop("title"), "record.section.title", "required"),
        (lambda r: r.pop("section"), "record.section", "required"),
        (lambda r: r["section"].update(content="x" * 20_001), "record.section.content", "the value is too long"),
        (lambda r: r["section"].update(title="t" * 201), "record.section.title", "long"),
        (lambda r: r["section"].update(content=["a list"]), "record.section.content", "string"),
        (lambda r: r.update(title="t" * 201), "record.title", "long"),
        (lambda r: r.update(id=1.5), "record.id", "string"),
    ],
    ids=["no-content", "no-title", "no-section", "long-content", "long-title", "list-content", "long-report", "id"],
)
def test_records_the_schema_refuses_name_the_field(type_: str, change: Any, field: str, mentions: str) -> None:
    record = report(type_, {**ZH_SECTION})
    record["section"] = dict(record["section"])
    change(record)

    with pytest.raises(TemplateInvalid) as caught:
        document(type_).render(record, ENV)

    assert caught.value.field == field
    assert mentions in caught.value.message
