"""ComfyUI's answers turned into the gateway's terms: validation and execution errors, queue entries, sampler
names, and init images prepared for upload. Pure functions (no I/O), so they are easy to test."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, UnidentifiedImageError

from gateway.backends.base import BACKEND_ERROR, BACKEND_REJECTED, INTERRUPTED, OUT_OF_MEMORY, BackendError

# A1111-style sampler names (what most callers know) -> ComfyUI (sampler_name, scheduler or None).
A1111_SAMPLERS: dict[str, tuple[str, str | None]] = {
    "euler": ("euler", None),
    "euler a": ("euler_ancestral", None),
    "heun": ("heun", None),
    "lms": ("lms", None),
    "dpm2": ("dpm_2", None),
    "dpm2 a": ("dpm_2_ancestral", None),
    "dpm++ 2m": ("dpmpp_2m", None),
    "dpm++ 2m karras": ("dpmpp_2m", "karras"),
    "dpm++ sde": ("dpmpp_sde", None),
    "dpm++ sde karras": ("dpmpp_sde", "karras"),
    "dpm++ 2m sde": ("dpmpp_2m_sde", None),
    "dpm++ 2m sde karras": ("dpmpp_2m_sde", "karras"),
    "dpm++ 2s a": ("dpmpp_2s_ancestral", None),
    "ddim": ("ddim", None),
    "unipc": ("uni_pc", None),
    "lcm": ("lcm", None),
}


def validation_message(name: str, body: Any) -> str:
    """A /prompt 400 body as one sentence naming each failing node, its class and its errors, e.g.
    ``node 4 (CheckpointLoaderSimple): Value not in list: ckpt_name: 'x' not in [...]``."""
    error = body.get("error") if isinstance(body, dict) else None
    node_errors = body.get("node_errors") if isinstance(body, dict) else None
    parts: list[str] = []
    if isinstance(node_errors, dict):
        for node_id, info in node_errors.items():
            info = info if isinstance(info, dict) else {}
            texts = [
                ": ".join(str(e[k]) for k in ("message", "details") if e.get(k))
                for e in info.get("errors", [])
                if isinstance(e, dict)
            ]
            parts.append(f"node {node_id} ({info.get('class_type', '?')}): " + ("; ".join(texts) or "invalid"))
    if not parts:
        if isinstance(error, dict):
            details = error.get("details")
            parts.append(
                f"{error.get('type', 'error')}: {error.get('message', '')}" + (f" ({details})" if details else "")
            )
        else:
            parts.append(str(error or body)[:300])
    return f"Backend {name} rejected the workflow: " + " | ".join(parts)


def execution_error(name: str, data: dict[str, Any]) -> BackendError:
    """An ``execution_error`` message: CUDA OOM is ``out_of_memory``; anything else the backend's (retryable)."""
    kind = str(data.get("exception_type") or "")
    text = str(data.get("exception_message") or "").strip()
    where = f"node {data.get('node_id')} ({data.get('node_type')})"
    if "OutOfMemory" in kind or "out of memory" in text.lower():
        return BackendError(f"Backend {name} ran out of GPU memory in {where}: {text[:300]}", code=OUT_OF_MEMORY)
    return BackendError(f"Backend {name} failed in {where}: {kind}: {text[:300]}", code=BACKEND_ERROR, retryable=True)


def interrupted(name: str, prompt_id: str) -> BackendError:
    """Our prompt stopped on the server without our asking (someone's /interrupt or queue delete)."""
    return BackendError(
        f"Backend {name}: prompt {prompt_id} was interrupted on the server.", code=INTERRUPTED, retryable=True
    )


def item_id(item: Any) -> str | None:
    """The prompt id of a /queue entry ``[number, prompt_id, prompt, extra_data, outputs]``."""
    return str(item[1]) if isinstance(item, list) and len(item) > 1 else None


def as_png(data: bytes, width: int, height: int, mode: str) -> bytes:
    """``data`` as a PNG of ``width`` x ``height`` (img2img sizes come from the request, as on A1111)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            converted = image.convert(mode)
    except (UnidentifiedImageError, OSError) as exc:
        raise BackendError("The init image or mask is not a readable image.", code=BACKEND_REJECTED) from exc
    if converted.size != (width, height):
        converted = converted.resize((width, height), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    converted.save(buffer, format="PNG")
    return buffer.getvalue()
