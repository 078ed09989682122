"""Rendering prompt templates safely: Jinja's ImmutableSandboxedEnvironment, plain-data records, and bounds.

The sandbox stops attribute escapes (``''.__class__``, ``|attr``, unsafe ``format``) but not resource use:
``'a' * 50_000_000``, ``2 ** 100000`` and nested loops all run (../shared/reference/security.md). So this
environment also caps ``*`` and ``**``; rewrites every ``{% for %}`` to draw from one iteration budget per render
(which also checks the clock); refuses the string methods and filters that grow text by a number (``ljust``,
``center``, ``format``, ...); and stops when the output passes ``max_output`` characters.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from gateway.common.text import MAX_RECORD_DEPTH
from gateway.templates.filters import FILTERS

MAX_OUTPUT = 64 * 1024
MAX_SECONDS = 0.5
MAX_ITERATIONS = 10_000
MAX_REPEAT = 10_000  # the longest text or list `*` may build
MAX_EXPONENT = 64

# Methods of str that build text as long as a number says: refused at parse time too (for their names).
_GROWING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "format", "format_map"})
# The only methods a template may call: reading ones on text and mappings. Nothing on bytes, numbers or lists.
_STR_METHODS = frozenset(
    {
        "lower",
        "upper",
        "title",
        "capitalize",
        "strip",
        "lstrip",
        "rstrip",
        "split",
        "startswith",
        "endswith",
        "count",
        "find",
        "isdigit",
        "isalpha",
        "isalnum",
        "isspace",
        "casefold",
    }
)
_DICT_METHODS = frozenset({"get", "items", "keys", "values"})
# Jinja's filters that may stay: each is linear in its input and cannot be told to build more than it reads.
_KEPT_FILTERS = frozenset(
    {
        "abs",
        "capitalize",
        "count",
        "d",
        "default",
        "dictsort",
        "first",
        "float",
        "int",
        "items",
        "join",
        "last",
        "length",
        "list",
        "lower",
        "map",
        "max",
        "min",
        "reject",
        "rejectattr",
        "reverse",
        "select",
        "selectattr",
        "sort",
        "striptags",
        "title",
        "trim",
        "truncate",
        "unique",
        "upper",
        "wordcount",
        "e",
        "escape",
    }
)
MAX_DEPTH = 32  # macro and recursive-loop nesting


class PromptUndefined(StrictUndefined):
    """A missing field: false in ``{% if record.tagline %}`` (optional fields), an error anywhere else."""

    def __bool__(self) -> bool:  # type: ignore[override]  # the parent's never returns: it raises
        return False


class RenderError(Exception):
    """A template that cannot be rendered (syntax, a missing field, a refused operation, a bound passed).

    ``kind`` is one of ``syntax``, ``undefined``, ``unsafe``, ``too_large``, ``too_slow``, ``error``.
    """

    def __init__(self, kind: str, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.line = line


class _Budget:
    """Per-render counters: every loop iteration and ``range`` spends from it, and it watches the clock."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.iterations = 0
        self.depth = 0

    def spend(self, count: int) -> None:
        self.iterations += count
        if self.iterations > MAX_ITERATIONS:
            raise SecurityError(f"the template loops more than {MAX_ITERATIONS} times")
        if time.monotonic() > self.deadline:
            raise _TooSlow


class _TooSlow(Exception):
    pass


_BUDGET: ContextVar[_Budget | None] = ContextVar("template_budget", default=None)


def _budget() -> _Budget:
    budget = _BUDGET.get()
    if budget is None:
        raise SecurityError("templates run only through PromptEnvironment.render")
    return budget


def _iterate(iterable: Iterable[Any]) -> Iterator[Any]:
    """What every ``{% for %}`` loops over after ``check``: the items, paid for one by one."""
    budget = _budget()
    for item in iterable:
        budget.spend(1)
        yield item


def _weight(value: Any, limit: int) -> int:
    """How much a value would print as, roughly (characters and items, nested), counted up to ``limit``."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, list | tuple | dict):
        total = len(value)
        for item in value.values() if isinstance(value, dict) else value:
            total += _weight(item, limit - total)
            if total > limit:
                break
        return total
    return 1


class PromptEnvironment(ImmutableSandboxedEnvironment):
    """The one Jinja environment for prompt templates."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, filters: Mapping[str, Callable[..., Any]] | None = None) -> None:
        super().__init__(undefined=PromptUndefined, autoescape=False, keep_trailing_newline=False)
        self.filters = {name: f for name, f in self.filters.items() if name in _KEPT_FILTERS}
        self.filters["join"] = _bounded_join
        self.filters.update(FILTERS if filters is None else filters)
        # No lipsum, cycler, joiner, dict: a small, plain surface.
        self.globals = {"range": _range, _ITERATE: _iterate}

    def wrap_str_format(self, value: Any) -> None:
        """No ``str.format`` in prompt templates, by any path (``.format``, ``['format']``): a width can be huge."""
        return None

    def format_string(self, *args: Any, **kwargs: Any) -> str:
        raise SecurityError("str.format is not available in templates")

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if callable(value):  # methods: a short allowlist (records are plain data; nothing else has methods)
            allowed = _STR_METHODS if isinstance(obj, str) else _DICT_METHODS if isinstance(obj, dict) else ()
            if attr not in allowed:
                return False
        return super().is_safe_attribute(obj, attr, value)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Every call (macros, ``loop(...)``, ``caller()``, methods) spends from the budget and counts its depth."""
        budget = _budget()
        budget.spend(1)
        budget.depth += 1
        try:
            if budget.depth > MAX_DEPTH:
                raise SecurityError(f"calls are nested deeper than {MAX_DEPTH}")
            return super().call(__context, __obj, *args, **kwargs)
        finally:
            budget.depth -= 1

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _budget().spend(0)  # the clock
        if operator == "%":
            if isinstance(left, str | bytes):
                raise SecurityError("%-formatting is not available in templates")
            return left % right
        if operator == "+":
            if (
                not isinstance(left, int | float)
                and _weight(left, MAX_OUTPUT) + _weight(right, MAX_OUTPUT) > MAX_OUTPUT
            ):
                raise SecurityError(f"joined values are limited to {MAX_OUTPUT} characters")
            return left + right
        if operator == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise SecurityError(f"exponents are limited to {MAX_EXPONENT}")
            if isinstance(left, int) and isinstance(right, int) and left.bit_length() * abs(right) > 128:
                raise SecurityError("numbers are limited to 30 digits")
            return left**right
        # "*": text or lists repeated by a number must stay small
        for seq, count in ((left, right), (right, left)):
            repeated = isinstance(seq, str | bytes | list | tuple) and isinstance(count, int)
            if repeated and _weight(seq, MAX_REPEAT) * count > MAX_REPEAT:
                raise SecurityError(f"repeating text or a list is limited to {MAX_REPEAT} items")
        numbers = isinstance(left, int | float) and isinstance(right, int | float)
        if numbers and math.log10(abs(left) + 1) + math.log10(abs(right) + 1) > 30:
            raise SecurityError("numbers are limited to 30 digits")
        return left * right

    def check(self, source: str) -> nodes.Template:
        """Parse and validate a template without rendering it; returns the tree ``render`` compiles.

        Refused: syntax errors, names and attributes starting with ``_``, and templates that import, include or
        extend others (a prompt template is one text). Every loop is rewritten to spend from the render budget.
        """
        try:
            tree = self.parse(source)
        except TemplateSyntaxError as exc:
            raise RenderError("syntax", exc.message or "invalid template syntax", exc.lineno) from None
        except RecursionError:
            raise RenderError("syntax", "the template nests too deeply") from None
        for concat in tree.find_all(nodes.Concat):
            # `~` builds text without a bound (doubling in a macro reaches gigabytes): print the parts instead.
            raise RenderError(
                "unsafe", "the ~ operator is not available; print the parts one after another", concat.lineno
            )
        for getattr_node in tree.find_all(nodes.Getattr):
            _check_name(getattr_node.attr, getattr_node.lineno)
            if getattr_node.attr in _GROWING_METHODS:
                # Refused here too, not only at run time: Jinja folds constant expressions while compiling.
                raise RenderError("unsafe", f"the method {getattr_node.attr!r} is not allowed", getattr_node.lineno)
        for name_node in tree.find_all(nodes.Name):
            _check_name(name_node.name, name_node.lineno)
        for node in tree.find_all((nodes.Import, nodes.FromImport, nodes.Include, nodes.Extends)):
            raise RenderError("unsafe", "templates cannot import, include or extend others", node.lineno)
        for loop in tree.find_all(nodes.For):
            budgeted = nodes.Call(nodes.Name(_ITERATE, "load"), [loop.iter], [], None, None, lineno=loop.lineno)
            loop.iter = budgeted
        try:
            self.compile(tree)  # unknown filters and tests fail now, at save time, not at every render
        except TemplateSyntaxError as exc:
            raise RenderError("syntax", exc.message or "invalid template", exc.lineno) from None
        except RecursionError:
            raise RenderError("syntax", "the template nests too deeply") from None
        return tree

    def render(self, source: str, data: Mapping[str, Any], *, max_output: int = MAX_OUTPUT) -> str:
        """Render ``source`` with plain data (dicts, lists, str, int, float, bool, None only)."""
        tree = self.check(source)
        require_plain(data)
        budget = _Budget(time.monotonic() + MAX_SECONDS)
        token = _BUDGET.set(budget)  # per render, also when renders run at once in several threads
        try:
            template = self.from_string(tree)
            parts: list[str] = []
            size = 0
            for chunk in template.generate(**data):
                size += len(chunk)
                if size > max_output:
                    raise RenderError("too_large", f"the rendered text passes {max_output} characters")
                budget.spend(0)  # the clock, between output chunks
                parts.append(chunk)
            return "".join(parts)
        except RenderError:
            raise
        except _TooSlow:
            raise RenderError("too_slow", f"rendering took longer than {MAX_SECONDS} s") from None
        except SecurityError as exc:
            raise RenderError("unsafe", str(exc)) from None
        except TemplateError as exc:
            kind = "undefined" if type(exc).__name__ == "UndefinedError" else "error"
            raise RenderError(kind, exc.message or str(exc)) from None
        except (RecursionError, MemoryError):
            raise RenderError("unsafe", "the template needs more resources than a prompt may") from None
        except Exception as exc:  # any other failure of the template's own logic (a filter given odd input)
            raise RenderError("error", f"{type(exc).__name__}: {str(exc)[:200]}") from None
        finally:
            _BUDGET.reset(token)


_ITERATE = "iterate_within_budget"  # not startable with "_": user templates cannot name it (check refuses them)


def _bounded_join(value: Any, d: str = "", attribute: Any = None) -> str:
    """Jinja's join, refusing results longer than a prompt may be (before building them)."""
    items = list(value)
    if _weight(items, MAX_OUTPUT) + len(str(d)) * len(items) > MAX_OUTPUT:
        raise SecurityError(f"joined text is limited to {MAX_OUTPUT} characters")
    if attribute is not None:
        items = [item.get(attribute) if isinstance(item, dict) else item for item in items]
    return str(d).join(str(item) for item in items)


def _check_name(name: str, line: int) -> None:
    if name.startswith("_") or name == _ITERATE:
        raise RenderError("unsafe", f"the name {name!r} is not allowed", line)


def _range(*args: int) -> range:
    numbers = range(*args)
    budget = _budget()
    # Loops pay per item; a range that could never be paid for (range(10**9)|list) is refused before it is built.
    if budget.iterations + len(numbers) > MAX_ITERATIONS:
        raise SecurityError(f"the template loops more than {MAX_ITERATIONS} times")
    return numbers


_PLAIN = (str, int, float, bool, type(None))


def require_plain(value: Any, depth: int = 0) -> None:
    """Records are data, never objects with methods to call: anything else is refused before rendering."""
    if depth > MAX_RECORD_DEPTH + 2:  # records are bounded on the way in; this is the render's own backstop
        raise RenderError("unsafe", "the record is nested too deeply")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise RenderError("unsafe", "record keys must be strings")
            require_plain(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            require_plain(item, depth + 1)
    elif not isinstance(value, _PLAIN):
        raise RenderError("unsafe", f"records hold plain data only, not {type(value).__name__}")
