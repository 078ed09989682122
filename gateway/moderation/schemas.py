"""Bodies of the per-system content policy routes."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.common.text import SafeText

Term = Annotated[SafeText, Field(min_length=1, max_length=100)]
# Per policy, all categories and the allow-list together: bounds compile time and memory (a full policy of
# short terms compiles in about 0.5 s and holds some tens of MB).
MAX_TERMS = 20_000
MAX_CHARACTERS = 400_000
Category = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class ContentPolicyUpdate(BaseModel):
    """A system's additions to the shipped lists. Categories: violence, sexual, minors, hate, brand, or new ones."""

    model_config = ConfigDict(extra="forbid", strict=True)

    extra: dict[Category, Annotated[list[Term], Field(max_length=10_000)]] = Field(
        default_factory=dict, description="More terms per category (a new category name creates one; action block)"
    )
    allow: Annotated[list[Term], Field(max_length=10_000)] = Field(
        default_factory=list, description="Terms that never count as a match (e.g. your own brand)"
    )
    actions: dict[Category, Literal["block", "mask"]] = Field(
        default_factory=dict, description="Per category: refuse the request (block) or replace the term (mask)"
    )

    @model_validator(mode="after")
    def _bounded(self) -> ContentPolicyUpdate:
        terms = [t for listed in self.extra.values() for t in listed] + list(self.allow)
        if len(terms) > MAX_TERMS or len(self.extra) > 64 or sum(map(len, terms)) > MAX_CHARACTERS:
            raise ValueError(
                f"a policy holds at most {MAX_TERMS} terms, {MAX_CHARACTERS} characters in all, in 64 categories"
            )
        return self


class ContentPolicyRead(ContentPolicyUpdate):
    system: str
