"""A recipe: one business record in, a batch of jobs out, each job rendered from a template.

Recipes are data (``templates/recipes/*.yaml``), shipped with the gateway; which jobs a record makes, their
roles, counts and tags are written there, and every size, prompt and scene lives in the templates they name.

```
name: crm.product_images
record: product                   # the record's kind: templates see it under this name
schema: {...}                     # JSON schema of the record (422 with the field)
roles:
  - role: main                    # one job from crm.product_main
    template: crm.product_main
  - role: detail                  # one job per feature, at most 3: the feature joins the record as `feature`
    template: crm.product_detail
    each: features
    as: feature
    limit: 3
styles:                           # options.styles = [main, social]: one job per style instead of the roles
  template: crm.poster_{style}
```

``{field}`` in ``role``, ``template`` and ``tags`` is replaced by the item's field (for ``each``) or the record's
(dotted paths reach into objects). A template named by a placeholder that does not exist is skipped when
``skip_missing`` is set (a report section without an illustration template), else the request is refused.
``repeat: count`` makes ``count`` jobs (the record's field) with distinct seeds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.templates.document import TemplateInvalid, check_schema, first_schema_error

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$", max_length=100)]
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)\}")
_NAME_PART = re.compile(r"^[a-z][a-z0-9_]{0,49}$")
_SEPARATORS = re.compile(r"[\s-]+")
MAX_JOBS = 64  # one record makes at most this many jobs


class RoleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    role: Annotated[str, Field(min_length=1, max_length=100)]
    template: Annotated[str, Field(min_length=1, max_length=100)]
    each: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_.]*$")] | None = Field(
        default=None, description="A list in the record: one job per item"
    )
    as_: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$")] | None = Field(
        default=None, alias="as", description="The key the item joins the record under"
    )
    limit: Annotated[int, Field(ge=1, le=MAX_JOBS)] | None = None
    repeat: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_.]*$")] | None = Field(
        default=None, description="An integer field of the record: that many jobs, with distinct seeds"
    )
    skip_missing: bool = False
    tags: Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]], Field(max_length=20)] = []

    @model_validator(mode="after")
    def _one_multiplier(self) -> RoleSpec:
        if self.each is not None and self.repeat is not None:
            raise ValueError("a role has `each` or `repeat`, not both")
        if (self.each is None) != (self.as_ is None):
            raise ValueError("`each` and `as` go together")
        return self


class StylesSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    template: Annotated[str, Field(min_length=1, max_length=100)]
    tags: Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]], Field(max_length=20)] = []
    default: list[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,49}$")]] = []


class RecipeDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: Name
    description: Annotated[str, Field(max_length=1000)] = ""
    record: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
    schema_: dict[str, Any] = Field(alias="schema", default_factory=lambda: {"type": "object"})
    roles: Annotated[list[RoleSpec], Field(min_length=1, max_length=20)]
    styles: StylesSpec | None = None

    def validate_record(self, record: dict[str, Any]) -> None:
        first = first_schema_error(self.schema_, record)
        if first is not None:
            raise TemplateInvalid(*first)


@dataclass(frozen=True)
class Planned:
    """One job a recipe makes from a record, before its template is rendered."""

    role: str
    index: int  # within its role
    template: str
    record: dict[str, Any]
    tags: list[str]
    skip_missing: bool
    seed_offset: int | None  # repeat roles: distinct seeds from one base


class RecipeError(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def path_value(data: Any, path: str) -> Any:
    node = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def fill(text: str, *scopes: dict[str, Any], name_part: bool = False) -> str:
    """``{field}`` replaced by the first scope's value at that path (plain text; a missing value is empty).

    With ``name_part`` (template names) a value is lower-cased with spaces and hyphens as ``_`` (``Sales
    Analysis`` names ``sales_analysis``) and must then be one name part, else it becomes ``!``, which no template
    name contains: ``oa.{type}`` can never reach outside ``oa.``.
    """

    def value(match: re.Match[str]) -> str:
        for scope in scopes:
            found = path_value(scope, match.group(1))
            if found is not None and not isinstance(found, dict | list):
                if name_part:
                    if not isinstance(found, str) or not found.isascii():  # no `true`, no Kelvin sign as `k`
                        return "!"
                    text = role_name(found)
                    return text if _NAME_PART.match(text) else "!"
                return str(found)
        return ""

    return _PLACEHOLDER.sub(value, text)


def _naming_field(role: str, template: str) -> str | None:
    """The field of a role that is one placeholder naming its template too (``{type}``, ``oa.{type}``), or None."""
    fields = _PLACEHOLDER.findall(role)
    return fields[0] if len(fields) == 1 and role == "{" + fields[0] + "}" and role in template else None


def _role(spec: RoleSpec, *scopes: dict[str, Any]) -> str:
    """The role's name; a role named by the value that also names its template is that template name part
    (a section type ``Sales Analysis`` is the role ``sales_analysis`` of template ``oa.sales_analysis``)."""
    if _naming_field(spec.role, spec.template) is not None:
        name = fill(spec.role, *scopes, name_part=True)
        if name and name != "!":
            return name
    return " ".join(fill(spec.role, *scopes).split())[:100] or "job"


def _template(text: str, *scopes: dict[str, Any]) -> str:
    return fill(text, *scopes, name_part=True)


def plan(recipe: RecipeDocument, record: dict[str, Any], styles: list[str] | None) -> list[Planned]:
    """The jobs ``record`` makes, in order: roles as listed, items in record order."""
    planned: list[Planned] = []
    if styles is not None:
        if recipe.styles is None:
            raise RecipeError("options.styles", f"the recipe {recipe.name} has no styles")
        for style in styles:
            scope = {**record, "style": style}
            planned.append(
                Planned(
                    role=style,
                    index=0,
                    template=_template(recipe.styles.template, scope),
                    record={**record, "style": style},
                    tags=[fill(t, scope) for t in recipe.styles.tags],
                    skip_missing=False,
                    seed_offset=None,
                )
            )
        return planned
    for spec in recipe.roles:
        if spec.each is not None:
            items = path_value(record, spec.each)
            if items is None:
                continue
            if not isinstance(items, list):
                raise RecipeError(f"record.{spec.each}", "must be a list")
            counts: dict[str, int] = {}
            for item in items[: spec.limit] if spec.limit else items:
                scope = item if isinstance(item, dict) else {}
                role = _role(spec, scope, record)
                assert spec.as_ is not None
                planned.append(
                    Planned(
                        role=role,
                        index=counts.get(role, 0),
                        template=_template(spec.template, scope, record),
                        record={**record, spec.as_: item},
                        tags=[t for t in (fill(t, scope, record) for t in spec.tags) if t],
                        skip_missing=spec.skip_missing,
                        seed_offset=None,
                    )
                )
                counts[role] = counts.get(role, 0) + 1
                if len(planned) > MAX_JOBS:
                    break
        elif spec.repeat is not None:
            count = path_value(record, spec.repeat)
            if isinstance(count, float) and count.is_integer():  # JSON has one number type: 5.0 is 5
                count = int(count)
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise RecipeError(f"record.{spec.repeat}", "must be an integer of at least 1")
            if count > MAX_JOBS - len(planned):
                raise RecipeError(f"record.{spec.repeat}", f"this record would make more than {MAX_JOBS} jobs")
            role = _role(spec, record)
            for index in range(count):
                planned.append(
                    Planned(
                        role=role,
                        index=index,
                        template=_template(spec.template, record),
                        record={**record, "index": index, "number": index + 1},
                        tags=[t for t in (fill(t, record) for t in spec.tags) if t],
                        skip_missing=spec.skip_missing,
                        seed_offset=index,
                    )
                )
        else:
            planned.append(
                Planned(
                    role=_role(spec, record),
                    index=0,
                    template=_template(spec.template, record),
                    record=record,
                    tags=[t for t in (fill(t, record) for t in spec.tags) if t],
                    skip_missing=spec.skip_missing,
                    seed_offset=None,
                )
            )
        if len(planned) > MAX_JOBS:
            break
    if len(planned) > MAX_JOBS:
        raise RecipeError("record", f"this record would make more than {MAX_JOBS} jobs")
    return planned


def role_templates(recipe: RecipeDocument, role: str, styles: list[str] | None) -> list[str]:
    """The templates a job of ``role`` could be made from by some record; none when no record can make it.

    Per-role options are sent with every record of a file: a role this record does not make (a product without
    features has no ``detail``) is fine, a role no record could ever make is a mistake. A literal role is known
    by its name; a role named by a value (``{type}``) by the template that value names (``oa.{type}``)."""
    if styles is not None:
        return [_template(recipe.styles.template, {"style": role})] if recipe.styles and role in styles else []
    found: list[str] = []
    for spec in recipe.roles:
        field = _naming_field(spec.role, spec.template)
        if not _PLACEHOLDER.search(spec.role):
            if spec.role == role:
                found.append(spec.template)
        elif field is not None and _NAME_PART.match(role):
            scope: dict[str, Any] = {}
            node = scope
            *parents, last = field.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = role
            found.append(_template(spec.template, scope))
    return [name for name in found if valid_template_name(name)]


def role_name(text: str) -> str:
    """How a value names a role or a template part: lower case, spaces and hyphens as ``_``."""
    return _SEPARATORS.sub("_", text.strip().lower())


def valid_template_name(name: str) -> bool:
    return all(_NAME_PART.match(part) for part in name.split(".")) and len(name) <= 100


def parse(source: str) -> RecipeDocument:
    try:
        raw = yaml.safe_load(source)
        recipe = RecipeDocument.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ValueError(f"not a valid recipe: {exc}") from exc
    try:
        check_schema(recipe.schema_)
    except TemplateInvalid as exc:
        raise ValueError(f"recipe {recipe.name}: {exc}") from exc
    return recipe


@lru_cache(maxsize=1)
def shipped() -> dict[str, RecipeDocument]:
    """The shipped recipes, ``templates/recipes/*.yaml``, by name (a broken file fails the start)."""
    folder = resources.files("templates").joinpath("recipes")
    recipes: dict[str, RecipeDocument] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".yaml", ".yml")):
            recipe = parse(entry.read_text(encoding="utf-8"))
            recipes[recipe.name] = recipe
    return recipes
