"""Template use cases: resolve what a caller sees, save new versions, render records, load the shipped library.

A caller sees its own private templates and the shared library; a private template shadows a library one of the
same name for its owner only. Another system's private templates do not exist for a caller (404).
"""

from __future__ import annotations

import asyncio
from functools import lru_cache
from importlib import resources
from typing import Any

import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db.engine import transaction
from gateway.errors import Conflict, NotFound, ValidationFailed
from gateway.systems.service import Principal
from gateway.templates import keywords, repository
from gateway.templates.document import Rendered, TemplateDocument, TemplateInvalid, parse
from gateway.templates.models import LIBRARY, TemplateVersion
from gateway.templates.sandbox import PromptEnvironment

log = structlog.get_logger("gateway.templates")
ENV = PromptEnvironment()  # stateless between renders (budgets are per render): one for the process


def invalid(exc: TemplateInvalid) -> ValidationFailed:
    detail: dict[str, Any] = {"field": exc.field, "message": exc.message}
    if exc.line is not None:
        detail["line"] = exc.line
    return ValidationFailed(f"{exc.field}: {exc.message}", details=[detail], code="template_invalid")


def parsed(source: str) -> TemplateDocument:
    try:
        return parse(source, ENV)
    except TemplateInvalid as exc:
        raise invalid(exc) from None


async def resolve(
    session: AsyncSession, *, principal: Principal, name: str, version: int | None = None
) -> TemplateVersion:
    """The caller's private template of this name, else the library's; a given version, else the newest."""
    for owner in (principal.system_id, LIBRARY):
        row = (
            await repository.latest(session, owner, name)
            if version is None
            else await repository.get_version(session, owner, name, version)
        )
        if row is not None:
            return row
        if await repository.latest(session, owner, name) is not None:  # the name is the caller's: no fallback
            break
    raise NotFound(f"No template {name!r}" + (f" version {version}." if version else "."), code="template_not_found")


async def visible(session: AsyncSession, *, principal: Principal) -> list[TemplateVersion]:
    rows = await repository.latest_of_owners(session, [LIBRARY, principal.system_id])
    own = {r.name for r in rows if r.owner_key == principal.system_id}
    return [r for r in rows if r.owner_key != LIBRARY or r.name not in own]


async def save(session: AsyncSession, *, principal: Principal, name: str, source: str) -> tuple[TemplateVersion, bool]:
    """Store ``source`` as the next version of ``name``; returns ``(version, created)``. The same source as an
    existing version of it is not stored again."""
    document = await asyncio.to_thread(parsed, source)
    if document.name != name:
        message = f"the front matter names {document.name!r}, the URL {name!r}"
        raise ValidationFailed(message, details=[{"field": "front_matter.name", "message": message}])
    owner = principal.system_id if document.front.private else LIBRARY
    current = await repository.latest(session, owner, name)
    if current is not None and current.source == source:
        return current, False  # the same text as the newest: nothing new (an older text again is a revert)
    return await _add(session, document, owner=owner, by=principal.system_name, by_system=principal.system_id)


async def _add(
    session: AsyncSession, document: TemplateDocument, *, owner: str, by: str, by_system: str | None
) -> tuple[TemplateVersion, bool]:
    current = await repository.latest(session, owner, document.name)
    row = TemplateVersion(
        owner_key=owner,
        name=document.name,
        version=(current.version + 1) if current else 1,
        source=document.source,
        description=document.front.description,
        record_kind=document.front.record,
        tags=list(document.front.tags),
        created_by=by,
        created_by_system_id=by_system,
    )
    try:
        async with session.begin_nested():
            session.add(row)
    except IntegrityError:
        raise Conflict(
            "Another version of this template was saved at the same moment; send it again.", code="template_conflict"
        ) from None
    return row, True


async def render(row: TemplateVersion, record: dict[str, Any]) -> Rendered:
    """Render a stored version with a record (in a thread: rendering is CPU work, bounded to half a second)."""

    def work() -> Rendered:
        keywords.warm()  # once per process, outside the render's clock (load_shipped warms it at start)
        try:
            return parsed(row.source).render(record, ENV)
        except TemplateInvalid as exc:
            raise invalid(exc) from None

    return await asyncio.to_thread(work)


def shipped_sources() -> list[str]:
    """The shipped library: every ``*.j2`` file in the ``templates`` package, in path order."""
    root = resources.files("templates")
    found: list[str] = []

    def walk(folder: Any) -> None:
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.is_dir():
                walk(entry)
            elif entry.name.endswith(".j2"):
                found.append(entry.read_text(encoding="utf-8"))

    walk(root)
    return found


@lru_cache(maxsize=1)
def _shipped_documents() -> tuple[TemplateDocument, ...]:
    return tuple(parse(source, ENV) for source in shipped_sources())  # a broken shipped file fails the start


async def load_shipped(
    sessionmaker: async_sessionmaker[AsyncSession], read_sessionmaker: async_sessionmaker[AsyncSession] | None = None
) -> int:
    """Add each shipped template whose text is not yet one of its library versions; returns how many were added.

    An edited library template stays; a release that changes a shipped file adds it as the newest version.
    Looks first without writing (the usual start has nothing to add), then adds what is missing in one go.
    """
    await asyncio.to_thread(keywords.warm)  # jieba's dictionary: loaded now, not by the first render that needs it
    documents = _shipped_documents()
    async with (read_sessionmaker or sessionmaker)() as session:  # read-only: no SQLite write lock
        missing = [d for d in documents if await repository.with_source(session, LIBRARY, d.name, d.source) is None]
    if not missing:
        return 0
    try:
        async with transaction(sessionmaker) as session:
            for document in missing:
                if await repository.with_source(session, LIBRARY, document.name, document.source) is None:
                    await _add(session, document, owner=LIBRARY, by="shipped", by_system=None)
    except Conflict:  # another replica loaded them at the same moment
        return 0
    log.info("templates.loaded", added=len(missing))
    return len(missing)
