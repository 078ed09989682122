"""The prompt template sandbox: escapes refused, resource use bounded, records plain data, filters."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from gateway.templates.sandbox import MAX_ITERATIONS, PromptEnvironment, RenderError

env = PromptEnvironment()


def render(source: str, **data: Any) -> str:
    return env.render(source, data)


def refused(source: str, **data: Any) -> RenderError:
    with pytest.raises(RenderError) as caught:
        render(source, **data)
    return caught.value


def test_a_record_renders_in_english_and_chinese() -> None:
    product = {"name": "智能台灯", "features": ["护眼", "无线充电", "APP 控制"], "category": "electronics"}

    text = render("{{ p.name }}，{{ p.features | join_natural('、', '和') }}", p=product)

    assert text == "智能台灯，护眼、无线充电和APP 控制"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ x.__init__.__globals__ }}",
        "{{ ''|attr('__class__') }}",
        "{{ x['__class__'] }}",
        "{{ '{0.__class__}'.format(1) }}",
        "{{ f['format'](1) }}",
        "{{ f['format_map']({}) }}",
        "{{ 'a'.ljust(100000000) }}",
        "{{ 'a'.center(100000000) }}",
        "{{ 'x'|center(100000000) }}",
        "{{ '%100000000s'|format(1) }}",
        "{% include 'other' %}",
        "{% import 'other' as o %}",
        "{% extends 'base' %}",
        "{{ self }}{{ cycler }}{{ lipsum() }}",
    ],
)
def test_sandbox_escapes_and_growing_calls_are_refused(source: str) -> None:
    error = refused(source, x="x", f="{:>100000000}")

    assert error.kind in {"unsafe", "error", "undefined", "syntax"}


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'a' * 50000000 }}",
        "{{ [1] * 50000000 }}",
        "{{ 2 ** 100000 }}",
        "{{ 10 ** 65 }}",
        "{{ 99999999999999999 * 99999999999999999 }}",
        "{% for i in range(3000) %}{% for j in range(3000) %}{% endfor %}{% endfor %}",
        "{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
        "{{ range(10**9) | list }}",
        "{% for i in range(9000) %}{{ s }}{% endfor %}",
    ],
)
def test_huge_loops_and_strings_are_refused_quickly(source: str) -> None:
    started = time.monotonic()

    error = refused(source, s="x" * 5000)

    assert error.kind in {"unsafe", "too_large"}
    assert time.monotonic() - started < 0.5


def test_output_is_bounded() -> None:
    error = refused("{% for i in range(100) %}{{ s }}{% endfor %}", s="y" * 1000)

    assert error.kind == "too_large"


def test_loops_within_the_budget_run() -> None:
    n = MAX_ITERATIONS - 10  # calls (range, the loop's own) spend from the same budget
    assert render("{% for i in range(n) %}.{% endfor %}", n=n) == "." * n


def test_renders_in_threads_have_their_own_budgets() -> None:
    results: list[str | None] = []

    def work() -> None:
        try:
            results.append(render("{% for i in range(n) %}{% endfor %}ok", n=MAX_ITERATIONS // 2 + 100))
        except RenderError:
            results.append(None)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == ["ok"] * 8


@pytest.mark.parametrize("value", [object(), {"k": object()}, [1, {2: "x"}], {"f": print}])
def test_records_must_be_plain_data(value: Any) -> None:
    assert refused("{{ r }}", r=value).kind == "unsafe"


def test_syntax_errors_and_missing_fields_are_named() -> None:
    syntax = refused("line one\n{{ p.name ")
    missing = refused("{{ p.color }}", p={"name": "x"})

    assert (syntax.kind, syntax.line) == ("syntax", 2)
    assert missing.kind == "undefined" and "color" in missing.message


def test_filters_take_lookup_join_natural_clean() -> None:
    scenes = {"electronics": "a modern home office", "clothing": "a fashion studio"}

    assert render("{{ xs | take(2) | join(',') }}", xs=["a", "b", "c"]) == "a,b"
    assert render("{{ c | lookup(scenes, 'a studio') }}", c="Electronics", scenes=scenes) == "a modern home office"
    assert render("{{ c | lookup(scenes, 'a studio') }}", c="toys", scenes=scenes) == "a studio"
    assert render("{{ xs | join_natural }}", xs=["red", "green", "blue"]) == "red, green and blue"
    assert render("{{ t | clean }}", t="  two\n\nlines  ") == "two lines"
    assert refused("{{ xs | take(-1) }}", xs=[1]).kind == "error"


def test_a_missing_optional_field_is_false_in_a_test_and_an_error_when_printed() -> None:
    assert render("a{% if r.tagline %}, {{ r.tagline }}{% endif %}", r={"name": "x"}) == "a"
    assert refused("{{ r.tagline }}", r={"name": "x"}).kind == "undefined"


@pytest.mark.parametrize(
    "source",
    [
        "{% macro f(n) %}{% if n > 0 %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(40) }}",
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
        "{% set l=[1]*10 %}{% for x in l recursive %}{% if loop.depth < 9 %}{{ loop(l) }}{% endif %}{% endfor %}",
        "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}",
        "{% macro f(s,n) %}{% if n %}{{ f(s ~ s, n-1) }}{% endif %}{% endmacro %}{{ f('x', 31) }}",
        "{{ (['x'*1000]*1000)|join|length }}",
        "{{ ('x'*10000)|replace('x', 'y'*10000) }}",
        "{{ ('x'*1000).replace('x', 'y'*1000) }}",
        "{{ ('%0999999999d' % 1)|length }}",
        "{{ ('x'.encode() * 1000000000)|length }}",
        "{{ (1).to_bytes(1000000000, 'big')|length }}",
        "{{ [[[1]]]|tojson(indent=500000000) }}",
        "{{ [1]|batch(1000000000, 0)|list }}",
        "{{ [1]|slice(100000000)|list }}",
        "{{ ([[1]*10000]*10000)|string|length }}",
        "{{ 5|round(-100000000) }}",
        "{{ (((10**64)**64)**64)**64 > 1 }}",
        "{{ ([[1]*1000]*1000)|sum(start=[]) }}",
        "{{ l + l }}",
        "{{ 'a'|dictsort }}",
        "{{ 'abcdef'|truncate(1) }}",
        "{{ " + "(" * 300 + "1" + ")" * 300 + " }}",
    ],
)
def test_recursion_building_and_c_level_blowups_are_refused_quickly(source: str) -> None:
    started = time.monotonic()

    with pytest.raises(RenderError):
        render(source, l=["x" * 1000] * 40)

    assert time.monotonic() - started < 1.0
