"""A template document: YAML front matter (parameters, the record it expects) and a Jinja prompt text.

```
---
name: crm.product_main
record: product
schema: {type: object, required: [name], properties: {name: {type: string, maxLength: 200}}}
negative_prompt: "blurry, text, watermark"
width: 1200
height: 1200
tags: [product, main]
data: {scenes: {electronics: a modern home office}}
---
Professional product photo of {{ product.name }} on a clean white background.
```

The prompt (the text after the front matter) and ``negative_prompt`` are Jinja, rendered with the record (as
``record`` and under its kind's name) and the constants in ``data``. Parameters are the job's own, with its bounds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError
from jsonschema.exceptions import ValidationError as SchemaViolation
from jsonschema_specifications import REGISTRY as SPECIFICATIONS
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from referencing import Registry
from referencing.exceptions import NoSuchResource
from referencing.exceptions import Unresolvable as ReferencingError

from gateway.templates.sandbox import PromptEnvironment, RenderError, require_plain

_FRONT = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)(.*)\Z", re.DOTALL)
MAX_SOURCE = 64 * 1024
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$", max_length=100)]
Dimension = Annotated[int, Field(ge=64, le=2048)]  # any size: generated at multiples of 8, then fitted


def _no_retrieval(uri: str) -> Any:
    raise NoSuchResource(ref=uri)  # type: ignore[call-arg]  # an attrs class: its fields are its arguments


class _NoAliases(yaml.SafeLoader):
    """Safe YAML without anchors and aliases: an alias bomb expands exponentially when walked."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("anchors and aliases are not allowed")
        return super().compose_node(parent, index)


class TemplateInvalid(Exception):
    """The document cannot be a template: ``field`` names where (``front_matter.width``, ``prompt``, ...)."""

    def __init__(self, field: str, message: str, line: int | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.line = line


class FrontMatter(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name
    description: Annotated[str, Field(max_length=500)] = ""
    private: bool = Field(default=False, description="Only the writing system sees and uses it (else: the library)")
    record: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$", description="The record kind, e.g. product")]
    schema_: dict[str, Any] = Field(alias="schema", default_factory=lambda: {"type": "object"})
    negative_prompt: Annotated[str, Field(max_length=4000)] = ""
    width: Dimension = 1024
    height: Dimension = 1024
    steps: Annotated[int, Field(ge=1, le=150)] = 30
    guidance_scale: Annotated[float, Field(ge=0, le=30)] = 7.0
    n: Annotated[int, Field(ge=1, le=8)] = 1
    model: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    output_format: Literal["png", "jpeg", "webp"] = "png"
    tags: Annotated[list[Annotated[str, Field(min_length=1, max_length=50)]], Field(max_length=20)] = []
    data: dict[str, Any] = Field(default_factory=dict, description="Constants for the template (e.g. scene tables)")


@dataclass(frozen=True)
class Rendered:
    prompt: str
    negative_prompt: str
    parameters: dict[str, Any]
    tags: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TemplateDocument:
    source: str
    front: FrontMatter
    body: str

    @property
    def name(self) -> str:
        return self.front.name

    def validate_record(self, record: Any) -> None:
        """Raise TemplateInvalid naming a field of ``record`` the schema refuses (as ``record.<path>``)."""
        first = first_schema_error(self.front.schema_, record)
        if first is not None:
            raise TemplateInvalid(*first)

    def render(self, record: dict[str, Any], env: PromptEnvironment) -> Rendered:
        self.validate_record(record)
        data = {**self.front.data, "record": record, self.front.record: record}
        try:
            # Line breaks in a template are for its authors: prompts get single spaces.
            prompt = " ".join(env.render(self.body, data).split())
            negative = " ".join(env.render(self.front.negative_prompt, data).split())
        except RenderError as exc:
            raise TemplateInvalid("template", exc.message, exc.line) from None
        if not prompt:
            raise TemplateInvalid("prompt", "the template rendered an empty prompt for this record")
        parameters = self.front.model_dump(
            include={"width", "height", "steps", "guidance_scale", "n", "model", "output_format"}
        )
        return Rendered(prompt=prompt, negative_prompt=negative, parameters=parameters, tags=list(self.front.tags))


# No network, no files: a `$ref` may only point inside the schema itself (a remote ref would be an SSRF).
_REGISTRY: Registry[Any] = Registry(retrieve=_no_retrieval).combine(SPECIFICATIONS)  # type: ignore[call-arg]
# Keywords that cost more than linear time on a record: regular expressions (ReDoS) and dynamic references.
_REFUSED_KEYWORDS = frozenset({"pattern", "patternProperties", "$dynamicRef", "$recursiveRef"})
MAX_BRANCHES = 24  # $ref + anyOf/oneOf/allOf/if branches in one schema: bounds validation time


def _canonical(value: Any) -> Any:
    """A hashable form of JSON data equal exactly when JSON Schema calls the values equal (1 == 1.0, true != 1)."""
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, dict):
        return ("o", frozenset((key, _canonical(item)) for key, item in value.items()))
    if isinstance(value, list | tuple):
        return ("a", tuple(_canonical(item) for item in value))
    return ("v", value)  # numbers compare across int and float; strings; None


def _unique_items(validator: Any, unique: Any, instance: Any, schema: dict[str, Any]) -> Iterator[SchemaViolation]:
    # jsonschema's own check compares objects pairwise (quadratic: 5,000 objects take half a minute); one set.
    if unique and validator.is_type(instance, "array"):
        seen: set[Any] = set()
        for item in instance:
            key = _canonical(item)
            if key in seen:
                yield SchemaViolation("has non-unique elements")
                return
            seen.add(key)


_Validator = validators.extend(Draft202012Validator, {"uniqueItems": _unique_items})


def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    return _Validator(schema, registry=_REGISTRY)


def first_schema_error(schema: dict[str, Any], record: Any) -> tuple[str, str] | None:
    """``(field, message)`` of the first thing ``schema`` refuses in ``record`` (``record.<path>``), or None."""
    try:
        first = next(_validator(schema).iter_errors(record), None)  # one error, not all of them
    except (RecursionError, ReferencingError):
        raise TemplateInvalid("front_matter.schema", "the schema's references cannot be resolved") from None
    if first is None:
        return None
    parts = [str(p) for p in first.absolute_path]
    if first.validator == "required" and isinstance(first.instance, dict):  # name the missing field itself
        missing = [name for name in first.validator_value if name not in first.instance]
        if missing:
            return ".".join(["record", *parts, str(missing[0])]), "is required"
    message, quoted = first.message, repr(first.instance)
    if len(quoted) > 60 and message.startswith(quoted):  # "'xxxx…' is too long": the reason, not the value
        message = "the value" + message[len(quoted) :]
    return ".".join(["record", *parts]), message[:300]


def check_schema(schema: Any) -> None:
    """Refuse a schema that reaches outside itself, uses regular expressions or branches without bound."""
    branches = 0

    def walk(node: Any, depth: int) -> None:
        nonlocal branches
        if depth > 20:
            raise TemplateInvalid("front_matter.schema", "the schema nests too deeply")
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _REFUSED_KEYWORDS:
                    raise TemplateInvalid("front_matter.schema", f"the keyword {key!r} is not available")
                if key == "$ref" and not (isinstance(value, str) and value.startswith("#")):
                    raise TemplateInvalid("front_matter.schema", "$ref may only point inside the schema (#/...)")
                if key == "$ref" or key in ("anyOf", "oneOf", "allOf", "if"):
                    branches += len(value) if isinstance(value, list) else 1
                walk(value, depth + 1)
        elif isinstance(node, list):
            for item in node:
                walk(item, depth + 1)

    walk(schema, 0)
    if branches > MAX_BRANCHES:
        raise TemplateInvalid("front_matter.schema", f"at most {MAX_BRANCHES} $ref and combinator branches")
    try:
        Draft202012Validator.check_schema(schema)
        next(_validator(schema).iter_errors({}), None)  # resolves every reference it meets: cycles, dangling refs
    except SchemaError as exc:
        raise TemplateInvalid("front_matter.schema", f"not a valid JSON schema: {exc.message[:200]}") from None
    except (RecursionError, ReferencingError):
        raise TemplateInvalid("front_matter.schema", "the schema's references cannot be resolved") from None


def parse(source: str, env: PromptEnvironment) -> TemplateDocument:
    """Parse and check a document (front matter, schema, Jinja) without rendering it; TemplateInvalid if wrong."""
    if len(source) > MAX_SOURCE:
        raise TemplateInvalid("source", f"a template is at most {MAX_SOURCE} characters")
    match = _FRONT.match(source)
    if match is None:
        raise TemplateInvalid("source", "expected front matter between two '---' lines, then the prompt text")
    try:
        raw = yaml.load(match.group(1), Loader=_NoAliases)  # noqa: S506 - a SafeLoader, minus aliases
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = str(exc) if "aliases" in str(exc) else "not valid YAML"
        raise TemplateInvalid("front_matter", reason, mark.line + 2 if mark else None) from None
    except (ValueError, RecursionError):  # a number of thousands of digits, nesting thousands deep
        raise TemplateInvalid("front_matter", "not YAML a template can use (too large or too deep)") from None
    if not isinstance(raw, dict):
        raise TemplateInvalid("front_matter", "expected a mapping of settings")
    try:
        front = FrontMatter.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "front_matter"
        raise TemplateInvalid(f"front_matter.{where}", str(error["msg"])) from None
    check_schema(front.schema_)
    try:
        require_plain(front.data)
    except RenderError as exc:
        raise TemplateInvalid("front_matter.data", exc.message) from None
    body = match.group(2)
    for part, text in (("prompt", body), ("front_matter.negative_prompt", front.negative_prompt)):
        try:
            env.check(text)
        except RenderError as exc:
            raise TemplateInvalid(part, exc.message, exc.line) from None
    if not body.strip():
        raise TemplateInvalid("prompt", "the prompt text after the front matter is empty")
    return TemplateDocument(source=source, front=front, body=body)
