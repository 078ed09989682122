"""String types that are safe to store and pass on: no NUL or control characters, no lone surrogates."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _safe(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


# The rules above, as patterns for the OpenAPI schema (validation itself is done by the functions).
_NO_CONTROL = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"
_NO_CONTROL_NOT_BLANK = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*[^\s\x00-\x1f\x7f][^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$"

SafeText = Annotated[str, AfterValidator(_safe), Field(json_schema_extra={"pattern": _NO_CONTROL})]
NonBlankText = Annotated[
    str,
    AfterValidator(_safe),
    AfterValidator(_not_blank),
    Field(json_schema_extra={"pattern": _NO_CONTROL_NOT_BLANK}),
]


def _integral(value: object) -> object:
    """JSON has one number type: 512.0 is the integer 512 (as JSON Schema says); 512.5, "512" and true are not."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Put after the Field constraints: Annotated[int, Field(ge=1), INTEGRAL] keeps them in the JSON schema.
INTEGRAL = BeforeValidator(_integral)


MAX_RECORD_BYTES = 64 * 1024
MAX_RECORD_DEPTH = 20  # levels of objects and lists inside the record


def _plain_record(value: object) -> object:
    """A business record: JSON data of at most 64 KB and 20 levels whose text holds no control characters or
    lone surrogates."""
    import json

    def walk(node: object, depth: int) -> None:
        if depth > MAX_RECORD_DEPTH and isinstance(node, dict | list):
            raise ValueError(f"a record nests objects and lists at most {MAX_RECORD_DEPTH} levels deep")
        if isinstance(node, str):
            _safe(node)
        elif isinstance(node, dict):
            for key, item in node.items():
                _safe(str(key))
                walk(item, depth + 1)
        elif isinstance(node, list):
            for item in node:
                walk(item, depth + 1)

    walk(value, 0)
    if len(json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8", "surrogatepass")) > MAX_RECORD_BYTES:
        raise ValueError(f"a record is at most {MAX_RECORD_BYTES} bytes of JSON")
    return value


Record = Annotated[dict[str, Any], AfterValidator(_plain_record)]
