"""Every shipped template renders with a Chinese and an English sample record of its kind."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.templates import keywords
from gateway.templates.document import TemplateDocument, parse
from gateway.templates.service import ENV, shipped_sources

DOCUMENTS = [parse(source, ENV) for source in shipped_sources()]


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    keywords.warm()  # as the API does at start: jieba's dictionary is not loaded inside a render's clock


PRODUCT = {
    "zh": {
        "id": "P-1",
        "name": "智能保温杯",
        "category": "home",
        "features": ["316不锈钢", "12小时保温"],
        "selling_point": "一杯暖到底",
        "tagline": "温暖每一天",
        "feature": "316不锈钢",
    },
    "en": {
        "id": 2,
        "name": "Trail Running Jacket",
        "category": "outdoor",
        "features": ["waterproof", "light"],
        "selling_point": "stays dry in any weather",
        "tagline": "Run further",
        "feature": "waterproof",
    },
}
SECTION = {
    "zh": {"type": "sales_analysis", "title": "销售分析", "content": "华东区域销售额同比增长35%,线上渠道订单量翻倍。"},
    "en": {
        "type": "sales_analysis",
        "title": "Sales",
        "content": "Online revenue doubled while retail margins improved.",
    },
}
BRIEF = {
    "zh": {
        "asset_type": "icons",
        "theme": "科技",
        "count": 2,
        "index": 1,
        "number": 2,
        "variant": "云计算",
        "style_guide": {"name": "品牌规范", "rules": {"color_palette": ["#0A84FF"], "style_description": "扁平"}},
    },
    "en": {
        "asset_type": "icons",
        "theme": "tech",
        "count": 2,
        "index": 0,
        "number": 1,
        "style_guide": {"name": "ACME", "rules": {"color_palette": ["#0A84FF", "#111111"]}},
    },
}


def sample(document: TemplateDocument, language: str) -> tuple[dict[str, Any], str]:
    """A record of the template's kind, and a word of it the prompt must contain."""
    kind = document.front.record
    if kind == "product":
        return dict(PRODUCT[language]), PRODUCT[language]["name"]
    if kind == "report":
        section = SECTION[language]
        return {"id": "R-1", "title": "Q3", "sections": [section], "section": section}, section["title"]
    if kind == "brief":
        return dict(BRIEF[language]), BRIEF[language]["style_guide"]["rules"]["color_palette"][0]
    raise AssertionError(f"{document.name}: add a sample record of kind {kind!r}")


@pytest.mark.parametrize("language", ["zh", "en"])
@pytest.mark.parametrize("document", DOCUMENTS, ids=[d.name for d in DOCUMENTS])
def test_every_shipped_template_renders_a_sample_record(document: TemplateDocument, language: str) -> None:
    record, expected = sample(document, language)

    rendered = document.render(record, ENV)

    assert expected in rendered.prompt, (document.name, rendered.prompt)
    assert "  " not in rendered.prompt and "{" not in rendered.prompt
    assert 64 <= rendered.parameters["width"] <= 2048 and 64 <= rendered.parameters["height"] <= 2048
    assert rendered.tags, document.name


def test_the_shipped_library_has_every_template_the_recipes_name() -> None:
    names = {d.name for d in DOCUMENTS}
    assert {
        "crm.product_main",
        "crm.product_scene",
        "crm.product_detail",
        "crm.poster_main",
        "crm.poster_detail",
        "crm.poster_social",
        "oa.executive_summary",
        "oa.sales_analysis",
        "oa.market_trends",
        "oa.team_performance",
        "design.backgrounds",
        "design.icons",
        "design.illustrations",
    } <= names
