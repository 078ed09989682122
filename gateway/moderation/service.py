"""Content screening of the final prompt and negative prompt, with the caller's own list additions."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy.ext.asyncio import AsyncSession

from gateway.common.time import utcnow
from gateway.errors import ImagegateError, ValidationFailed
from gateway.moderation.models import ContentPolicy
from gateway.moderation.schemas import ContentPolicyRead, ContentPolicyUpdate
from policies.content import Action, ContentDecision, ContentFilter, ContentRules, shipped_lists
from policies.semantic import SemanticCheck


class ContentFiltered(ImagegateError):
    """422 naming the category (and field), never the matched terms or the lists."""

    status_code = 422
    code = "content_filtered"

    def __init__(self, category: str, field: str) -> None:
        super().__init__(
            f"The {field} was refused by the content policy (category: {category}).",
            details={"category": category, "field": field},
        )
        self.category = category


@dataclass(frozen=True)
class Screened:
    prompt: str
    negative_prompt: str
    notes: list[str]


# Categories whose refusal no system may turn into masking.
ALWAYS_BLOCKED = frozenset({"minors"})


def _to_rules(extra: dict[str, list[str]], allow: list[str], actions: dict[str, str]) -> ContentRules:
    return ContentRules(extra=extra, allow=allow, actions={k: Action(v) for k, v in actions.items()})


# Rules of each saved version of a policy, built once (validating and hashing thousands of terms is not free).
# A version is its system and its updated_at, which every save changes.
_RULES: dict[tuple[str, str], ContentRules] = {}


def rules_of(policy: ContentPolicy | None) -> ContentRules:
    if policy is None:
        return ContentRules()
    key = (policy.system_id, policy.updated_at.isoformat())
    rules = _RULES.get(key)
    if rules is None:
        if len(_RULES) >= 256:
            _RULES.clear()
        rules = _RULES[key] = _to_rules(policy.extra, policy.allow, policy.actions)
    return rules


def _checker(policy: ContentPolicy | None) -> ContentFilter:
    return ContentFilter.default().with_rules(rules_of(policy))


def read_policy(system: str, policy: ContentPolicy | None) -> ContentPolicyRead:
    if policy is None:
        return ContentPolicyRead(system=system)
    return ContentPolicyRead.model_validate(
        {"system": system, "extra": policy.extra, "allow": policy.allow, "actions": policy.actions}, strict=False
    )


@lru_cache(maxsize=1)
def _always_blocked() -> ContentFilter:
    lists, _ = shipped_lists()
    return ContentFilter({c: lists[c] for c in ALWAYS_BLOCKED}, actions={c: Action.block for c in ALWAYS_BLOCKED})


def _compile(body: ContentPolicyUpdate) -> None:
    """Validate and compile a policy (CPU work: called in a thread). ValidationFailed names the bad part."""
    for index, term in enumerate(body.allow):
        # An allowed term suppresses the matches inside it: it must not be a way to let these categories through.
        if not _always_blocked().evaluate(term).allowed:
            message = f"An allowed term may not cover an always-blocked category ({', '.join(sorted(ALWAYS_BLOCKED))})."
            raise ValidationFailed(message, details=[{"field": f"allow.{index}", "message": message}])
    ContentFilter.default().with_rules(_to_rules(body.extra, body.allow, dict(body.actions)))


async def get_policy(session: AsyncSession, system_id: str) -> ContentPolicy | None:
    return await session.get(ContentPolicy, system_id, populate_existing=True)


async def screen(
    session: AsyncSession,
    *,
    system_id: str,
    prompt: str,
    negative_prompt: str,
    semantic: SemanticCheck | None = None,
) -> Screened:
    """The text to generate from (masked where a category says so), or ContentFiltered.

    The word lists run first; the optional semantic stage then looks at the (masked) prompt for paraphrases.
    """
    policy = await get_policy(session, system_id)
    # Building a system's rules the first time (after a start or a change) is CPU work: off the event loop.
    checker = await asyncio.to_thread(_checker, policy)
    decision: ContentDecision = checker.evaluate(prompt, negative_prompt)
    if not decision.allowed:
        assert decision.category is not None
        raise ContentFiltered(decision.category, decision.field or "prompt")
    if semantic is not None and semantic.applies_to(decision.prompt):
        match = await asyncio.to_thread(semantic.evaluate, decision.prompt)  # ~10 ms of CPU: off the event loop
        if match.category is not None:
            raise ContentFiltered(match.category, "prompt")
    notes = [f"Terms of the content category {c!r} were masked." for c in decision.masked]
    return Screened(prompt=decision.prompt, negative_prompt=decision.negative_prompt, notes=notes)


async def set_policy(session: AsyncSession, *, system_id: str, body: ContentPolicyUpdate) -> ContentPolicy:
    """Replace the system's additions; refused whole (422) if any part is invalid."""
    weakened = sorted(c for c, action in body.actions.items() if c in ALWAYS_BLOCKED and action != "block")
    if weakened:
        message = f"The category {weakened[0]!r} is always blocked."
        raise ValidationFailed(message, details=[{"field": f"actions.{weakened[0]}", "message": message}])
    try:
        await asyncio.to_thread(_compile, body)  # a bad list fails now, not at the next job
    except ValueError as exc:
        raise ValidationFailed(str(exc), details=[{"field": "body", "message": str(exc)}]) from exc
    policy = await get_policy(session, system_id) or ContentPolicy(system_id=system_id)
    policy.extra = {k: list(v) for k, v in body.extra.items()}
    policy.allow = list(body.allow)
    policy.actions = dict(body.actions)
    policy.updated_at = utcnow()
    session.add(policy)
    await session.flush()
    return policy
