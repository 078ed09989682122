"""``imagegate batch FILE --recipe NAME``: a client of a running gateway that runs a recipe over every record of a
CSV or JSON Lines file, follows the batches, downloads the images and writes ``summary.json``.

It needs no database: it talks HTTP to ``--url`` with ``--token``. Re-running the same command resumes: every
submission carries an ``Idempotency-Key`` derived from the recipe, the record and the options, so the gateway answers
the batch it already has, and files already on disk with the right sha256 are not downloaded again. With
``--retry-failed`` the records an earlier run ended ``failed`` or ``partial`` get the next attempt's key (``-r1``,
``-r2``, ...: ``summary.json`` remembers each record's attempt) and so a new batch.

Unfinished batches are followed together: each poll reads the batch list's summaries (``GET /v1/batches``, a few
pages at most) and fetches a batch in full (``GET /v1/batches/{id}``, with its jobs and assets) only when it has
moved: a job newly succeeded, or the batch done. At most ``--max-in-flight`` records are unfinished at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import email.utils
import hashlib
import io
import json
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TextIO
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

STATUSES = ("succeeded", "partial", "failed", "rejected", "invalid", "error", "timeout", "interrupted")
TERMINAL_JOB = {"succeeded", "failed", "cancelled"}
DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_INTERRUPTED = 130

# A run-level failure is retried this often (connection errors, 5xx other than 503) with 1, 2, 4, ... s between.
TRANSIENT_RETRIES = 5
# 429/503: waited out (``Retry-After``) this many times; a wait longer than this is not waited out (a daily quota).
BUSY_RETRIES = 100
MAX_RETRY_AFTER = 900.0
# A batch whose polls keep failing (the gateway is away) is given up after this long; a re-run resumes it.
POLL_GIVE_UP_SECONDS = 300.0
# Polling: one look a poll at the batch list (at most this many pages of 100) for every unfinished batch at once,
# a full GET /v1/batches/{id} only for a batch that moved; batches the pages do not reach: this many a poll.
LIST_PAGES = 3
STRAGGLER_LOOKS = 4
DEFAULT_MAX_IN_FLIGHT = 64
# --retry-failed: at most this many earlier attempts of one record (replayed, finished unsucceeded) passed over.
MAX_PASSED_OVER = 20
# With --retry-failed a record whose earlier summary says this gets the next attempt's key at once.
RETRIED = frozenset({"failed", "partial"})

_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_ATTEMPT = re.compile(r"-r[0-9]+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_ALNUM = re.compile(r"[A-Za-z0-9]")

err = Console(stderr=True)


class UsageProblem(Exception):
    """A problem with the command line or the input file as a whole: one message, exit code 2."""


# --------------------------------------------------------------------------------------------------------------
# Reading records


@dataclass
class Entry:
    """One record of the input (``record``), or a line that is not one (``invalid`` says why)."""

    line: int
    record: dict[str, Any] | None = None
    invalid: str | None = None


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is too large")
    return value


def loads(text: str) -> Any:
    """Strict JSON: no NaN or Infinity (Python's json takes them; the gateway and the idempotency key cannot).
    Raises ValueError with a short reason."""
    try:
        return json.loads(text, parse_constant=_not_json, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{exc.msg} at character {exc.pos + 1}") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _resolved(root: dict[str, Any], node: Any) -> Any:
    """``node``, or what its local ``$ref`` (``#/...``) points at (the gateway allows no other references)."""
    for _ in range(20):
        ref = node.get("$ref") if isinstance(node, dict) else None
        if not isinstance(ref, str) or not ref.startswith("#"):
            return node
        target: Any = root
        for part in ref[1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, dict) else None
        node = target
    return None


def field_schema(schema: dict[str, Any] | None, path: tuple[str, ...]) -> dict[str, Any] | None:
    """The schema of the field at ``path`` (a dotted CSV header) in a recipe's record schema: through nested
    ``properties`` (or a schema-valued ``additionalProperties``); None for a field the schema does not describe."""
    if not isinstance(schema, dict):
        return None
    node: Any = schema
    for part in path:
        node = _resolved(schema, node)
        if not isinstance(node, dict):
            return None
        properties = node.get("properties")
        child = properties.get(part) if isinstance(properties, dict) else None
        if child is None and isinstance(node.get("additionalProperties"), dict):
            child = node["additionalProperties"]
        node = child
    node = _resolved(schema, node)
    return node if isinstance(node, dict) else None


def number_kind(field: dict[str, Any] | None) -> str | None:
    """``"number"`` or ``"integer"`` when the field's ``type`` takes a number but not a string (a text cell
    of it that is a JSON number is sent as a number), else None (the cell stays text)."""
    given = field.get("type") if field else None
    types = {given} if isinstance(given, str) else set(given) if isinstance(given, list) else set()
    if "string" in types:
        return None
    if "number" in types:
        return "number"
    return "integer" if "integer" in types else None


def parse_cell(cell: str, number: str | None = None) -> tuple[bool, Any]:
    """A CSV cell's value: ``(False, None)`` when empty (the field is left out), JSON for ``[...]``/``{...}``,
    a number for a JSON number in a field whose schema wants one (``number``: ``"number"``/``"integer"``, from
    :func:`number_kind`), else the text. Raises ValueError for a ``[``/``{`` cell that is not JSON."""
    if not cell.strip():
        return False, None
    if cell[0] in "[{":
        try:
            return True, loads(cell)
        except ValueError as exc:
            raise ValueError(f"invalid JSON ({exc})") from None
    text = cell.strip()
    if number is not None and _JSON_NUMBER.fullmatch(text):
        with contextlib.suppress(ValueError):  # 1e999: keep the text rather than an unrepresentable number
            value = loads(text)
            if number == "integer" and isinstance(value, float) and value.is_integer():
                value = int(value)  # 4.0 or 1e1 for an integer field: 4 and 10 (a recipe's count must be an int)
            return True, value
    return True, cell


def _header_paths(header: list[str]) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    for column, name in enumerate(header, 1):
        parts = tuple(part.strip() for part in name.strip().split("."))
        if not all(parts):
            raise UsageProblem(f"CSV header: column {column} ({name!r}) has an empty name or an empty dotted part")
        paths.append(parts)
    seen: set[tuple[str, ...]] = set()
    for path in paths:
        if path in seen:
            raise UsageProblem(f"CSV header: the column {'.'.join(path)!r} appears twice")
        seen.add(path)
    for path in paths:
        for end in range(1, len(path)):
            if path[:end] in seen:
                raise UsageProblem(
                    f"CSV header: {'.'.join(path[:end])!r} is both a value and an object ({'.'.join(path)!r})"
                )
    return paths


def _put(record: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = record
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def read_csv(text: str, schema: dict[str, Any] | None = None) -> list[Entry]:
    """Rows of a CSV text; the first non-empty row is the header. Line numbers are the file's (header = 1).
    ``schema`` (the recipe's record schema) says which columns are numbers; without it every cell is text (or
    JSON when it starts with ``[``/``{``)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    entries: list[Entry] = []
    paths: list[tuple[str, ...]] | None = None
    header: list[str] = []
    numbers: list[str | None] = []
    while True:
        line = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            if paths is None:
                raise UsageProblem(f"CSV header (line {line}): {exc}") from None
            entries.append(Entry(line, invalid=f"not valid CSV: {exc}"))
            continue
        if not any(cell.strip() for cell in row):
            continue
        if paths is None:
            header, paths = row, _header_paths(row)
            numbers = [number_kind(field_schema(schema, path)) for path in paths]
            continue
        if len(row) > len(paths):
            entries.append(Entry(line, invalid=f"{len(row)} cells, but the header has {len(paths)} columns"))
            continue
        record: dict[str, Any] = {}
        problem = None
        for name, path, number, cell in zip(header, paths, numbers, row, strict=False):
            try:
                present, value = parse_cell(cell, number)
            except ValueError as exc:
                problem = f"column {name.strip()!r}: {exc}"
                break
            if present:
                _put(record, path, value)
        if problem is not None:
            entries.append(Entry(line, invalid=problem))
        elif record:
            entries.append(Entry(line, record=record))
    return entries


def read_jsonl(text: str) -> list[Entry]:
    """One JSON object a line; blank lines are skipped. (Only ``\\n`` ends a line: U+2028 may sit inside a string.)"""
    entries: list[Entry] = []
    for line, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        try:
            value = loads(raw)
        except ValueError as exc:
            entries.append(Entry(line, invalid=f"invalid JSON ({exc})"))
            continue
        if not isinstance(value, dict):
            entries.append(Entry(line, invalid=f"not a JSON object (a {type(value).__name__})"))
        elif not value:
            entries.append(Entry(line, invalid="an empty object"))
        else:
            entries.append(Entry(line, record=value))
    return entries


def _decode(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8-sig")  # Excel's "CSV UTF-8" starts with a byte order mark
    except UnicodeDecodeError:
        raise UsageProblem(
            f"{what} is not UTF-8 text (from Excel: save as \u201cCSV UTF-8\u201d; "
            "or convert it: iconv -f GBK -t UTF-8)"
        ) from None


@dataclass(frozen=True)
class Source:
    """FILE's text and how to read it: ``csv`` or ``jsonl``."""

    kind: str
    text: str

    def entries(self, schema: dict[str, Any] | None = None) -> list[Entry]:
        return read_csv(self.text, schema) if self.kind == "csv" else read_jsonl(self.text)


def load_input(file: str, stdin: TextIO | None = None) -> Source:
    """FILE's text: ``.csv`` is CSV, ``.jsonl``/``.ndjson`` JSON Lines, ``-`` JSON Lines from stdin."""
    if file == "-":
        stream = stdin if stdin is not None else sys.stdin
        buffer = getattr(stream, "buffer", None)
        text = _decode(buffer.read(), "stdin") if buffer is not None else stream.read().removeprefix("\ufeff")
        return Source("jsonl", text)
    path = Path(file)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise UsageProblem(f"{file}: give a .csv, .jsonl or .ndjson file (or - for JSON Lines on stdin)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageProblem(f"cannot read {file}: {exc.strerror or exc}") from None
    return Source("csv" if suffix == ".csv" else "jsonl", _decode(data, file))


def read_input(file: str, stdin: TextIO | None = None, schema: dict[str, Any] | None = None) -> list[Entry]:
    """The entries of FILE (see :func:`load_input`); ``schema`` types CSV cells (see :func:`read_csv`)."""
    return load_input(file, stdin).entries(schema)


def parse_options(raw: str | None) -> dict[str, Any]:
    """``--options``: a JSON object, or ``@path`` to a file holding one."""
    if raw is None or not raw.strip():
        return {}
    text, what = raw, "--options"
    if raw.startswith("@"):
        what = raw[1:]
        try:
            text = _decode(Path(what).read_bytes(), what)
        except OSError as exc:
            raise UsageProblem(f"--options: cannot read {what}: {exc.strerror or exc}") from None
    try:
        value = loads(text)
    except ValueError as exc:
        raise UsageProblem(f"{what}: invalid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UsageProblem(f"{what}: the options must be a JSON object, not a {type(value).__name__}")
    return value


# --------------------------------------------------------------------------------------------------------------
# Names and keys


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def idempotency_key(recipe: str, record: dict[str, Any], options: dict[str, Any] | None = None) -> str:
    """The same recipe, record and options give the same key (and so the same batch on a re-run); options only
    count when given, so that changing them makes new batches instead of a 409 for a reused key."""
    payload: dict[str, Any] = {"recipe": recipe, "record": record}
    if options:
        payload["options"] = options
    return "batch-" + hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:32]


def attempt_key(key: str, attempt: int) -> str:
    """The Idempotency-Key of a record's ``attempt``: 0 is the record's own key, a retry N gets ``-r<N>``."""
    return key if attempt <= 0 else f"{key}-r{attempt}"


def base_key(key: str) -> str:
    """The record's own key of an :func:`attempt_key`."""
    return _ATTEMPT.sub("", key)


@dataclass(frozen=True)
class Earlier:
    """What an earlier run into the same ``--out`` knew of a record: its last attempt and how that ended."""

    attempt: int
    status: str | None


def read_earlier(path: Path) -> dict[str, Earlier]:
    """The records of an earlier ``summary.json``, by their own key (see :func:`base_key`); empty when there is
    none. A summary that cannot be read is a warning, not an error (then every record starts at attempt 0)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        err.print(f"[yellow]warning:[/yellow] ignoring {path}: {exc.strerror or exc}", highlight=False)
        return {}
    try:
        summary = loads(data.decode("utf-8"))
        records = summary["records"]
        if not isinstance(records, list):
            raise TypeError
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        err.print(f"[yellow]warning:[/yellow] ignoring {path}: not a summary.json of imagegate batch", highlight=False)
        return {}
    earlier: dict[str, Earlier] = {}
    for record in records:
        key = record.get("key") if isinstance(record, dict) else None
        attempt = record.get("attempt", 0) if isinstance(record, dict) else None
        if not isinstance(key, str) or isinstance(attempt, bool) or not isinstance(attempt, int):
            continue  # an invalid line, or a summary from before attempts were recorded
        status = record.get("status") if isinstance(record.get("status"), str) else None
        own = base_key(key)
        if own not in earlier or attempt >= earlier[own].attempt:
            earlier[own] = Earlier(attempt, status)
    return earlier


def sanitise(value: str, limit: int = 80) -> str | None:
    """``value`` as a file-name part of ``[A-Za-z0-9._-]`` (others become ``_``), at most ``limit`` characters;
    None when nothing recognisable is left (e.g. an id of Chinese characters only)."""
    cleaned = _UNSAFE.sub("_", value).lstrip("._-")[:limit].rstrip(".")
    return cleaned if _ALNUM.search(cleaned) else None


def record_id_of(record: dict[str, Any]) -> str | None:
    value = record.get("id")
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    return str(value)


def stems_of(entries: list[Entry]) -> dict[int, str]:
    """File-name prefixes of the records, by line: the sanitised record id, else ``line<N>``; a prefix a record
    earlier in the file already has gets ``-line<N>`` (so two records never write the same file)."""
    stems: dict[int, str] = {}
    used: set[str] = set()
    for entry in entries:
        if entry.record is None:
            continue
        raw = record_id_of(entry.record)
        stem = (sanitise(raw) if raw is not None else None) or f"line{entry.line}"
        if stem in used:
            stem = f"{stem}-line{entry.line}"
        used.add(stem)
        stems[entry.line] = stem
    return stems


def asset_file_name(stem: str, job_name: str, index: int, count: int, fmt: str) -> str:
    """``<stem>_<job name>[_<n>].<format>``; ``_<n>`` (1-based) only when the job made several images."""
    name = f"{stem}_{sanitise(job_name) or 'job'}"
    if count > 1:
        name += f"_{index + 1}"
    return f"{name}.{sanitise(fmt.lower(), 10) or 'bin'}"


# --------------------------------------------------------------------------------------------------------------
# Talking to the gateway


def error_of(response: httpx.Response) -> dict[str, Any]:
    """``{code, message[, details]}`` from the gateway's error envelope (or a stand-in for a foreign body)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        result = {"code": error["code"], "message": str(error.get("message") or "")}
        if error.get("details") is not None:
            result["details"] = error["details"]
        return result
    text = " ".join(response.text.split())[:200]
    return {"code": f"http_{response.status_code}", "message": text or response.reason_phrase}


def retry_after(response: httpx.Response, default: float) -> float:
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return default
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return default


class GatewayError(Exception):
    """A request that did not get a usable answer after its retries."""

    def __init__(self, code: str, message: str, response: httpx.Response | None = None) -> None:
        super().__init__(message)
        self.error: dict[str, Any] = {"code": code, "message": message}
        self.response = response


async def request(
    client: httpx.AsyncClient, method: str, url: str, *, transient_retries: int = TRANSIENT_RETRIES, **kwargs: Any
) -> httpx.Response:
    """One request with the retries: 429/503 wait ``Retry-After`` (when not longer than 15 minutes), connection
    errors and other 5xx back off 1, 2, 4, ... s a few times. Returns the final response (2xx or 4xx)."""
    transient = busy = 0
    while True:
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            transient += 1
            if transient > transient_retries:
                message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                raise GatewayError("connection_error", message) from None
            await asyncio.sleep(_backoff(transient))
            continue
        if response.status_code in (429, 503):
            busy += 1
            wait = retry_after(response, _backoff(busy))
            if busy > BUSY_RETRIES or wait > MAX_RETRY_AFTER:
                error = error_of(response)
                raise GatewayError(error["code"], error["message"] + f" (retry after {wait:.0f}s)", response)
            await asyncio.sleep(wait + random.uniform(0, 0.25))  # noqa: S311  # jitter, not cryptography
            continue
        if response.status_code >= 500:
            transient += 1
            if transient > transient_retries:
                error = error_of(response)
                raise GatewayError(error["code"], error["message"], response)
            await asyncio.sleep(_backoff(transient))
            continue
        return response


def _backoff(attempt: int) -> float:
    return float(min(30, 2 ** (attempt - 1))) + random.uniform(0, 0.25)  # noqa: S311


# --------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class Item:
    """One input line on its way through the run."""

    entry: Entry
    stem: str = ""
    own_key: str = ""  # idempotency_key() of the record; "" for an invalid line
    attempt: int = 0  # 0, or N for the N-th retry (--retry-failed): the key sent is attempt_key(own_key, attempt)
    status: str | None = None
    error: dict[str, Any] | None = None
    batch: dict[str, Any] | None = None
    files: dict[str, list[str]] = field(default_factory=dict)  # job id -> files, once downloaded
    download_errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    counted: tuple[int, int] = (0, 0)  # (jobs, terminal jobs) as last added to the progress bar
    # While its batch runs (see Run.follow):
    seen: tuple[int, bool] = (0, False)  # (succeeded jobs, done) of the last full look at the batch
    looked: float = 0.0  # when that look was (time.monotonic())
    busy: bool = False  # looking or downloading now
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # the poller: look at the batch again
    lost: dict[str, Any] | None = None  # the poller gave the batch up (the gateway stayed away)

    @property
    def key(self) -> str:
        return attempt_key(self.own_key, self.attempt) if self.own_key else ""

    def jobs(self) -> list[dict[str, Any]]:
        jobs = self.batch.get("jobs") if self.batch else None
        return [j for j in jobs if isinstance(j, dict)] if isinstance(jobs, list) else []


def _job(entry: dict[str, Any]) -> dict[str, Any]:
    job = entry.get("job")
    return job if isinstance(job, dict) else {}


def _count(batch: dict[str, Any], statuses: set[str] | tuple[str, ...]) -> int | None:
    """Jobs of ``batch`` (a full batch or a list's summary) in ``statuses``, from its ``counts``."""
    counts = batch.get("counts")
    if not isinstance(counts, dict):
        return None
    return sum(n for s, n in counts.items() if s in statuses and isinstance(n, int) and not isinstance(n, bool))


class Run:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        recipe: str,
        options: dict[str, Any],
        out: Path,
        concurrency: int,
        poll: float,
        progress: Progress,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        retry_failed: bool = False,
    ) -> None:
        self.client = client
        self.recipe = recipe
        self.options = options
        self.out = out
        self.poll = poll
        self.retry_failed = retry_failed
        self.submitting = asyncio.Semaphore(concurrency)
        self.reading = asyncio.Semaphore(concurrency)  # looks at batches and downloads
        self.in_flight = asyncio.Semaphore(max_in_flight)  # records submitted and not finished
        self.progress = progress
        self.task: TaskID = progress.add_task("jobs", total=None, ok=0, failed=0, rejected=0)
        self.total = self.terminal = 0
        self.tally: Counter[str] = Counter()
        self.refused: dict[str, Any] | None = None  # a 401/403: the other records are not sent
        self.following: dict[str, list[Item]] = {}  # unfinished batch id -> the items waiting for it
        self.remaining = 0
        self.all_done = asyncio.Event()
        self.list_failing_since: float | None = None

    async def run(self, items: list[Item]) -> None:
        self.remaining = len(items)
        if not items:
            return
        async with asyncio.TaskGroup() as group:
            for item in items:
                group.create_task(self.process(item))
            group.create_task(self.watch())

    async def process(self, item: Item) -> None:
        assert item.entry.record is not None
        try:
            async with self.in_flight:
                await self.follow(item)
        except GatewayError as exc:
            self.finish(item, "error", exc.error)
        except Exception as exc:  # an answer this client did not expect: that record fails, the run goes on
            self.finish(item, "error", {"code": "unexpected", "message": f"{type(exc).__name__}: {exc}"})
        finally:
            self.remaining -= 1
            if self.remaining <= 0:
                self.all_done.set()

    async def follow(self, item: Item) -> None:
        """Submit the record, then look at its batch whenever the poller says it has moved, until it is done;
        each succeeded job's images are downloaded as soon as a look shows it."""
        async with self.submitting:
            batch = await self.submit(item)
        if batch is None:
            return
        self.observe(item, batch)
        await self.download_ready(item)
        if not batch.get("done"):
            batch_id = str(batch["id"])
            self.following.setdefault(batch_id, []).append(item)
            try:
                if not await self.wait_until_done(item, batch_id):
                    return
            finally:
                followers = self.following.get(batch_id, [])
                if item in followers:
                    followers.remove(item)
                if not followers:
                    self.following.pop(batch_id, None)
        self.finish(item, *self.outcome(item))

    async def wait_until_done(self, item: Item, batch_id: str) -> bool:
        """False when the record was finished otherwise (an error)."""
        failing_since: float | None = None
        while not (item.batch or {}).get("done"):
            await item.wake.wait()
            item.wake.clear()
            if item.lost is not None:
                self.finish(item, "error", item.lost)
                return False
            item.busy, item.looked = True, time.monotonic()
            try:
                try:
                    async with self.reading:
                        response = await request(self.client, "GET", f"/v1/batches/{quote(batch_id)}")
                except GatewayError as exc:
                    failing_since = failing_since or time.monotonic()
                    if time.monotonic() - failing_since > POLL_GIVE_UP_SECONDS:
                        self.finish(item, "error", exc.error)
                        return False
                    continue  # the poller wakes it again: the list still shows progress it has not seen
                if response.status_code != 200:
                    self.finish(item, "error", error_of(response))
                    return False
                failing_since = None
                batch = response.json()
                if not isinstance(batch, dict):
                    raise TypeError(f"GET /v1/batches/{batch_id}: not a batch")
                self.observe(item, batch)
                await self.download_ready(item)
            finally:
                item.busy = False
        return True

    async def watch(self) -> None:
        """The poller: every ``poll`` seconds one :meth:`look` for all unfinished batches together."""
        while not self.all_done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll):
                    await self.all_done.wait()
            if self.all_done.is_set():
                return
            if self.following:
                await self.look()

    async def look(self) -> None:
        """Wake the items whose batch has moved, read from the batch list's summaries (``GET /v1/batches``, at
        most ``LIST_PAGES`` pages): a job newly succeeded (its images to download) or the batch done. A batch
        the pages did not show (older than they reach, or the list cannot be read) is looked at by itself, a
        few a poll (``STRAGGLER_LOOKS``), the longest unlooked first. Requests per poll: at most
        ``LIST_PAGES + STRAGGLER_LOOKS`` plus one per batch that moved."""
        following = {batch_id: list(items) for batch_id, items in self.following.items() if items}
        if not following:
            return
        try:
            listed = await self.summaries(set(following))
        except Exception:  # an answer this client did not expect: this poll, every batch is one of the rest
            listed = {}
        for batch_id, summary in listed.items():
            for item in following[batch_id]:
                self.observe_counts(item, summary)
                succeeded = _count(summary, ("succeeded",))
                moved = (succeeded is not None and succeeded > item.seen[0]) or (
                    summary.get("done") is True and not item.seen[1]
                )
                if moved and not item.busy:
                    item.wake.set()
        rest = [
            item
            for batch_id, items in following.items()
            if batch_id not in listed
            for item in items
            if not item.busy and not item.wake.is_set()
        ]
        rest.sort(key=lambda item: item.looked)
        for item in rest[:STRAGGLER_LOOKS]:
            item.wake.set()

    async def summaries(self, wanted: set[str]) -> dict[str, dict[str, Any]]:
        """The list's summaries of the ``wanted`` batches it shows: newest first, page by page until every one
        is found or the pages are older than the oldest of them (ids sort by creation time)."""
        found: dict[str, dict[str, Any]] = {}
        oldest = min(wanted)
        cursor: str | None = None
        for _ in range(LIST_PAGES):
            params = {"limit": "100", "recipe": self.recipe} | ({"cursor": cursor} if cursor else {})
            try:
                response = await request(self.client, "GET", "/v1/batches", params=params, transient_retries=2)
            except GatewayError as exc:
                self.list_failed(exc)
                return found
            self.list_failing_since = None
            page: Any = None
            if response.status_code == 200:
                with contextlib.suppress(ValueError):
                    page = response.json()
            rows = page.get("items") if isinstance(page, dict) else None
            if not isinstance(page, dict) or not isinstance(rows, list):
                return found  # a gateway without the list: every batch is looked at by itself, in turn
            ids = [str(row["id"]) for row in rows if isinstance(row, dict) and isinstance(row.get("id"), str)]
            for row in rows:
                if isinstance(row, dict) and row.get("id") in wanted:
                    found[str(row["id"])] = row
            cursor = page.get("next_cursor") if isinstance(page.get("next_cursor"), str) else None
            if not cursor or not ids or len(found) == len(wanted) or min(ids) <= oldest:
                break
        return found

    def list_failed(self, exc: GatewayError) -> None:
        """The list had no usable answer; after POLL_GIVE_UP_SECONDS of that every unfinished record is an
        error (a re-run resumes them)."""
        now = time.monotonic()
        self.list_failing_since = self.list_failing_since or now
        if now - self.list_failing_since <= POLL_GIVE_UP_SECONDS:
            return
        for items in self.following.values():
            for item in items:
                item.lost = exc.error
                item.wake.set()

    async def submit(self, item: Item) -> dict[str, Any] | None:
        """POST the record; with ``--retry-failed`` a replayed batch that ended without every job succeeding
        (an attempt an earlier run made) is passed over for the next attempt's key."""
        if self.refused is not None:
            self.finish(item, "rejected", self.refused)
            return None
        body = {"record": item.entry.record, "options": self.options}
        for _ in range(MAX_PASSED_OVER + 1):
            response = await request(
                self.client,
                "POST",
                f"/v1/recipes/{quote(self.recipe, safe='')}",
                json=body,
                headers={"Idempotency-Key": item.key},
            )
            if response.status_code >= 400:
                error = error_of(response)
                if response.status_code in (401, 403):
                    self.refused = self.refused or error
                self.finish(item, "rejected", error)
                return None
            try:
                batch = response.json()
            except ValueError:
                batch = None
            if not isinstance(batch, dict) or not isinstance(batch.get("id"), str):
                message = f"HTTP {response.status_code}: no batch"
                self.finish(item, "error", {"code": "bad_response", "message": message})
                return None
            replayed = response.headers.get("Idempotent-Replayed", "").lower() == "true"
            if not (
                self.retry_failed and replayed and batch.get("done") is True and batch.get("status") != "succeeded"
            ):
                break
            item.attempt += 1
        return batch

    def observe(self, item: Item, batch: dict[str, Any]) -> None:
        """Take the batch's latest state (a full one, with its jobs); move the bar by the change in its jobs."""
        item.batch = batch
        jobs = item.jobs()
        succeeded = _count(batch, ("succeeded",))
        if succeeded is None:
            succeeded = sum(1 for j in jobs if _job(j).get("status") == "succeeded")
        item.seen = (succeeded, batch.get("done") is True)
        self.observe_counts(item, batch)

    def observe_counts(self, item: Item, batch: dict[str, Any]) -> None:
        """Move the bar by the change in the batch's job counts (a full batch or a list's summary)."""
        given, terminal = batch.get("total"), _count(batch, TERMINAL_JOB)
        if terminal is None:
            terminal = sum(1 for j in item.jobs() if _job(j).get("status") in TERMINAL_JOB)
        total = given if isinstance(given, int) and not isinstance(given, bool) else len(item.jobs())
        terminal = max(terminal, item.counted[1])  # a summary a moment older than the last look: not backwards
        self.total += total - item.counted[0]
        self.terminal += terminal - item.counted[1]
        item.counted = (total, terminal)
        self.progress.update(self.task, total=self.total, completed=self.terminal)

    async def download_ready(self, item: Item) -> None:
        """Download every succeeded job's images not downloaded yet."""
        for entry in item.jobs():
            job = _job(entry)
            job_id = str(job.get("id", ""))
            if job.get("status") != "succeeded" or job_id in item.files or job_id in item.download_errors:
                continue
            assets = [a for a in job.get("assets") or [] if isinstance(a, dict)]
            files: list[str] = []
            try:
                for index, asset in enumerate(assets):
                    name = asset_file_name(
                        item.stem,
                        str(entry.get("name") or entry.get("role") or "job"),
                        index,
                        len(assets),
                        str(asset.get("format") or "png"),
                    )
                    async with self.reading:
                        await self.download(asset, self.out / name)
                    files.append(name)
            except GatewayError as exc:
                item.download_errors[job_id] = exc.error
                continue
            item.files[job_id] = files

    async def download(self, asset: dict[str, Any], path: Path) -> None:
        expected = str(asset.get("sha256") or "").lower()
        if expected and await asyncio.to_thread(_sha256_of, path) == expected:
            return  # already here from an earlier run
        url = str(asset.get("url") or "")
        if not url:
            raise GatewayError("download_failed", "the asset has no url")
        for attempt in range(1, 3):
            response = await request(self.client, "GET", url)
            if response.status_code != 200:
                error = error_of(response)
                raise GatewayError("download_failed", f"GET {url}: HTTP {response.status_code} {error['message']}")
            data = response.content
            if not expected or hashlib.sha256(data).hexdigest() == expected:
                await asyncio.to_thread(_write_atomically, path, data)
                return
            if attempt == 2:
                raise GatewayError("download_failed", f"GET {url}: the bytes do not match the asset's sha256")

    def outcome(self, item: Item) -> tuple[str, dict[str, Any] | None]:
        jobs = [_job(j) for j in item.jobs()]
        succeeded = [j for j in jobs if j.get("status") == "succeeded"]
        unsucceeded = [j for j in jobs if j.get("status") != "succeeded"]
        first_error = next((j.get("error") for j in unsucceeded if isinstance(j.get("error"), dict)), None)
        if not jobs:
            ok = item.batch is not None and item.batch.get("status") == "succeeded"
            return ("succeeded", None) if ok else ("failed", {"code": "no_jobs", "message": "the batch has no jobs"})
        if not succeeded:
            return "failed", first_error or {"code": "failed", "message": "no job succeeded"}
        if unsucceeded:
            message = f"{len(unsucceeded)} of {len(jobs)} jobs did not succeed"
            if first_error:
                message += f"; first: {first_error.get('code')}: {first_error.get('message')}"
            return "partial", {"code": "partial", "message": message}
        if item.download_errors:
            first = next(iter(item.download_errors.values()))
            return "error", {"code": "download_failed", "message": first["message"]}
        return "succeeded", None

    def finish(self, item: Item, status: str, error: dict[str, Any] | None) -> None:
        if item.status is not None:
            return
        item.status, item.error = status, error
        self.tally[status] += 1
        self.progress.update(
            self.task,
            ok=self.tally["succeeded"],
            failed=self.tally["failed"] + self.tally["partial"] + self.tally["error"],
            rejected=self.tally["rejected"],
        )


def _sha256_of(path: Path) -> str | None:
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path`` and rename it over ``path``."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


# --------------------------------------------------------------------------------------------------------------
# Before and after


async def preflight(client: httpx.AsyncClient, recipe: str) -> dict[str, Any]:
    """Fail fast on a wrong URL or token, an unknown recipe or a gateway without recipes, before any record is sent.
    Answers the recipe (``{name, description, record, schema, roles, styles}``)."""
    try:
        response = await request(client, "GET", f"/v1/recipes/{quote(recipe, safe='')}", transient_retries=2)
    except GatewayError as exc:
        raise UsageProblem(f"cannot reach the gateway at {client.base_url}: {exc.error['message']}") from None
    if response.status_code == 200:
        with contextlib.suppress(ValueError):
            described = response.json()
            if isinstance(described, dict):
                return described
        return {}
    error = error_of(response)
    if response.status_code == 401:
        raise UsageProblem(
            f"the gateway refused the token (401 {error['code']}): {error['message']} Check --token or IMAGEGATE_TOKEN."
        )
    if response.status_code == 403:
        raise UsageProblem(f"the token may not run recipes (403 {error['code']}): {error['message']}")
    if response.status_code in (404, 422) and error["code"] != "not_found":
        names = await _recipe_names(client)
        known = f"; known: {', '.join(names)}" if names else ""
        raise UsageProblem(f"the gateway has no recipe {recipe!r}{known}")
    if response.status_code == 404:
        raise UsageProblem(f"{client.base_url} has no recipes API (GET /v1/recipes/... is 404): is it Imagegate?")
    raise UsageProblem(f"GET /v1/recipes/{recipe} answered {response.status_code} {error['code']}: {error['message']}")


async def _recipe_names(client: httpx.AsyncClient) -> list[str]:
    with contextlib.suppress(GatewayError, ValueError, AttributeError, TypeError):
        response = await request(client, "GET", "/v1/recipes", transient_retries=0)
        if response.status_code == 200:
            return sorted(str(r["name"]) for r in response.json()["items"])
    return []


def record_summary(item: Item) -> dict[str, Any]:
    batch = item.batch or {}
    jobs = []
    for entry in item.jobs():
        job = _job(entry)
        job_id = str(job.get("id", ""))
        error = job.get("error") if isinstance(job.get("error"), dict) else None
        jobs.append(
            {
                "name": entry.get("name"),
                "role": entry.get("role"),
                "job": job.get("id"),
                "status": job.get("status"),
                "error": item.download_errors.get(job_id) or error,
                "files": item.files.get(job_id, []),
            }
        )
    record_id = record_id_of(item.entry.record) if item.entry.record else None
    error = item.error
    if item.status == "invalid":
        error = {"code": "invalid", "message": item.entry.invalid or "invalid"}
    return {
        "line": item.entry.line,
        "record_id": record_id if record_id is not None else batch.get("record_id"),
        "status": item.status,
        "batch": batch.get("id"),
        "key": item.key or None,
        "attempt": item.attempt if item.own_key else None,
        "error": error,
        "jobs": jobs,
        "skipped": batch.get("skipped") or [],  # items the recipe left out (a section type without a template)
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, (json.dumps(summary, ensure_ascii=False, indent=2) + "\n").encode())


def _client(url: str, token: str, concurrency: int) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}", "User-Agent": "imagegate-batch"}
    limits = httpx.Limits(max_connections=2 * concurrency + 2, max_keepalive_connections=2 * concurrency + 2)
    return httpx.AsyncClient(base_url=url, headers=headers, timeout=httpx.Timeout(60.0, connect=10.0), limits=limits)


async def _describe(url: str, token: str, recipe: str) -> dict[str, Any]:
    async with _client(url, token, 1) as client:
        return await preflight(client, recipe)


async def _execute(
    items: list[Item],
    *,
    url: str,
    token: str,
    recipe: str,
    options: dict[str, Any],
    out: Path,
    concurrency: int,
    max_in_flight: int,
    retry_failed: bool,
    poll: float,
    seconds: float,
    progress: Progress,
) -> str:
    """Run every item; answers how the run ended: ``done``, ``timeout`` or ``interrupted``."""
    async with _client(url, token, concurrency) as client:
        run = Run(
            client,
            recipe=recipe,
            options=options,
            out=out,
            concurrency=concurrency,
            poll=poll,
            progress=progress,
            max_in_flight=max_in_flight,
            retry_failed=retry_failed,
        )
        _cancel_on_sigterm()
        try:
            async with asyncio.timeout(seconds):
                await run.run(items)
        except TimeoutError:
            return "timeout"
        except asyncio.CancelledError:  # Ctrl-C: asyncio.run cancels this task; the summary is still written
            return "interrupted"
    return "done"


def _cancel_on_sigterm() -> None:
    """SIGTERM (a CI job's cancel, ``kill``) ends the run like Ctrl-C: cancelled, then the summary is written."""
    if threading.current_thread() is not threading.main_thread():
        return
    task = asyncio.current_task()
    assert task is not None
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # Windows has no add_signal_handler
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


def make_items(
    entries: list[Entry],
    *,
    recipe: str,
    options: dict[str, Any],
    earlier: dict[str, Earlier],
    retry_failed: bool,
) -> list[Item]:
    """The run's items: each record's key and attempt, carried on from an earlier summary (the attempt that
    summary last sent, so that a retried record keeps replaying its latest batch); with ``retry_failed`` a record
    it says ended ``failed`` or ``partial`` gets the next attempt."""
    stems = stems_of(entries)
    items: list[Item] = []
    for entry in entries:
        item = Item(entry=entry, stem=stems.get(entry.line, f"line{entry.line}"))
        if entry.record is None:
            item.status = "invalid"
        else:
            item.own_key = idempotency_key(recipe, entry.record, options)
            before = earlier.get(item.own_key)
            if before is not None:
                item.attempt = before.attempt + (1 if retry_failed and before.status in RETRIED else 0)
        items.append(item)
    return items


def batch(
    file: Annotated[
        str, typer.Argument(help="A .csv or .jsonl/.ndjson file of records, or - for JSON Lines on stdin.")
    ],
    recipe: Annotated[str, typer.Option(help="The recipe to run for each record, e.g. crm.product_images.")],
    token: Annotated[
        str | None, typer.Option(envvar="IMAGEGATE_TOKEN", help="API key of a system with the batch scope.")
    ] = None,
    url: Annotated[str, typer.Option(envvar="IMAGEGATE_URL", help="The gateway's base URL.")] = DEFAULT_URL,
    out: Annotated[Path, typer.Option(help="Where the images and summary.json go.")] = Path("imagegate-out"),
    options: Annotated[
        str | None,
        typer.Option(help='Recipe options, a JSON object or @file.json, e.g. \'{"output_format": "jpeg"}\'.'),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Submissions (and downloads) at once.")] = 4,
    max_in_flight: Annotated[
        int, typer.Option(min=1, help="Records submitted and not finished at most; the next one waits.")
    ] = DEFAULT_MAX_IN_FLIGHT,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed", help="Make the records an earlier run into --out ended failed or partial again."
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds for the whole run.")] = 3 * 3600.0,
    poll: Annotated[float, typer.Option(min=0.05, help="Seconds between looks at the unfinished batches.")] = 1.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run a recipe for every record of FILE against a running gateway and download the images.

    Each CSV row or JSON Lines line is one record, sent as POST /v1/recipes/RECIPE with an Idempotency-Key made from
    the recipe, the record and the options: running the same command again resumes the same batches instead of
    making new ones, and images already in OUT (same sha256) are not downloaded again. --retry-failed makes the
    records that ended failed or partial again (a new key: -r1, -r2, ...).

    CSV: the header names the fields (UTF-8, a BOM is fine); a dotted name nests (style_guide.rules.color_palette);
    a cell starting with [ or { is JSON (features = ["防水","轻便"]); a cell that is a JSON number (4, 2.5) is a
    number where the recipe's schema makes that field a number and not text (count); an empty cell leaves its
    field out; everything else is text. A line that is not a record (bad JSON, not an object, too many cells) is
    reported as invalid with its line number; the run goes on.

    Images: OUT/<record id or line N>_<job name>[_<n>].<format>. Summary: OUT/summary.json (also after Ctrl-C or
    --timeout). Exit code 0 when every record succeeded, 1 when any did not, 2 for a usage error (nothing sent).
    """
    try:
        if not token:
            raise UsageProblem("give --token or set IMAGEGATE_TOKEN (an API key with the batch scope)")
        option_values = parse_options(options)
        source = load_input(file)
        entries = source.entries()  # the file's problems first, before any request
    except UsageProblem as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    url = url.rstrip("/")
    if any(entry.record is not None for entry in entries):
        try:
            described = asyncio.run(_describe(url, token, recipe))
        except UsageProblem as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None  # nothing sent yet: an earlier summary stays as it is
        schema = described.get("schema")
        if source.kind == "csv":  # the recipe's schema says which cells are numbers
            entries = source.entries(schema if isinstance(schema, dict) else None)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot create {out}: {exc.strerror or exc}", highlight=False)
        raise typer.Exit(2) from None
    summary_path = out / "summary.json"
    items = make_items(
        entries, recipe=recipe, options=option_values, earlier=read_earlier(summary_path), retry_failed=retry_failed
    )
    started_at = _now()
    submittable = [item for item in items if item.status is None]
    ended = "done"
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/] "
            "[yellow]{task.fields[rejected]} rejected[/]"
        ),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        disable=quiet,
        transient=False,
    )
    if submittable:
        try:
            with progress:
                ended = asyncio.run(
                    _execute(
                        submittable,
                        url=url,
                        token=token,
                        recipe=recipe,
                        options=option_values,
                        out=out,
                        concurrency=concurrency,
                        max_in_flight=max_in_flight,
                        retry_failed=retry_failed,
                        poll=poll,
                        seconds=timeout,
                        progress=progress,
                    )
                )
        except KeyboardInterrupt:
            ended = "interrupted"
    unfinished = "timeout" if ended == "timeout" else "interrupted"
    for item in items:
        if item.status is None:
            item.status = unfinished
    records = [record_summary(item) for item in items]
    counts = {status: sum(1 for r in records if r["status"] == status) for status in STATUSES}
    summary = {
        "recipe": recipe,
        "url": url,
        "started_at": started_at,
        "finished_at": _now(),
        "ended": ended,
        "records": records,
        "counts": counts,
    }
    write_summary(summary_path, summary)
    _print_counts(counts, summary_path, ended)
    if ended == "interrupted":
        raise typer.Exit(EXIT_INTERRUPTED)
    raise typer.Exit(0 if counts["succeeded"] == len(records) else 1)


def _print_counts(counts: dict[str, int], summary_path: Path, ended: str) -> None:
    console = Console()
    table = Table("status", "records", title=None if ended == "done" else f"run ended: {ended}")
    styles = {"succeeded": "green", "partial": "yellow", "rejected": "yellow", "timeout": "yellow"}
    for status, count in counts.items():
        if count:
            style = styles.get(status, "red")
            table.add_row(f"[{style}]{status}[/]", str(count))
    if not any(counts.values()):
        table.add_row("(no records)", "0")
    table.add_row("[bold]total[/]", f"[bold]{sum(counts.values())}[/]")
    console.print(table)
    console.print(f"summary: {summary_path}", highlight=False, soft_wrap=True)
    if ended != "done" or counts["error"] or counts["timeout"]:
        console.print("Run the same command again to resume (no record is submitted twice).", highlight=False)
    if counts["failed"] or counts["partial"]:
        console.print("Add --retry-failed to make the failed and partial records again.", highlight=False)
