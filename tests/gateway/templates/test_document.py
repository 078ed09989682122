"""Template documents: front matter + Jinja, checked at parse time; records validated by the template's schema."""

from __future__ import annotations

import pytest
from jsonschema import _keywords as jsonschema_keywords

from gateway.templates.document import TemplateInvalid, first_schema_error, parse
from gateway.templates.sandbox import PromptEnvironment

env = PromptEnvironment()

PRODUCT = """---
name: crm.product_main
description: Main image on a clean background
record: product
schema:
  type: object
  required: [name, category]
  properties:
    name: {type: string, minLength: 1, maxLength: 200}
    category: {type: string}
    features: {type: array, items: {type: string}, maxItems: 20}
negative_prompt: "blurry, text, watermark{% if product.category == 'clothing' %}, mannequin{% endif %}"
width: 1200
height: 1200
steps: 28
guidance_scale: 6.5
tags: [product, main]
data:
  scenes: {electronics: a modern home office, clothing: a fashion studio}
---
Professional product photo of {{ product.name }}, {{ product.features | take(3) | join_natural }},
set in {{ product.category | lookup(scenes, 'a professional studio') }}.
"""


def test_a_document_parses_and_renders_an_english_record() -> None:
    document = parse(PRODUCT, env)

    rendered = document.render(
        {"name": "Desk Lamp", "category": "electronics", "features": ["dimmable", "USB-C", "oak base", "x"]}, env
    )

    assert document.name == "crm.product_main"
    assert rendered.prompt == (
        "Professional product photo of Desk Lamp, dimmable, USB-C and oak base, set in a modern home office."
    )
    assert rendered.negative_prompt == "blurry, text, watermark"
    assert rendered.parameters == {
        "width": 1200,
        "height": 1200,
        "steps": 28,
        "guidance_scale": 6.5,
        "n": 1,
        "model": None,
        "output_format": "png",
    }
    assert rendered.tags == ["product", "main"]


def test_a_chinese_record_renders() -> None:
    rendered = parse(PRODUCT, env).render({"name": "真丝连衣裙", "category": "clothing", "features": ["垂感"]}, env)

    assert "真丝连衣裙" in rendered.prompt and "a fashion studio" in rendered.prompt
    assert rendered.negative_prompt.endswith("mannequin")


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"category": "electronics"}, "record.name"),
        ({"name": "", "category": "electronics"}, "record.name"),
        ({"name": "Lamp", "category": "electronics", "features": [1]}, "record.features.0"),
        ({"name": "Lamp", "category": 3}, "record.category"),
    ],
)
def test_records_are_validated_against_the_schema(record: dict[str, object], field: str) -> None:
    with pytest.raises(TemplateInvalid) as caught:
        parse(PRODUCT, env).render(record, env)

    assert caught.value.field == field


@pytest.mark.parametrize(
    ("source", "field"),
    [
        ("no front matter", "source"),
        ("---\nname: [unclosed\n---\nx", "front_matter"),
        ("---\n- a list\n---\nx", "front_matter"),
        ("---\nname: t\nrecord: r\ncolour: red\n---\nx", "front_matter.colour"),
        ("---\nname: t\nrecord: r\nwidth: 4000\n---\nx", "front_matter.width"),
        ("---\nname: t\nrecord: r\nsteps: '30'\n---\nx", "front_matter.steps"),
        ("---\nname: Bad Name\nrecord: r\n---\nx", "front_matter.name"),
        ("---\nname: t\nrecord: r\nschema: {type: 12}\n---\nx", "front_matter.schema"),
        ("---\nname: t\nrecord: r\n---\n{{ r.name ", "prompt"),
        ("---\nname: t\nrecord: r\n---\n{{ ''.__class__ }}", "prompt"),
        ("---\nname: t\nrecord: r\nnegative_prompt: '{% for %}'\n---\nx", "front_matter.negative_prompt"),
        ("---\nname: t\nrecord: r\n---\n   \n", "prompt"),
        ("---\nname: t\nrecord: r\na: &a [1, 2]\nb: *a\n---\nx", "front_matter"),
        ("---\nname: t\nrecord: r\n---\n" + "x" * 70_000, "source"),
    ],
)
def test_invalid_documents_are_refused_at_parse_time_naming_the_part(source: str, field: str) -> None:
    with pytest.raises(TemplateInvalid) as caught:
        parse(source, env)

    assert caught.value.field == field


def test_a_template_that_renders_nothing_for_a_record_is_refused() -> None:
    document = parse("---\nname: t\nrecord: r\n---\n{% if r.show %}x{% endif %}", env)

    with pytest.raises(TemplateInvalid) as caught:
        document.render({"show": False}, env)

    assert caught.value.field == "prompt"


@pytest.mark.parametrize(
    "schema",
    [
        "{properties: {a: {$ref: 'http://127.0.0.1:9/x'}}}",
        "{properties: {a: {$ref: 'file:///etc/passwd'}}}",
        "{$ref: '#/nope'}",
        "{$defs: {a: {$ref: '#/$defs/a'}}, $ref: '#/$defs/a'}",
        "{properties: {a: {type: string, pattern: '^(a+)+$'}}}",
        "{patternProperties: {'^(a+)+$': {type: string}}}",
        "{anyOf: [" + ", ".join(["{type: object}"] * 30) + "]}",
    ],
)
def test_schemas_that_reach_out_or_cost_more_than_linear_time_are_refused(schema: str) -> None:
    with pytest.raises(TemplateInvalid) as caught:
        parse(f"---\nname: t\nrecord: r\nschema: {schema}\n---\nx", env)

    assert caught.value.field == "front_matter.schema"


@pytest.mark.parametrize(
    "front",
    ["n: " + "9" * 5000, "a: " + "[" * 3000 + "]" * 3000, "data: {when: 2026-12-01}", "guidance_scale: true"],
)
def test_front_matter_that_is_not_plain_or_too_big_is_refused(front: str) -> None:
    with pytest.raises(TemplateInvalid):
        parse(f"---\nname: t\nrecord: r\n{front}\n---\nx", env)


UNIQUE = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}


@pytest.mark.parametrize(
    ("items", "unique"),
    [
        ([1, 1.0], False),  # JSON has one number type
        ([1, True], True),  # but true is not 1
        ([0, False, None, ""], True),
        ([{"a": [1, 2]}, {"a": [1, 2.0]}], False),
        ([{"a": 1, "b": 2}, {"b": 2, "a": 1}], False),  # key order does not matter
        ([[1, 2], [2, 1]], True),  # item order does
        (["防水", "防水"], False),
    ],
)
def test_unique_items_follows_json_equality(items: list[object], unique: bool) -> None:
    assert (first_schema_error(UNIQUE, {"tags": items}) is None) is unique


def test_unique_items_over_many_objects_is_checked_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    # jsonschema's own check compares unsortable items pairwise: 5,000 objects took half a minute.
    def quadratic(container: object) -> bool:
        raise AssertionError("the pairwise check ran")

    monkeypatch.setattr(jsonschema_keywords, "uniq", quadratic)
    items = [{"b": i} for i in range(5000)]

    assert first_schema_error(UNIQUE, {"tags": items}) is None
    assert first_schema_error(UNIQUE, {"tags": [*items, {"b": 4999}]}) == ("record.tags", "has non-unique elements")
