"""``imagegate batch``: the file reader, names and keys, and whole runs against a real gateway on a loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from gateway.cli import batch as batch_module
from gateway.cli.batch import (
    Entry,
    UsageProblem,
    asset_file_name,
    batch,
    idempotency_key,
    parse_cell,
    parse_options,
    read_csv,
    read_input,
    read_jsonl,
    sanitise,
    stems_of,
)
from tests.conftest import Stack, auth, start_stack
from tests.gateway.recipes.test_recipes import REPORT
from tests.live import serve_asgi
from tests.processes import cli, env_for

SIZES = {"main": (1200, 1200), "scene": (1600, 900), "detail": (800, 800)}

# ---------------------------------------------------------------------------------------------------------------
# Reading files


# design.asset_batch's and crm.product_images's record schemas, as GET /v1/recipes/{name} gives them
BRIEF_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["asset_type", "theme", "count", "style_guide"],
    "properties": {
        "asset_type": {"enum": ["backgrounds", "icons", "illustrations"]},
        "theme": {"type": "string", "minLength": 1, "maxLength": 100},
        "count": {"type": "integer", "minimum": 1, "maximum": 50},
        "style_guide": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "rules": {
                    "type": "object",
                    "properties": {
                        "color_palette": {"type": "array", "items": {"type": "string"}},
                        "style_description": {"type": "string"},
                    },
                },
            },
        },
    },
}
PRODUCT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "category"],
    "properties": {
        "id": {"type": ["string", "integer"]},
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "category": {"type": "string", "maxLength": 100},
        "features": {"type": "array", "items": {"type": "string"}},
        "selling_point": {"type": "string", "maxLength": 500},
        "tagline": {"type": "string", "maxLength": 200},
    },
}


def test_csv_dotted_headers_nest_and_json_cells_are_parsed() -> None:
    text = (
        "asset_type,theme,count,style_guide.name,style_guide.rules.color_palette,style_guide.rules.style_description\n"
        'icons,春节,4,ACME 品牌,"[""#C8102E"",""#FFD700""]",扁平 简洁\n'
    )
    [entry] = read_csv(text, BRIEF_SCHEMA)
    assert entry == Entry(
        2,
        record={
            "asset_type": "icons",
            "theme": "春节",
            "count": 4,
            "style_guide": {
                "name": "ACME 品牌",
                "rules": {"color_palette": ["#C8102E", "#FFD700"], "style_description": "扁平 简洁"},
            },
        },
    )


def test_csv_cells_numbers_text_and_empty_cells() -> None:
    schema = {
        "type": "object",
        "properties": {
            **PRODUCT_SCHEMA["properties"],
            "price": {"type": "number"},
            "sku": {"type": "integer"},
            "flag": {"type": "boolean"},
        },
    }
    text = (
        "id,name,category,features,selling_point,price,sku,flag\n"
        'P001,防水登山鞋,outdoor,"[""防水"",""轻便""]",,199.5,007,true\n'
        "1002,Trail Jacket,clothing,,  ,-3e2,12a,\n"
    )
    first, second = read_csv(text, schema)
    assert first.record == {
        "id": "P001",
        "name": "防水登山鞋",
        "category": "outdoor",
        "features": ["防水", "轻便"],
        "price": 199.5,
        "sku": "007",  # not a JSON number: leading zeros stay text (the gateway says it is not an integer)
        "flag": "true",  # only numbers and [..]/{..} are JSON
    }
    # id is [string, integer]: a string is allowed, so 1002 stays the text it is
    assert second.record == {
        "id": "1002",
        "name": "Trail Jacket",
        "category": "clothing",
        "price": -300.0,
        "sku": "12a",
    }
    assert parse_cell("") == (False, None)
    assert parse_cell("{}") == (True, {})
    assert parse_cell("4") == (True, "4")  # no schema for the field: text
    assert parse_cell("4", "number") == (True, 4)
    assert parse_cell("1e999", "number") == (True, "1e999")
    with pytest.raises(ValueError, match="Infinity is not JSON"):
        parse_cell("[Infinity]")


def test_csv_numbers_only_where_the_schema_wants_a_number_and_not_text() -> None:
    """A product named 2024 with the tagline 520 stays text: the schema says string (the gateway refused numbers)."""
    text = "id,name,category,tagline,selling_point,colour\n2024,2024,home,520,007,1\n"
    [entry] = read_csv(text, PRODUCT_SCHEMA)
    assert entry.record == {
        "id": "2024",
        "name": "2024",
        "category": "home",
        "tagline": "520",
        "selling_point": "007",
        "colour": "1",  # not in the schema: text
    }
    [brief] = read_csv("asset_type,theme,count,style_guide.name\nicons,2025,3,2024\n", BRIEF_SCHEMA)
    assert brief.record == {"asset_type": "icons", "theme": "2025", "count": 3, "style_guide": {"name": "2024"}}
    [without] = read_csv("count,name\n3,2024\n")  # no schema at all: every cell is text
    assert without.record == {"count": "3", "name": "2024"}


def test_which_fields_are_numbers() -> None:
    schema: dict[str, Any] = {
        "type": "object",
        "$defs": {"size": {"type": "integer"}, "a/b": {"type": "number"}},
        "properties": {
            "n": {"type": ["integer", "null"]},
            "s": {"type": ["string", "integer"]},
            "x": {"type": ["number", "integer"]},
            "ref": {"$ref": "#/$defs/size"},
            "escaped": {"$ref": "#/$defs/a~1b"},
            "outer": {
                "type": "object",
                "properties": {"inner": {"type": "object", "properties": {"k": {"type": "integer"}}}},
            },
            "map": {"type": "object", "additionalProperties": {"type": "number"}},
            "loop": {"$ref": "#/properties/loop"},
            "plain": {"enum": [1, 2]},
        },
    }
    assert batch_module.number_kind(batch_module.field_schema(schema, ("n",))) == "integer"
    assert batch_module.number_kind(batch_module.field_schema(schema, ("s",))) is None
    assert batch_module.number_kind(batch_module.field_schema(schema, ("x",))) == "number"
    assert batch_module.number_kind(batch_module.field_schema(schema, ("ref",))) == "integer"
    assert batch_module.number_kind(batch_module.field_schema(schema, ("escaped",))) == "number"
    assert batch_module.number_kind(batch_module.field_schema(schema, ("outer", "inner", "k"))) == "integer"
    assert batch_module.number_kind(batch_module.field_schema(schema, ("map", "anything"))) == "number"
    for path in [("loop",), ("plain",), ("unknown",), ("outer", "k"), ("n", "deeper"), ("outer", "inner")]:
        assert batch_module.number_kind(batch_module.field_schema(schema, path)) is None, path
    assert batch_module.field_schema(None, ("n",)) is None
    # an integer field: 4.0, 1e1 and " 7 " are the integers a recipe's count needs
    [entry] = read_csv("n,x,s\n4.0,1e1,3\n", schema)
    assert entry.record == {"n": 4, "x": 10.0, "s": "3"}
    assert parse_cell(" 7 ", "integer") == (True, 7)
    assert parse_cell("2.5", "integer") == (True, 2.5)  # not an integer: the gateway says so
    assert parse_cell("12a", "integer") == (True, "12a")


def test_csv_bad_rows_are_invalid_with_their_line_numbers_and_the_rest_is_read() -> None:
    text = 'id,name,features\na,Shoe,"[""x""]"\n\nb,Bag,[broken\nc,"multi\nline name",\nd,Cup,,extra\n,,\ne,Pen,{}\n'
    entries = read_csv(text)
    assert [(e.line, e.record is not None) for e in entries] == [
        (2, True),
        (4, False),
        (5, True),
        (7, False),
        (9, True),
    ]
    assert entries[1].invalid is not None and "column 'features': invalid JSON" in entries[1].invalid
    assert entries[2].record == {"id": "c", "name": "multi\nline name"}
    assert entries[3].invalid == "4 cells, but the header has 3 columns"
    assert entries[4].record == {"id": "e", "name": "Pen", "features": {}}


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("a,b,a", "appears twice"),
        ("a,a.b", "both a value and an object"),
        ("a,,b", "empty name"),
        ("a,b..c", "empty dotted part"),
    ],
)
def test_csv_header_problems_stop_the_run(header: str, message: str) -> None:
    with pytest.raises(UsageProblem, match=message):
        read_csv(header + "\n1,2,3\n")


def test_jsonl_objects_blank_lines_and_bad_lines() -> None:
    lines = [
        '{"id": "P1", "name": "防水登山鞋", "note": "a\u2028b"}',
        "",
        "{not json}",
        "[1, 2]",
        "{}",
        '  {"name": "Cup"}  \r',
        '{"price": NaN}',
        '{"price": 1e999}',
    ]
    text = "\n".join(lines) + "\n"
    entries = read_jsonl(text)
    assert [(e.line, e.invalid) for e in entries] == [
        (1, None),
        (3, "invalid JSON (Expecting property name enclosed in double quotes at character 2)"),
        (4, "not a JSON object (a list)"),
        (5, "an empty object"),
        (6, None),
        (7, "invalid JSON (NaN is not JSON)"),
        (8, "invalid JSON (1e999 is too large)"),
    ]
    assert entries[0].record == {"id": "P1", "name": "防水登山鞋", "note": "a\u2028b"}
    assert entries[4].record == {"name": "Cup"}


def test_read_input_by_extension_bom_stdin_and_encoding(tmp_path: Path) -> None:
    csv_file = tmp_path / "products.CSV"
    csv_file.write_bytes("\ufeffid,name,count\nP1,保温杯,2\n".encode())
    assert read_input(str(csv_file)) == [Entry(2, record={"id": "P1", "name": "保温杯", "count": "2"})]
    typed = read_input(str(csv_file), schema={"properties": {"count": {"type": "integer"}}})
    assert typed == [Entry(2, record={"id": "P1", "name": "保温杯", "count": 2})]
    ndjson = tmp_path / "products.ndjson"
    ndjson.write_text('{"name": "x"}\n', encoding="utf-8")
    assert read_input(str(ndjson)) == [Entry(1, record={"name": "x"})]
    assert read_input("-", io.StringIO('{"name": "y"}\n')) == [Entry(1, record={"name": "y"})]
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes("id,name\nP1,保温杯\n".encode("gbk"))
    with pytest.raises(UsageProblem, match="not UTF-8"):
        read_input(str(gbk))
    with pytest.raises(UsageProblem, match=r"give a \.csv, \.jsonl or \.ndjson file"):
        read_input(str(tmp_path / "products.xlsx"))
    with pytest.raises(UsageProblem, match="cannot read"):
        read_input(str(tmp_path / "missing.csv"))


def test_options_json_or_file(tmp_path: Path) -> None:
    assert parse_options(None) == {}
    assert parse_options('{"output_format": "jpeg"}') == {"output_format": "jpeg"}
    path = tmp_path / "options.json"
    path.write_text('{"watermark": {"text": "ACME 品牌"}}', encoding="utf-8")
    assert parse_options(f"@{path}") == {"watermark": {"text": "ACME 品牌"}}
    with pytest.raises(UsageProblem, match="must be a JSON object"):
        parse_options("[1]")
    with pytest.raises(UsageProblem, match="invalid JSON"):
        parse_options("{oops")
    with pytest.raises(UsageProblem, match="cannot read"):
        parse_options(f"@{tmp_path}/none.json")


# ---------------------------------------------------------------------------------------------------------------
# Names and keys


def test_sanitise_and_file_names() -> None:
    assert sanitise("SKU 1/2:3") == "SKU_1_2_3"
    assert sanitise("../../etc/passwd") == "etc_passwd"
    assert sanitise("..hidden.") == "hidden"
    assert sanitise("防水鞋") is None  # nothing readable left: the line number is used instead
    assert sanitise("鞋-001") == "001"
    assert sanitise("-rf") == "rf"
    assert sanitise("x" * 200) == "x" * 80
    assert asset_file_name("P001", "detail-1", 0, 1, "png") == "P001_detail-1.png"
    assert asset_file_name("P001", "main", 1, 3, "JPEG") == "P001_main_2.jpeg"
    assert asset_file_name("line7", "../x", 0, 1, "webp") == "line7_x.webp"


def test_stems_use_the_id_else_the_line_and_never_collide() -> None:
    entries = [
        Entry(2, record={"id": "P 1"}),
        Entry(3, record={"id": "P_1"}),
        Entry(4, record={"name": "no id"}),
        Entry(5, invalid="bad"),
        Entry(6, record={"id": 1002}),
        Entry(7, record={"id": "保温杯"}),
        Entry(8, record={"id": True}),
    ]
    assert stems_of(entries) == {2: "P_1", 3: "P_1-line3", 4: "line4", 6: "1002", 7: "line7", 8: "line8"}


def test_idempotency_key_is_stable_and_depends_on_recipe_record_and_options() -> None:
    record = {"name": "防水登山鞋", "features": ["防水", "轻便"], "id": "P1"}
    key = idempotency_key("crm.product_images", record)
    canonical = json.dumps(
        {"recipe": "crm.product_images", "record": record}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    assert key == "batch-" + hashlib.sha256(canonical.encode()).hexdigest()[:32]
    assert key == idempotency_key("crm.product_images", dict(reversed(list(record.items()))), {})
    assert key != idempotency_key("crm.product_images", {**record, "features": ["轻便", "防水"]})
    assert key != idempotency_key("design.asset_batch", record)
    assert key != idempotency_key("crm.product_images", record, {"output_format": "jpeg"})
    assert len(key) == 38


def test_attempt_keys_and_an_earlier_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = idempotency_key("crm.product_images", {"name": "x"})
    assert batch_module.attempt_key(key, 0) == key
    assert batch_module.attempt_key(key, 3) == key + "-r3"
    assert batch_module.base_key(key + "-r12") == key == batch_module.base_key(key)
    path = tmp_path / "summary.json"
    assert batch_module.read_earlier(path) == {}
    other = idempotency_key("crm.product_images", {"name": "y"})
    records = [
        {"line": 2, "key": key, "attempt": 0, "status": "failed"},
        {"line": 3, "key": key + "-r2", "attempt": 2, "status": "partial"},  # the same record again: the latest
        {"line": 4, "key": other, "attempt": 0, "status": "succeeded"},
        {"line": 5, "key": None, "attempt": None, "status": "invalid"},
        {"line": 6, "status": "failed"},  # a summary from before attempts: nothing to carry on
        {"line": 7, "key": "batch-x", "attempt": True, "status": "failed"},
        "junk",
    ]
    path.write_text(json.dumps({"records": records}), encoding="utf-8")
    assert batch_module.read_earlier(path) == {
        key: batch_module.Earlier(2, "partial"),
        other: batch_module.Earlier(0, "succeeded"),
    }
    for junk in ("{not json", "[1, 2]", '{"records": 3}', '{"other": []}'):
        path.write_text(junk, encoding="utf-8")
        assert batch_module.read_earlier(path) == {}
        assert "ignoring" in capsys.readouterr().err


def test_items_carry_the_attempt_on_and_retry_only_failed_and_partial_records() -> None:
    recipe = "crm.product_images"
    records = [
        {"id": s, "name": s, "category": "home"} for s in ("ok", "failed", "partial", "error", "rejected", "new")
    ]
    entries = [Entry(n + 2, record=r) for n, r in enumerate(records)] + [Entry(9, invalid="bad")]
    keys = {r["id"]: idempotency_key(recipe, r) for r in records}
    earlier = {
        keys["ok"]: batch_module.Earlier(1, "succeeded"),  # made on a retry: keeps replaying attempt 1
        keys["failed"]: batch_module.Earlier(0, "failed"),
        keys["partial"]: batch_module.Earlier(2, "partial"),
        keys["error"]: batch_module.Earlier(0, "error"),  # the same key resumes (its batch may still run)
        keys["rejected"]: batch_module.Earlier(0, "rejected"),  # nothing was queued: the same key sends it again
    }

    def attempts(retry_failed: bool) -> list[tuple[str | None, str]]:
        items = batch_module.make_items(entries, recipe=recipe, options={}, earlier=earlier, retry_failed=retry_failed)
        return [(i.status, i.key) for i in items]

    assert attempts(False) == [
        (None, keys["ok"] + "-r1"),
        (None, keys["failed"]),
        (None, keys["partial"] + "-r2"),
        (None, keys["error"]),
        (None, keys["rejected"]),
        (None, keys["new"]),
        ("invalid", ""),
    ]
    assert attempts(True) == [
        (None, keys["ok"] + "-r1"),
        (None, keys["failed"] + "-r1"),
        (None, keys["partial"] + "-r3"),
        (None, keys["error"]),
        (None, keys["rejected"]),
        (None, keys["new"]),
        ("invalid", ""),
    ]


def _summary_row(number: int, *, succeeded: int = 0, done: bool = False) -> dict[str, Any]:
    counts = {"queued": 2 - succeeded, "running": 0, "succeeded": succeeded, "failed": 0, "cancelled": 0}
    status = "succeeded" if done else "running"
    return {"id": f"bat_{number:012x}", "status": status, "done": done, "total": 2, "counts": counts, "jobs": []}


async def test_a_poll_reads_a_few_list_pages_and_wakes_only_batches_that_moved() -> None:
    """However many batches are unfinished, a poll is at most LIST_PAGES list requests, and it wakes (for a full
    GET) the batches whose summary moved plus at most STRAGGLER_LOOKS of those the pages did not reach."""
    rows = {n: _summary_row(n) for n in range(10, 1001)}  # newest first: 1000 ... 10, most of them someone else's
    rows[1000] = _summary_row(1000, succeeded=1)  # ours: a job has succeeded since the last look
    rows[998] = _summary_row(998, succeeded=2, done=True)  # ours: done
    requests: list[httpx.Request] = []
    listing = True

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if not listing:
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "no such route"}})
        assert request.url.path == "/v1/batches"
        assert request.url.params["limit"] == "100" and request.url.params["recipe"] == "crm.product_images"
        cursor = request.url.params.get("cursor")
        newer = [n for n in sorted(rows, reverse=True) if cursor is None or f"bat_{n:012x}" < cursor]
        page = newer[:100]
        next_cursor = f"bat_{page[-1]:012x}" if len(newer) > 100 else None
        return httpx.Response(200, json={"items": [rows[n] for n in page], "next_cursor": next_cursor})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://gw") as client:
        run = batch_module.Run(
            client,
            recipe="crm.product_images",
            options={},
            out=Path("."),
            concurrency=4,
            poll=1.0,
            progress=batch_module.Progress(disable=True),
        )
        mine = [1000, 999, 998, 1, 2, 3, 4, 5, 6]  # 1-6: older than any page a poll reads
        items: dict[int, batch_module.Item] = {}
        for number in mine:
            item = batch_module.Item(entry=Entry(number, record={"name": str(number)}))
            item.looked = float(number)  # 1 was looked at longest ago
            run.observe(item, _summary_row(number))
            items[number] = item
            run.following[f"bat_{number:012x}"] = [item]

        await run.look()
        assert len(requests) == batch_module.LIST_PAGES == 3
        assert [r.url.params.get("cursor") for r in requests] == [None, f"bat_{901:012x}", f"bat_{801:012x}"]
        woken = {n for n, item in items.items() if item.wake.is_set()}
        assert woken == {1000, 998, 1, 2, 3, 4}  # 999 did not move; 5 and 6 wait for the next poll
        assert batch_module.STRAGGLER_LOOKS == 4

        requests.clear()
        await run.look()  # nobody has looked yet (the events are still set): the rest in turn
        assert len(requests) == 3
        assert {n for n, item in items.items() if item.wake.is_set()} == woken | {5, 6}

        # only new batches to follow: one page has them all
        run.following = {f"bat_{n:012x}": [items[n]] for n in (1000, 999)}
        requests.clear()
        await run.look()
        assert len(requests) == 1

        # a gateway whose list cannot be read: still a bounded number of full looks a poll, in turn
        listing = False
        for item in items.values():
            item.wake.clear()
        run.following = {f"bat_{n:012x}": [items[n]] for n in mine}
        requests.clear()
        await run.look()
        assert len(requests) == 1
        assert {n for n, item in items.items() if item.wake.is_set()} == {1, 2, 3, 4}


# ---------------------------------------------------------------------------------------------------------------
# Retries


async def test_busy_answers_and_connection_errors_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_module, "_backoff", lambda attempt: 0.0)
    answers: list[Any] = [
        httpx.Response(503, headers={"Retry-After": "0"}, json={"error": {"code": "unavailable", "message": "m"}}),
        httpx.ConnectError("refused"),
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.Response(502, text="<html>bad gateway</html>"),
        httpx.Response(202, json={"id": "bat_1"}),
    ]
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Idempotency-Key"))
        item = answers.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer), base_url="http://gw") as client:
        response = await batch_module.request(client, "POST", "/v1/recipes/r", headers={"Idempotency-Key": "k"})
        assert response.status_code == 202
        assert seen == ["k"] * 5

        answers[:] = [
            httpx.Response(
                429,
                headers={"Retry-After": "36000"},
                json={"error": {"code": "images_per_day_exceeded", "message": "Daily images used up."}},
            )
        ]
        with pytest.raises(batch_module.GatewayError) as raised:
            await batch_module.request(client, "POST", "/v1/recipes/r")
        assert raised.value.error == {
            "code": "images_per_day_exceeded",
            "message": "Daily images used up. (retry after 36000s)",
        }
        answers[:] = [httpx.ConnectError("refused")] * 3
        with pytest.raises(batch_module.GatewayError, match="ConnectError: refused"):
            await batch_module.request(client, "GET", "/v1/batches/x", transient_retries=2)
        assert answers == []


def test_retry_after_seconds_or_http_date() -> None:
    assert batch_module.retry_after(httpx.Response(429, headers={"Retry-After": "7"}), 1.0) == 7.0
    assert batch_module.retry_after(httpx.Response(429), 1.5) == 1.5
    assert (
        batch_module.retry_after(httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), 1) == 0
    )
    assert batch_module.retry_after(httpx.Response(429, headers={"Retry-After": "soon"}), 2.0) == 2.0


# ---------------------------------------------------------------------------------------------------------------
# Usage errors (a real process: the command is registered and needs no database)


def test_usage_errors_exit_2_without_a_database(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    records = tmp_path / "p.jsonl"
    records.write_text('{"name": "x"}\n', encoding="utf-8")
    no_token = cli(env, "batch", str(records), "--recipe", "crm.product_images", cwd=tmp_path)
    assert no_token.returncode == 2, no_token.stderr
    assert "give --token or set IMAGEGATE_TOKEN" in no_token.stderr
    bad_options = cli(env, "batch", str(records), "--recipe", "r", "--token", "t", "--options", "[1]", cwd=tmp_path)
    assert bad_options.returncode == 2
    assert "must be a JSON object" in bad_options.stderr
    no_recipe = cli(env, "batch", str(records), "--token", "t", cwd=tmp_path)
    assert no_recipe.returncode == 2
    assert "--recipe" in no_recipe.stderr
    assert not (tmp_path / "imagegate.db").exists()
    assert not (tmp_path / "imagegate-out" / "summary.json").exists()


# ---------------------------------------------------------------------------------------------------------------
# Against a real gateway


def _without_lifespan(app: Any) -> Any:
    """``app`` for uvicorn when the test already runs its lifespan (``start_stack``)."""

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await app(scope, receive, send)

    return asgi


@dataclass
class Live:
    stack: Stack
    url: str
    token: str


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    async for stack in start_stack("embedded", tmp_path, None, preview_step_ms=1.0):
        async with serve_asgi(_without_lifespan(stack.app)) as url:
            yield Live(stack, url, await stack.system("crm", "generate,batch"))


def _command() -> typer.Typer:
    app = typer.Typer()
    app.command()(batch)
    return app


async def run_batch(live: Live, *args: str, input: str | None = None) -> Any:
    """The command in a thread (the gateway answers from this event loop meanwhile)."""
    argv = ["--url", live.url, "--token", live.token, "--poll", "0.1", "--quiet", *args]
    return await asyncio.to_thread(CliRunner().invoke, _command(), argv, input=input, catch_exceptions=False)


PRODUCTS_CSV = (
    "id,name,category,features,selling_point\n"
    'P001,防水登山鞋,outdoor,"[""防水"",""轻便"",""耐磨""]",全天候守护双脚\n'
    '1002,Trail Running Jacket,clothing,"[""breathable"",""windproof""]",\n'
    ',智能保温杯,home,"[""316不锈钢"",""12小时保温"",""一键测温"",""LED显示""]",\n'
)


async def _batch_ids(live: Live) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        params = {"limit": "100"} | ({"cursor": cursor} if cursor else {})
        response = await live.stack.client.get("/v1/batches", params=params, headers=auth(live.token))
        assert response.status_code == 200, response.text
        page = response.json()
        ids += [b["id"] for b in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            return ids


async def test_a_csv_of_products_makes_named_images_and_a_rerun_resumes(live: Live, tmp_path: Path) -> None:
    products = tmp_path / "products.csv"
    products.write_text(PRODUCTS_CSV, encoding="utf-8")
    out = tmp_path / "out"
    first = await run_batch(live, str(products), "--recipe", "crm.product_images", "--out", str(out))
    assert first.exit_code == 0, first.output
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["recipe"] == "crm.product_images"
    assert summary["url"] == live.url
    assert summary["counts"]["succeeded"] == 3
    assert sum(summary["counts"].values()) == 3
    assert "summary:" in first.stdout and "succeeded" in first.stdout
    records = summary["records"]
    assert [(r["line"], r["record_id"], r["status"], r["error"]) for r in records] == [
        (2, "P001", "succeeded", None),
        (3, "1002", "succeeded", None),
        (4, None, "succeeded", None),
    ]
    for record, stem, details in zip(records, ("P001", "1002", "line4"), (3, 2, 3), strict=True):
        roles = [job["role"] for job in record["jobs"]]
        assert sorted(roles) == sorted(["main", "scene", *["detail"] * details])
        for job in record["jobs"]:
            assert job["status"] == "succeeded"
            assert job["files"] == [f"{stem}_{job['name']}.png"]
            with Image.open(out / job["files"][0]) as image:
                assert image.size == SIZES[job["role"]], job
    on_disk = sorted(p.name for p in out.iterdir())
    assert on_disk == sorted(["summary.json", *(f for r in records for j in r["jobs"] for f in j["files"])])
    assert len(await _batch_ids(live)) == 3
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".png"}

    again = await run_batch(live, str(products), "--recipe", "crm.product_images", "--out", str(out))
    assert again.exit_code == 0, again.output
    rerun = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert [r["batch"] for r in rerun["records"]] == [r["batch"] for r in records]
    assert sorted(await _batch_ids(live)) == sorted(r["batch"] for r in records)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".png"} == stamps  # not rewritten


async def test_rejected_and_invalid_records_are_reported_and_exit_1(live: Live, tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": "ok-1", "name": "折叠伞", "category": "outdoor"}, ensure_ascii=False),
        json.dumps({"id": "no-name", "category": "outdoor"}),
        "{broken",
        "[1, 2]",
    ]
    out = tmp_path / "out"
    result = await run_batch(
        live, "-", "--recipe", "crm.product_images", "--out", str(out), input="\n".join(lines) + "\n"
    )
    assert result.exit_code == 1, result.output
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    by_line = {r["line"]: r for r in summary["records"]}
    assert [(line, r["status"]) for line, r in by_line.items()] == [
        (1, "succeeded"),
        (2, "rejected"),
        (3, "invalid"),
        (4, "invalid"),
    ]
    assert by_line[2]["error"] == {
        "code": "validation_error",
        "message": "record.name: is required",
        "details": [{"field": "record.name", "message": "is required"}],
    }
    assert by_line[2]["batch"] is None and by_line[2]["jobs"] == []
    assert by_line[3]["error"]["code"] == "invalid" and "invalid JSON" in by_line[3]["error"]["message"]
    assert by_line[4]["error"]["message"] == "not a JSON object (a list)"
    counts = summary["counts"]
    assert (counts["succeeded"], counts["rejected"], counts["invalid"]) == (1, 1, 2)
    assert (out / "ok-1_main.png").exists()


async def test_csv_cells_are_numbers_only_where_the_recipes_schema_says_so(live: Live, tmp_path: Path) -> None:
    """The product 2024 with the tagline 520 is text (it was sent as a number and refused), a brief's count of 2 a
    number (design.asset_batch needs an integer): the schema comes from the preflight GET /v1/recipes/{name}."""
    products = tmp_path / "products.csv"
    products.write_text("id,name,category,tagline\n2024,2024,home,520\n", encoding="utf-8")
    out = tmp_path / "out"
    result = await run_batch(live, str(products), "--recipe", "crm.product_images", "--out", str(out))
    assert result.exit_code == 0, result.output
    [record] = json.loads((out / "summary.json").read_text(encoding="utf-8"))["records"]
    assert (record["record_id"], record["status"]) == ("2024", "succeeded")
    expected = idempotency_key(
        "crm.product_images", {"id": "2024", "name": "2024", "category": "home", "tagline": "520"}
    )
    assert (record["key"], record["attempt"]) == (expected, 0)
    assert (out / "2024_main.png").exists()

    briefs = tmp_path / "briefs.csv"
    briefs.write_text("asset_type,theme,count,style_guide.name\nicons,2025,2,2024\n", encoding="utf-8")
    result = await run_batch(live, str(briefs), "--recipe", "design.asset_batch", "--out", str(tmp_path / "o2"))
    assert result.exit_code == 0, result.output
    [record] = json.loads((tmp_path / "o2" / "summary.json").read_text(encoding="utf-8"))["records"]
    assert record["status"] == "succeeded" and len(record["jobs"]) == 2


async def test_options_are_passed_through(live: Live, tmp_path: Path) -> None:
    record = {"id": "P9", "name": "保温杯", "category": "home"}
    out = tmp_path / "out"
    options = json.dumps({"output_format": "jpeg", "watermark": {"text": "ACME 品牌"}}, ensure_ascii=False)
    result = await run_batch(
        live, "-", "--recipe", "crm.product_images", "--out", str(out), "--options", options,
        input=json.dumps(record, ensure_ascii=False) + "\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with Image.open(out / "P9_main.jpeg") as image:
        assert (image.format, image.size) == ("JPEG", (1200, 1200))


async def test_sections_a_report_leaves_out_are_in_the_summary(live: Live, tmp_path: Path) -> None:
    summary, _, appendix = REPORT["sections"][:3]
    report = {**REPORT, "sections": [summary, appendix]}
    out = tmp_path / "out"
    result = await run_batch(
        live, "-", "--recipe", "oa.report_illustrations", "--out", str(out),
        input=json.dumps(report, ensure_ascii=False) + "\n",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [record] = json.loads((out / "summary.json").read_text(encoding="utf-8"))["records"]
    assert [job["name"] for job in record["jobs"]] == ["executive_summary"]
    assert record["skipped"] == [{"role": "appendix", "template": "oa.appendix", "reason": "no template 'oa.appendix'"}]


async def test_seed_003s_daily_run_of_50_products_in_three_styles_with_the_logo(live: Live, tmp_path: Path) -> None:
    # docs/cli-batch.md, as written there: the example's CSV and logo, the logo uploaded, one batch run.
    example = Path(__file__).resolve().parents[3] / "examples" / "daily_posters.py"
    logo = tmp_path / "logo.png"
    made = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(example), "--day", "2026-12-02", "--logo", str(logo)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    products = tmp_path / "products.csv"
    products.write_text(made.stdout, encoding="utf-8")
    put = await live.stack.client.put(
        "/v1/logo", content=logo.read_bytes(), headers={**auth(live.token), "Content-Type": "image/png"}
    )
    assert put.status_code == 204, put.text
    out = tmp_path / "posters"
    options = '{"styles": ["main","detail","social"], "watermark": {"logo": true}}'
    result = await run_batch(
        live, str(products), "--recipe", "crm.product_images", "--out", str(out), "--concurrency", "8",
        "--options", options,
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["counts"]["succeeded"] == sum(summary["counts"].values()) == 50
    ids = [f"P20261202-{n:03d}" for n in range(1, 51)]
    assert [r["record_id"] for r in summary["records"]] == ids
    sizes = {"main": (1024, 1024), "detail": (768, 1024), "social": (768, 1344)}
    expected = {f"{i}_{style}.png" for i in ids for style in sizes}
    assert {p.name for p in out.glob("*.png")} == expected
    for name in sorted(expected)[::15]:
        with Image.open(out / name) as image:
            assert image.size == sizes[name.rsplit("_", 1)[1].removesuffix(".png")], name
    batch = await live.stack.client.get(f"/v1/batches/{summary['records'][0]['batch']}", headers=auth(live.token))
    jobs = {j["role"]: j["job"] for j in batch.json()["jobs"]}
    assert all(job["watermark"]["logo"] is True for job in jobs.values())
    rows = list(csv.DictReader(io.StringIO(made.stdout)))
    tagged = next(row for row in rows if row["tagline"])
    social = await live.stack.client.get(
        f"/v1/batches/{summary['records'][rows.index(tagged)]['batch']}", headers=auth(live.token)
    )
    poster = next(j["job"] for j in social.json()["jobs"] if j["role"] == "social")
    assert f"底部加文案“{tagged['tagline']}”" in poster["prompt"]


async def test_a_wrong_token_is_a_clear_error_without_a_traceback(live: Live, tmp_path: Path) -> None:
    products = tmp_path / "products.csv"
    products.write_text(PRODUCTS_CSV, encoding="utf-8")
    env = env_for(tmp_path) | {"IMAGEGATE_TOKEN": "igw_wrongwrong_not-a-real-key", "IMAGEGATE_URL": live.url}
    result = await asyncio.to_thread(cli, env, "batch", str(products), "--recipe", "crm.product_images", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "the gateway refused the token (401 unauthorized)" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr + result.stdout
    assert await _batch_ids(live) == []
    assert not (tmp_path / "imagegate-out" / "summary.json").exists()

    unknown = await run_batch(live, str(products), "--recipe", "crm.no_such_recipe", "--out", str(tmp_path / "o"))
    assert unknown.exit_code == 2, unknown.output
    message = " ".join(unknown.stderr.split())
    assert "no recipe 'crm.no_such_recipe'" in message and "crm.product_images" in message
    assert await _batch_ids(live) == []


async def test_a_token_without_the_batch_scope_rejects_every_record_after_the_first_answer(
    live: Live, tmp_path: Path
) -> None:
    products = tmp_path / "products.csv"
    products.write_text(PRODUCTS_CSV, encoding="utf-8")
    out = tmp_path / "out"
    live.token = await live.stack.system("oa", "generate")
    result = await run_batch(live, str(products), "--recipe", "crm.product_images", "--out", str(out))
    assert result.exit_code == 1, result.output
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["counts"]["rejected"] == 3
    assert {r["error"]["code"] for r in summary["records"]} == {"insufficient_scope"}


async def test_an_unreachable_gateway_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_module, "_backoff", lambda attempt: 0.0)
    products = tmp_path / "p.jsonl"
    products.write_text('{"name": "x", "category": "home"}\n', encoding="utf-8")
    from tests.processes import free_port

    argv = [str(products), "--recipe", "crm.product_images", "--token", "t", "--url", f"http://127.0.0.1:{free_port()}"]
    result = await asyncio.to_thread(CliRunner().invoke, _command(), [*argv, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "cannot reach the gateway" in result.stderr


async def test_a_timeout_writes_the_summary_with_unfinished_records(tmp_path: Path) -> None:
    async for stack in start_stack("embedded", tmp_path, None, preview_step_ms=2000.0):
        async with serve_asgi(_without_lifespan(stack.app)) as url:
            live = Live(stack, url, await stack.system("crm", "generate,batch"))
            out = tmp_path / "out"
            record = json.dumps({"id": "slow", "name": "登山杖", "category": "outdoor"}, ensure_ascii=False)
            result = await run_batch(
                live, "-", "--recipe", "crm.product_images", "--out", str(out), "--timeout", "1.5", input=record
            )
            assert result.exit_code == 1, result.output
            summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
            [entry] = summary["records"]
            assert entry["status"] == "timeout"
            assert entry["batch"] is not None and entry["batch"].startswith("bat_")
            assert summary["ended"] == "timeout"
            assert "resume" in result.stdout


@contextlib.asynccontextmanager
async def recorded_gateway(
    tmp_path: Path, step_ms: float, on_request: Callable[[str, str], Awaitable[None]] | None = None
) -> AsyncIterator[tuple[Live, list[tuple[str, str, str]]]]:
    """A gateway whose preview backend takes ``step_ms`` a step, and the (method, path, query) of every request
    the command makes; ``on_request(method, path)`` is awaited before each one is answered."""
    seen: list[tuple[str, str, str]] = []

    def recording(inner: Any) -> Any:
        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                seen.append((scope["method"], scope["path"], scope["query_string"].decode()))
                if on_request is not None:
                    await on_request(scope["method"], scope["path"])
            await inner(scope, receive, send)

        return app

    async for stack in start_stack("embedded", tmp_path, None, preview_step_ms=step_ms):
        async with serve_asgi(recording(_without_lifespan(stack.app))) as url:
            yield Live(stack, url, await stack.system("crm", "generate,batch")), seen


async def test_unfinished_batches_are_polled_through_the_list_and_at_most_max_in_flight_at_once(
    tmp_path: Path,
) -> None:
    """Each poll is one GET /v1/batches for all of them; a batch is fetched in full only when it has moved (not
    every poll); and a record is submitted only while fewer than --max-in-flight are unfinished."""
    unfinished_at_post: list[int] = []
    gateway: list[Live] = []

    async def count_unfinished(method: str, path: str) -> None:
        if method == "POST" and path.startswith("/v1/recipes/"):
            live = gateway[0]
            response = await live.stack.client.get("/v1/batches", params={"limit": "100"}, headers=auth(live.token))
            unfinished_at_post.append(sum(1 for b in response.json()["items"] if not b["done"]))

    async with recorded_gateway(tmp_path, 10.0, count_unfinished) as (live, seen):
        gateway.append(live)
        lines = [
            json.dumps({"id": f"P{n}", "name": f"保温杯 {n}", "category": "home"}, ensure_ascii=False) for n in range(6)
        ]
        out = tmp_path / "out"
        result = await run_batch(
            live, "-", "--recipe", "crm.product_images", "--out", str(out),
            "--poll", "0.05", "--concurrency", "4", "--max-in-flight", "2", input="\n".join(lines) + "\n",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        assert summary["counts"]["succeeded"] == 6
        batches = [r["batch"] for r in summary["records"]]

    assert len(unfinished_at_post) == 6
    assert max(unfinished_at_post) <= 1, unfinished_at_post  # this one makes 2
    lists = [query for method, path, query in seen if method == "GET" and path == "/v1/batches"]
    assert lists, seen
    assert all("limit=100" in q and "recipe=crm.product_images" in q for q in lists), lists
    for batch_id in batches:
        full = [p for m, p, _ in seen if m == "GET" and p == f"/v1/batches/{batch_id}"]
        # two jobs: woken when the first succeeds and when the batch is done, never once a poll (that was ~12)
        assert len(full) <= 3, (batch_id, len(full), len(lists))


async def test_retry_failed_makes_failed_records_again_and_the_new_attempt_is_remembered(tmp_path: Path) -> None:
    async with recorded_gateway(tmp_path, 10.0) as (live, _):
        records = [{"id": i, "name": f"折叠伞 {i}", "category": "outdoor"} for i in ("P1", "P2")]
        products = tmp_path / "products.jsonl"
        products.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        out = tmp_path / "out"
        command = [str(products), "--recipe", "crm.product_images", "--out", str(out)]

        async def cancel_p2() -> None:  # P2's batch fails: cancelled as soon as it is there
            while True:
                response = await live.stack.client.get("/v1/batches", params={"limit": "100"}, headers=auth(live.token))
                for b in response.json()["items"]:
                    if b["record_id"] == "P2" and not b["done"]:
                        await live.stack.client.post(f"/v1/batches/{b['id']}/cancel", headers=auth(live.token))
                await asyncio.sleep(0.005)

        def by_id() -> dict[str, dict[str, Any]]:
            return {
                r["record_id"]: r for r in json.loads((out / "summary.json").read_text(encoding="utf-8"))["records"]
            }

        canceller = asyncio.create_task(cancel_p2())
        try:
            first = await run_batch(live, *command)
        finally:
            canceller.cancel()
        assert first.exit_code == 1, first.output
        assert "--retry-failed" in first.stdout
        one = by_id()
        assert (one["P1"]["status"], one["P2"]["status"]) == ("succeeded", "failed")
        assert one["P2"]["key"] == idempotency_key("crm.product_images", records[1]) and one["P2"]["attempt"] == 0

        plain = await run_batch(live, *command)  # the same key: the failed batch again
        assert plain.exit_code == 1, plain.output
        assert by_id()["P2"]["status"] == "failed" and by_id()["P2"]["batch"] == one["P2"]["batch"]
        assert len(await _batch_ids(live)) == 2

        retried = await run_batch(live, *command, "--retry-failed")
        assert retried.exit_code == 0, retried.output
        three = by_id()
        assert three["P1"]["batch"] == one["P1"]["batch"] and three["P1"]["attempt"] == 0  # replayed
        assert three["P2"]["status"] == "succeeded" and three["P2"]["batch"] != one["P2"]["batch"]
        assert (three["P2"]["key"], three["P2"]["attempt"]) == (one["P2"]["key"] + "-r1", 1)
        assert len(await _batch_ids(live)) == 3

        again = await run_batch(live, *command)  # attempt 1 is remembered: its batch, not the failed one
        assert again.exit_code == 0, again.output
        assert {k: (r["batch"], r["attempt"]) for k, r in by_id().items()} == {
            k: (r["batch"], r["attempt"]) for k, r in three.items()
        }

        (out / "summary.json").unlink()  # no summary: --retry-failed passes over the failed attempt 0 it replays
        lost = await run_batch(live, *command, "--retry-failed")
        assert lost.exit_code == 0, lost.output
        assert {k: (r["batch"], r["attempt"]) for k, r in by_id().items()} == {
            k: (r["batch"], r["attempt"]) for k, r in three.items()
        }
        assert len(await _batch_ids(live)) == 3
