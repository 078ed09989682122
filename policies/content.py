"""Content filter: word lists matched against the final prompt and negative prompt.

Pure logic: the gateway renders templates, calls :meth:`ContentFilter.evaluate` on what would be sent to the
backend, and turns a refusal into its 422 ``content_filtered`` error. See ``docs/content-filter.md``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from types import MappingProxyType

from policies.normalize import Hit, Matcher, term_length

__all__ = [
    "DEFAULT_ACTIONS",
    "MASK",
    "SHIPPED_CATEGORIES",
    "Action",
    "ContentDecision",
    "ContentFilter",
    "ContentRules",
    "shipped_lists",
]


class Action(StrEnum):
    """What a category does when one of its terms matches: refuse the request, or mask the term and go on."""

    block = "block"
    mask = "mask"


SHIPPED_CATEGORIES = ("violence", "sexual", "minors", "hate", "brand")
DEFAULT_ACTIONS: Mapping[str, Action] = MappingProxyType(
    {
        "violence": Action.block,
        "sexual": Action.block,
        "minors": Action.block,
        "hate": Action.block,
        "brand": Action.mask,
    }
)
# A category without an action (a new one from ContentRules.extra) refuses: the safe side.
FALLBACK_ACTION = Action.block
MASK = "***"
MAX_TERM_LENGTH = 100
MAX_TERMS_PER_CATEGORY = 10_000
# Compiled filters kept per base filter, one per distinct rule set (systems share a digest when equal).
RULES_CACHE_SIZE = 128
_CATEGORY_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_ALLOW_FILE = "allow"


def _check_category(name: object) -> str:
    if not isinstance(name, str) or not _CATEGORY_NAME.fullmatch(name):
        raise ValueError(f"category name {name!r} must match ^[a-z][a-z0-9_]{{0,31}}$")
    return name


def _check_terms(where: str, terms: object, *, limit: int | None = MAX_TERMS_PER_CATEGORY) -> tuple[str, ...]:
    # A lone string is a Sequence too: taking it letter by letter would silently list single letters.
    if isinstance(terms, str) or not isinstance(terms, Iterable):
        raise ValueError(f"{where} must be a list of terms, not {type(terms).__name__}")
    checked = tuple(terms)
    if limit is not None and len(checked) > limit:
        raise ValueError(f"{where} has {len(checked)} terms; at most {MAX_TERMS_PER_CATEGORY} are allowed")
    for i, term in enumerate(checked):
        # The position, not the term, goes into the message: it may end up in logs.
        if not isinstance(term, str):
            raise ValueError(f"{where}[{i}] must be a string, not {type(term).__name__}")
        length = term_length(term)
        if not 1 <= length <= MAX_TERM_LENGTH:
            raise ValueError(
                f"{where}[{i}] is {length} characters long after normalisation; allowed: 1..{MAX_TERM_LENGTH}"
            )
    return checked


def _check_action(where: str, action: object) -> Action:
    try:
        return Action(action if isinstance(action, str) else "")
    except ValueError:
        raise ValueError(f"{where} must be one of {', '.join(a.value for a in Action)}, not {action!r}") from None


@dataclass(frozen=True)
class ContentRules:
    """One system's additions to the shipped lists, as an admin edits them.

    ``extra`` maps a category to more terms; a new category name is allowed and refuses by default.
    ``allow`` holds terms that never count as a match: a listed term found inside an occurrence of an allowed
    term is ignored (allow ``shooting star`` and ``shooting`` still refuses on its own; allow ``nike`` and
    Nike is no longer masked). ``actions`` overrides a category's action. Validated on construction
    (``ValueError``); the fields are stored read-only.
    """

    extra: Mapping[str, Sequence[str]] = field(default_factory=dict)
    allow: Sequence[str] = ()
    actions: Mapping[str, Action] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.extra, Mapping):
            raise ValueError("extra must map category names to lists of terms")
        if not isinstance(self.actions, Mapping):
            raise ValueError("actions must map category names to actions")
        extra = {_check_category(k): _check_terms(f"extra[{k!r}]", v) for k, v in self.extra.items()}
        actions = {_check_category(k): _check_action(f"actions[{k!r}]", v) for k, v in self.actions.items()}
        object.__setattr__(self, "extra", MappingProxyType(extra))
        object.__setattr__(self, "allow", _check_terms("allow", self.allow))
        object.__setattr__(self, "actions", MappingProxyType(actions))

    @functools.cached_property
    def digest(self) -> str:
        """A stable digest of the rules: equal rules (in any order) give the same digest."""
        canonical = {
            "extra": {k: sorted(set(v)) for k, v in self.extra.items()},
            "allow": sorted(set(self.allow)),
            "actions": {k: v.value for k, v in self.actions.items()},
        }
        blob = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def __hash__(self) -> int:
        return hash(self.digest)


@dataclass(frozen=True)
class ContentDecision:
    """The outcome of :meth:`ContentFilter.evaluate`. It never holds a matched term.

    ``allowed`` false: ``category`` is the refusing category (the first refusing match by position, the
    prompt before the negative prompt), ``field`` is ``"prompt"`` or ``"negative_prompt"``, and both texts
    are empty, so that a refusal can be logged whole. ``allowed`` true: ``prompt`` and ``negative_prompt``
    are what to send on, with masked terms replaced by ``***``, and ``masked`` names the categories whose
    terms were masked, in order of first appearance.
    """

    allowed: bool
    category: str | None = None
    prompt: str = ""
    negative_prompt: str = ""
    masked: tuple[str, ...] = ()
    field: str | None = None


def _read_terms(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@functools.cache
def shipped_lists() -> tuple[Mapping[str, tuple[str, ...]], tuple[str, ...]]:
    """The shipped word lists (all languages merged) by category, and the shipped allow-list."""
    root = resources.files("policies") / "wordlists"
    found: dict[str, list[str]] = {}
    allow: list[str] = []
    for lang in sorted(root.iterdir(), key=lambda p: p.name):
        if not lang.is_dir():
            continue
        for path in sorted(lang.iterdir(), key=lambda p: p.name):
            if not path.name.endswith(".txt"):
                continue
            name = path.name.removesuffix(".txt")
            terms = _read_terms(path.read_text(encoding="utf-8"))
            if name == _ALLOW_FILE:
                allow.extend(terms)
            else:
                found.setdefault(_check_category(name), []).extend(terms)
    order = [c for c in SHIPPED_CATEGORIES if c in found] + sorted(set(found) - set(SHIPPED_CATEGORIES))
    return MappingProxyType({c: tuple(found[c]) for c in order}), tuple(allow)


class ContentFilter:
    """Word lists by category, compiled once into Aho-Corasick automata, with an action per category.

    ``ContentFilter.default()`` holds the shipped lists; ``with_rules`` adds one system's rules to it.
    Instances are immutable and safe to share between threads.
    """

    def __init__(
        self,
        categories: Mapping[str, Sequence[str]],
        *,
        allow: Sequence[str] = (),
        actions: Mapping[str, Action] | None = None,
    ) -> None:
        # No count limit here: it bounds what one system adds (ContentRules), not shipped plus added terms.
        self._lists = MappingProxyType(
            {_check_category(k): _check_terms(f"categories[{k!r}]", v, limit=None) for k, v in categories.items()}
        )
        self._allow = _check_terms("allow", allow, limit=None)
        given = dict(actions or {})
        unknown = sorted(set(given) - set(self._lists))
        if unknown:
            raise ValueError(f"actions name unknown categories: {', '.join(unknown)}")
        self._actions = {
            name: _check_action(f"actions[{name!r}]", given.get(name, DEFAULT_ACTIONS.get(name, FALLBACK_ACTION)))
            for name in self._lists
        }
        self._names = tuple(self._lists)
        self._blocking = frozenset(i for i, n in enumerate(self._names) if self._actions[n] is Action.block)
        self._matcher = Matcher([self._lists[n] for n in self._names], self._allow)
        self._derived: OrderedDict[str, ContentFilter] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def default(cls) -> ContentFilter:
        """The filter of the shipped lists and default actions, built once per process."""
        return _default_filter()

    @property
    def categories(self) -> tuple[str, ...]:
        """Category names, in the order used to break ties between refusals at the same position."""
        return self._names

    def action(self, category: str) -> Action:
        """The action of ``category`` (``KeyError`` for an unknown one)."""
        return self._actions[category]

    def with_rules(self, rules: ContentRules) -> ContentFilter:
        """This filter plus ``rules`` (extra terms, allow-list, action overrides); compiled once per digest."""
        with self._lock:
            cached = self._derived.get(rules.digest)
            if cached is not None:
                self._derived.move_to_end(rules.digest)
                return cached
        merged = {name: list(terms) for name, terms in self._lists.items()}
        for name in sorted(rules.extra):
            merged.setdefault(name, []).extend(rules.extra[name])
        actions = {**self._actions, **rules.actions}
        built = ContentFilter(merged, allow=(*self._allow, *rules.allow), actions=actions)
        with self._lock:
            self._derived[rules.digest] = built
            while len(self._derived) > RULES_CACHE_SIZE:
                self._derived.popitem(last=False)
        return built

    def evaluate(self, prompt: str, negative_prompt: str = "") -> ContentDecision:
        """Check both texts the same way: refuse on a blocking category, otherwise mask the masking ones."""
        scanned: list[list[Hit]] = []
        for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            hits = self._matcher.hits(text)
            refusing = [h for h in hits if h.category in self._blocking]
            if refusing:
                # Earliest first; at the same start the longer (more specific) term, then category order.
                first = min(refusing, key=lambda h: (h.start, h.start - h.end, h.category))
                return ContentDecision(allowed=False, category=self._names[first.category], field=name)
            scanned.append(hits)
        masked: dict[str, None] = {}
        for hits in scanned:
            for hit in sorted(hits, key=lambda h: h.start):
                masked.setdefault(self._names[hit.category])
        return ContentDecision(
            allowed=True,
            prompt=_mask(prompt, scanned[0]),
            negative_prompt=_mask(negative_prompt, scanned[1]),
            masked=tuple(masked),
        )


@functools.cache
def _default_filter() -> ContentFilter:
    lists, allow = shipped_lists()
    return ContentFilter(lists, allow=allow)


def _mask(text: str, hits: Sequence[Hit]) -> str:
    """Replace each matched span of the original text with ``***``, overlapping spans once."""
    if not hits:
        return text
    spans = sorted((h.start, h.end) for h in hits)
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out: list[str] = []
    pos = 0
    for start, end in merged:
        out.append(text[pos:start])
        out.append(MASK)
        pos = end
    out.append(text[pos:])
    return "".join(out)
