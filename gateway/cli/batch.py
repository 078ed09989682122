"""``imagegate batch FILE --recipe NAME``: a client of a running gateway that runs a recipe over every record of a
CSV or JSON Lines file, follows the batches, downloads the images and writes ``summary.json``.

It needs no database: it talks HTTP to ``--url`` with ``--token``. Re-running the same command resumes: every
submission carries an ``Idempotency-Key`` derived from the recipe, the record and the options, so the gateway answers
the batch it already has, and files already on disk with the right sha256 are not downloaded again.
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

_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
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


def parse_cell(cell: str) -> tuple[bool, Any]:
    """A CSV cell's value: ``(False, None)`` when empty (the field is left out), JSON for ``[...]``/``{...}`` and
    JSON numbers, else the text. Raises ValueError for a ``[``/``{`` cell that is not JSON."""
    if not cell.strip():
        return False, None
    if cell[0] in "[{":
        try:
            return True, loads(cell)
        except ValueError as exc:
            raise ValueError(f"invalid JSON ({exc})") from None
    if _JSON_NUMBER.fullmatch(cell):
        with contextlib.suppress(ValueError):
            return True, loads(cell)
        # 1e999: keep the text rather than an unrepresentable number
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


def read_csv(text: str) -> list[Entry]:
    """Rows of a CSV text; the first non-empty row is the header. Line numbers are the file's (header = 1)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    entries: list[Entry] = []
    paths: list[tuple[str, ...]] | None = None
    header: list[str] = []
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
            continue
        if len(row) > len(paths):
            entries.append(Entry(line, invalid=f"{len(row)} cells, but the header has {len(paths)} columns"))
            continue
        record: dict[str, Any] = {}
        problem = None
        for name, path, cell in zip(header, paths, row, strict=False):
            try:
                present, value = parse_cell(cell)
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


def read_input(file: str, stdin: TextIO | None = None) -> list[Entry]:
    """The entries of FILE: ``.csv`` is CSV, ``.jsonl``/``.ndjson`` JSON Lines, ``-`` JSON Lines from stdin."""
    if file == "-":
        stream = stdin if stdin is not None else sys.stdin
        buffer = getattr(stream, "buffer", None)
        text = _decode(buffer.read(), "stdin") if buffer is not None else stream.read().removeprefix("\ufeff")
        return read_jsonl(text)
    path = Path(file)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise UsageProblem(f"{file}: give a .csv, .jsonl or .ndjson file (or - for JSON Lines on stdin)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageProblem(f"cannot read {file}: {exc.strerror or exc}") from None
    text = _decode(data, file)
    return read_csv(text) if suffix == ".csv" else read_jsonl(text)


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
    key: str = ""
    status: str | None = None
    error: dict[str, Any] | None = None
    batch: dict[str, Any] | None = None
    files: dict[str, list[str]] = field(default_factory=dict)  # job id -> files, once downloaded
    download_errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    counted: tuple[int, int] = (0, 0)  # (jobs, terminal jobs) as last added to the progress bar

    def jobs(self) -> list[dict[str, Any]]:
        jobs = self.batch.get("jobs") if self.batch else None
        return [j for j in jobs if isinstance(j, dict)] if isinstance(jobs, list) else []


def _job(entry: dict[str, Any]) -> dict[str, Any]:
    job = entry.get("job")
    return job if isinstance(job, dict) else {}


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
    ) -> None:
        self.client = client
        self.recipe = recipe
        self.options = options
        self.out = out
        self.poll = poll
        self.submitting = asyncio.Semaphore(concurrency)
        self.reading = asyncio.Semaphore(concurrency)  # polls and downloads
        self.progress = progress
        self.task: TaskID = progress.add_task("jobs", total=None, ok=0, failed=0, rejected=0)
        self.total = self.terminal = 0
        self.tally: Counter[str] = Counter()
        self.refused: dict[str, Any] | None = None  # a 401/403: the other records are not sent

    async def run(self, items: list[Item]) -> None:
        async with asyncio.TaskGroup() as group:
            for item in items:
                group.create_task(self.process(item))

    async def process(self, item: Item) -> None:
        assert item.entry.record is not None
        try:
            async with self.submitting:
                batch = await self.submit(item)
            if batch is None:
                return
            self.observe(item, batch)
            await self.download_ready(item)
            failing_since: float | None = None
            while not batch.get("done"):
                await asyncio.sleep(self.poll)
                try:
                    async with self.reading:
                        response = await request(self.client, "GET", f"/v1/batches/{quote(str(batch['id']))}")
                except GatewayError as exc:
                    failing_since = failing_since or time.monotonic()
                    if time.monotonic() - failing_since > POLL_GIVE_UP_SECONDS:
                        self.finish(item, "error", exc.error)
                        return
                    continue
                if response.status_code != 200:
                    self.finish(item, "error", error_of(response))
                    return
                failing_since = None
                batch = response.json()
                self.observe(item, batch)
                await self.download_ready(item)
            self.finish(item, *self.outcome(item))
        except GatewayError as exc:
            self.finish(item, "error", exc.error)
        except Exception as exc:  # an answer this client did not expect: that record fails, the run goes on
            self.finish(item, "error", {"code": "unexpected", "message": f"{type(exc).__name__}: {exc}"})

    async def submit(self, item: Item) -> dict[str, Any] | None:
        if self.refused is not None:
            self.finish(item, "rejected", self.refused)
            return None
        body = {"record": item.entry.record, "options": self.options}
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
            self.finish(item, "error", {"code": "bad_response", "message": f"HTTP {response.status_code}: no batch"})
            return None
        return batch

    def observe(self, item: Item, batch: dict[str, Any]) -> None:
        """Take the batch's latest state; move the bar by the change in its jobs."""
        item.batch = batch
        jobs = item.jobs()
        given = batch.get("total")
        total = given if isinstance(given, int) else len(jobs)
        terminal = sum(1 for j in jobs if _job(j).get("status") in TERMINAL_JOB)
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


async def preflight(client: httpx.AsyncClient, recipe: str) -> None:
    """Fail fast on a wrong URL or token, an unknown recipe or a gateway without recipes, before any record is sent."""
    try:
        response = await request(client, "GET", f"/v1/recipes/{quote(recipe, safe='')}", transient_retries=2)
    except GatewayError as exc:
        raise UsageProblem(f"cannot reach the gateway at {client.base_url}: {exc.error['message']}") from None
    if response.status_code == 200:
        return
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
        "error": error,
        "jobs": jobs,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, (json.dumps(summary, ensure_ascii=False, indent=2) + "\n").encode())


async def _execute(
    items: list[Item],
    *,
    url: str,
    token: str,
    recipe: str,
    options: dict[str, Any],
    out: Path,
    concurrency: int,
    poll: float,
    seconds: float,
    progress: Progress,
) -> str:
    """Run every item; answers how the run ended: ``done``, ``timeout`` or ``interrupted``."""
    headers = {"Authorization": f"Bearer {token}", "User-Agent": "imagegate-batch"}
    limits = httpx.Limits(max_connections=2 * concurrency + 2, max_keepalive_connections=2 * concurrency + 2)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=httpx.Timeout(60.0, connect=10.0), limits=limits
    ) as client:
        await preflight(client, recipe)
        run = Run(
            client, recipe=recipe, options=options, out=out, concurrency=concurrency, poll=poll, progress=progress
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
    timeout: Annotated[float, typer.Option(min=1, help="Seconds for the whole run.")] = 3 * 3600.0,
    poll: Annotated[float, typer.Option(min=0.05, help="Seconds between looks at an unfinished batch.")] = 1.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run a recipe for every record of FILE against a running gateway and download the images.

    Each CSV row or JSON Lines line is one record, sent as POST /v1/recipes/RECIPE with an Idempotency-Key made from
    the recipe, the record and the options: running the same command again resumes the same batches instead of
    making new ones, and images already in OUT (same sha256) are not downloaded again.

    CSV: the header names the fields (UTF-8, a BOM is fine); a dotted name nests (style_guide.rules.color_palette);
    a cell starting with [ or { is JSON (features = ["防水","轻便"]); a cell that is a JSON number (4, 2.5) is a
    number; an empty cell leaves its field out; everything else is text. A line that is not a record (bad JSON,
    not an object, too many cells) is reported as invalid with its line number; the run goes on.

    Images: OUT/<record id or line N>_<job name>[_<n>].<format>. Summary: OUT/summary.json (also after Ctrl-C or
    --timeout). Exit code 0 when every record succeeded, 1 when any did not, 2 for a usage error (nothing sent).
    """
    try:
        if not token:
            raise UsageProblem("give --token or set IMAGEGATE_TOKEN (an API key with the batch scope)")
        option_values = parse_options(options)
        entries = read_input(file)
    except UsageProblem as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    url = url.rstrip("/")
    stems = stems_of(entries)
    items = [
        Item(
            entry=entry,
            stem=stems.get(entry.line, f"line{entry.line}"),
            key=idempotency_key(recipe, entry.record, option_values) if entry.record is not None else "",
            status="invalid" if entry.record is None else None,
        )
        for entry in entries
    ]
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
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot create {out}: {exc.strerror or exc}", highlight=False)
        raise typer.Exit(2) from None
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
                        poll=poll,
                        seconds=timeout,
                        progress=progress,
                    )
                )
        except UsageProblem as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
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
    summary_path = out / "summary.json"
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
