"""Captions and tags for finished images from a vision backend (a job's ``describe: true``).

Describing is a bonus on top of a generation that already succeeded: when no vision backend is configured
or it fails, the images are kept without captions and the job's notes say why.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.assets.storage import CONTENT_TYPES
from gateway.backends.base import BackendError, GeneratedImage
from gateway.backends.scheduler import NoCandidate, Scheduler, Work


@dataclass(frozen=True)
class Caption:
    text: str
    tags: list[str]


async def describe_images(
    scheduler: Scheduler, job_id: str, images: list[GeneratedImage]
) -> tuple[list[Caption | None], list[str]]:
    """One caption per image (None where describing failed) and the notes to record."""
    from gateway.backends.vision import DESCRIBE_PROMPT, parse_caption

    captions: list[Caption | None] = []
    notes: list[str] = []
    for index, image in enumerate(images):
        work = Work(f"{job_id}:describe:{index}", None, 0.1, capability="describe")
        try:
            async with scheduler.slot(work) as entry:
                answer = await entry.adapter.describe(image.data, _content_type(image.format), DESCRIBE_PROMPT)
        except (BackendError, NoCandidate) as exc:
            message = exc.message if isinstance(exc, BackendError) else "every vision backend failed"
            notes.append(f"Image {index} was not described: {message}")
            captions.append(None)
            if isinstance(exc, BackendError) and exc.code == "no_backend":
                captions.extend([None] * (len(images) - index - 1))
                break
            continue
        text, tags = parse_caption(answer)
        captions.append(Caption(text=text, tags=tags))
    return captions, notes


def _content_type(fmt: str) -> str:
    """What to call the image (a backend may return formats the store converts later, e.g. bmp or gif)."""
    return CONTENT_TYPES.get(fmt, f"image/{fmt}")
