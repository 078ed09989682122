"""GLM-4.6V-Flash-WEB, the vision-language service of seed 001 (image + question -> text).

Protocol: ``/work/shared/reference/backends.md`` section 5. The gateway uses it to caption and tag generated
images (jobs with ``describe: true``): ``describe`` with ``DESCRIBE_PROMPT``, then ``parse_caption`` on the answer.
Images are always sent inline as a data URL; the service can also fetch image URLs, which the gateway never uses
(a caller's URL forwarded to it would be an SSRF path).
"""

from __future__ import annotations

import base64
import re

import httpx

from gateway.backends._http import HttpAdapter, malformed
from gateway.backends.base import (
    BACKEND_REJECTED,
    BACKEND_UNAVAILABLE,
    BackendError,
    BackendSpec,
    ProbeResult,
    number_option,
)

DESCRIBE_PROMPT = (
    "Describe this image in one sentence. Then, on a new line, write 'Tags:' followed by 3 to 8 "
    "comma-separated lower-case tags."
)
# The service refuses an ``image`` field longer than 10 MB (seed 001 checks the length of the data URL string).
MAX_IMAGE_FIELD = 10 * 1024 * 1024
MAX_TAGS = 10

_TAGS_LINE = re.compile(r"^\s*(?:tags?|标签)\s*[:：]", re.IGNORECASE | re.MULTILINE)
_TAGS_INLINE = re.compile(r"\btags\s*[:：]", re.IGNORECASE)  # "A cat. Tags: cat" (plural: not "price tag:")
_CAPTION_LABEL = re.compile(r"^(?:caption|description|描述)\s*[:：]\s*", re.IGNORECASE)
_TAG_SPLIT = re.compile(r"[,，、;；]")


def parse_caption(text: str) -> tuple[str, list[str]]:
    """Split a model answer into a one-line caption and its tags (lower-case, deduplicated, at most 10).

    Expects the shape ``DESCRIBE_PROMPT`` asks for; tolerates markdown emphasis, a ``Caption:`` label, the tags on
    the caption's line, a Chinese ``标签：`` label, and no tags at all (an empty list).
    """
    text = text.replace("*", "").strip()
    match = _TAGS_LINE.search(text) or _TAGS_INLINE.search(text)
    before, tags_text = (text[: match.start()], text[match.end() :]) if match else (text, "")
    caption = next((line.strip() for line in before.splitlines() if line.strip()), "")
    caption = " ".join(_CAPTION_LABEL.sub("", caption).split())
    tags: list[str] = []
    for raw in _TAG_SPLIT.split(tags_text.split("\n", 1)[0]):
        tag = " ".join(raw.strip().strip("#\"'`.。[]").lower().split())
        if tag and tag not in tags:
            tags.append(tag)
    return caption, tags[:MAX_TAGS]


class VisionAdapter(HttpAdapter):
    """``describe`` only. ``options``: ``max_new_tokens`` (default 256), ``temperature`` (default 0.2: captions
    should be stable rather than creative)."""

    kind = "vision"
    capability = "describe"
    default_slots = 1
    lists_models = False

    def __init__(self, spec: BackendSpec, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(spec, client)
        self.max_new_tokens = int(number_option(spec.options, "max_new_tokens", 256, minimum=0))
        self.temperature = number_option(spec.options, "temperature", 0.2, minimum=-1e-9)

    async def probe(self) -> ProbeResult:
        health = await self.send_json("GET", "/health")
        if not isinstance(health, dict):
            raise malformed(self.name, "health is not an object")
        if health.get("status") != "healthy":
            raise BackendError(
                f"Backend {self.name} reports status {health.get('status')!r}.",
                code=BACKEND_UNAVAILABLE,
                retryable=True,
            )
        model = health.get("model")
        return ProbeResult(models=None, loaded_model=str(model) if model else None)

    async def describe(self, image: bytes, content_type: str, prompt: str) -> str:
        data_url = f"data:{content_type};base64,{base64.b64encode(image).decode()}"
        if len(data_url) > MAX_IMAGE_FIELD:
            # Refused here exactly as the service would refuse it, without sending megabytes for nothing.
            raise BackendError(
                f"Backend {self.name} accepts images up to 10 MB (encoded); this one is {len(data_url)} bytes.",
                code=BACKEND_REJECTED,
            )
        answer = await self.send_json(
            "POST",
            "/v1/multimodal/completions",
            json={
                "image": data_url,
                "prompt": prompt,
                "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature,
            },
        )
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise malformed(self.name, "no choices[0].message.content") from exc
        if not isinstance(content, str):
            raise malformed(self.name, "the content is not text")
        return content.strip()
