"""ComfyUI API-format workflows: choosing one for a request and patching the request into it.

An API-format workflow (ComfyUI's "Save (API)") maps node ids to ``{"class_type", "inputs"}``; an input is
either a literal or a link ``[source_node_id, output_index]``. Node ids differ between workflows, so nodes are
found by class type and by following links from the sampler, never by fixed ids: the KSampler's ``positive`` and
``negative`` links lead to the two prompt encoders, its ``latent_image`` link to the size (EmptyLatentImage) or to
the init image (VAEEncode <- LoadImage), its ``model`` link to the checkpoint loader.
"""

from __future__ import annotations

import copy
import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from gateway.backends.base import BACKEND_REJECTED, BackendError, GenerationRequest

Workflow = dict[str, dict[str, Any]]

SAMPLERS = ("KSampler", "KSamplerAdvanced")
TEXT_ENCODERS = ("CLIPTextEncode",)
OUTPUT_NODES = ("SaveImage",)


def rejected(message: str) -> BackendError:
    return BackendError(message, code=BACKEND_REJECTED, retryable=False)


def builtin(name: str) -> Workflow:
    """A workflow shipped with the gateway (``txt2img`` or ``img2img``), as a fresh copy."""
    text = resources.files("gateway.backends").joinpath("workflows", f"{name}.json").read_text(encoding="utf-8")
    loaded: Workflow = json.loads(text)
    return loaded


def select(workflows: Mapping[str, Any] | None, model: str | None, mode: str) -> tuple[Workflow, bool]:
    """The workflow for ``model`` in ``mode`` (txt2img, img2img or inpaint) and whether it is model-specific.

    ``workflows`` (the backend's ``options["workflows"]``) maps a model name or ``"*"`` to a workflow; img2img and
    inpaint variants use the keys ``"img2img:<model>"`` / ``"img2img:*"`` and ``"inpaint:<model>"`` / ``"inpaint:*"``.
    Without a configured one, the shipped txt2img/img2img workflows are used (there is no shipped inpaint one).
    """
    workflows = workflows or {}
    prefix = "" if mode == "txt2img" else f"{mode}:"
    candidates = [(f"{prefix}{model}", True)] if model else []
    candidates.append((f"{prefix}*", False))
    if mode == "inpaint":  # an img2img workflow that has a mask loader also inpaints
        candidates += [(f"img2img:{model}", True)] if model else []
        candidates.append(("img2img:*", False))
    for key, specific in candidates:
        if key in workflows:
            return parse(workflows[key], key), specific
    if mode == "inpaint":
        raise rejected("Masks need an inpainting workflow (configure options.workflows['inpaint:*']).")
    return builtin(mode), False


def check_all(workflows: Any) -> None:
    """Refuse configured workflows that could never run (ValueError naming the key), when the backend is added."""
    if workflows is None:
        return
    if not isinstance(workflows, dict):
        raise ValueError("workflows must be an object: model name (or '*', 'img2img:*', ...) -> workflow")
    for key, value in workflows.items():
        try:
            parse(value, key)
        except BackendError as exc:
            raise ValueError(exc.message) from None


def parse(value: Any, key: str) -> Workflow:
    """A configured workflow (a dict or its JSON text), checked to be in API format."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise rejected(f"Workflow {key!r} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise rejected(f"Workflow {key!r} is not a JSON object.")
    if "nodes" in value and "links" in value:
        raise rejected(f"Workflow {key!r} is in ComfyUI's UI format; export it with 'Save (API)'.")
    if not value or not all(isinstance(node, dict) and "class_type" in node for node in value.values()):
        raise rejected(f"Workflow {key!r} is not an API-format workflow (node id -> {{class_type, inputs}}).")
    return copy.deepcopy(value)


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str | int) and isinstance(value[1], int)


def upstream(workflow: Workflow, start: Any, classes: Iterable[str]) -> str | None:
    """The nearest node of one of ``classes`` reached by following links backwards from link ``start``."""
    wanted = set(classes)
    queue: deque[Any] = deque([start])
    seen: set[str] = set()
    while queue:
        link = queue.popleft()
        if not is_link(link):
            continue
        node_id = str(link[0])
        if node_id in seen or node_id not in workflow:
            continue
        seen.add(node_id)
        node = workflow[node_id]
        if node.get("class_type") in wanted:
            return node_id
        queue.extend(v for v in node.get("inputs", {}).values() if is_link(v))
    return None


def nodes_of(workflow: Workflow, classes: Iterable[str]) -> list[str]:
    wanted = set(classes)
    return [node_id for node_id, node in workflow.items() if node.get("class_type") in wanted]


@dataclass
class Patched:
    """A workflow ready to queue, and what the adapter needs to know about it."""

    workflow: Workflow
    outputs: list[str]  # SaveImage node ids whose images are the result
    sampler: str
    load_image: str | None = None  # LoadImage node of the init image (img2img)
    load_mask: str | None = None
    checkpoint_node: str | None = None
    checkpoint: str | None = None  # the ckpt_name the workflow will load
    notes: list[str] = field(default_factory=list)


def main_sampler(workflow: Workflow) -> str:
    """The sampler that makes the picture: the one whose latent comes from an empty latent or an encoded image."""
    samplers = nodes_of(workflow, SAMPLERS)
    if not samplers:
        raise rejected("The ComfyUI workflow has no KSampler node to take the seed, steps and guidance.")
    for node_id in samplers:
        latent = workflow[node_id]["inputs"].get("latent_image")
        if upstream(workflow, latent, ("EmptyLatentImage", "VAEEncode", "VAEEncodeForInpaint")) is not None:
            return node_id
    return samplers[0]


def patch(
    workflow: Workflow,
    request: GenerationRequest,
    *,
    checkpoint: str | None,
    filename_prefix: str,
    init_image: str | None = None,
    mask: str | None = None,
) -> Patched:
    """Write ``request`` into (a copy of) ``workflow``.

    ``checkpoint`` is the ckpt_name to load (None: keep the workflow's); ``init_image`` and ``mask`` are the names
    ComfyUI gave the uploaded files. Raises ``backend_rejected`` when a node the request needs is missing.
    """
    wf = copy.deepcopy(workflow)
    sampler_id = main_sampler(wf)
    sampler = wf[sampler_id]["inputs"]
    patched = Patched(workflow=wf, outputs=nodes_of(wf, OUTPUT_NODES), sampler=sampler_id)
    if not patched.outputs:
        raise rejected("The ComfyUI workflow has no SaveImage node, so it would return no images.")

    # Prompts: the encoders feeding the sampler's conditioning (possibly through ControlNet/combine nodes).
    positive = upstream(wf, sampler.get("positive"), TEXT_ENCODERS)
    negative = upstream(wf, sampler.get("negative"), TEXT_ENCODERS)
    if positive is None or negative is None:
        side = "positive" if positive is None else "negative"
        raise rejected(f"The ComfyUI workflow has no CLIPTextEncode feeding KSampler {sampler_id}'s {side} input.")
    if positive == negative:
        raise rejected(f"The ComfyUI workflow's positive and negative prompts share CLIPTextEncode node {positive}.")
    wf[positive]["inputs"]["text"] = request.prompt
    wf[negative]["inputs"]["text"] = request.negative_prompt

    # Sampling. Every sampler gets the seed (a second pass stays reproducible); the main one gets the rest.
    for node_id in nodes_of(wf, SAMPLERS):
        key = "noise_seed" if wf[node_id]["class_type"] == "KSamplerAdvanced" else "seed"
        wf[node_id]["inputs"][key] = request.seed
    sampler["steps"] = request.steps
    sampler["cfg"] = request.guidance_scale
    if request.sampler:
        sampler["sampler_name"] = request.sampler
    if request.scheduler:
        sampler["scheduler"] = request.scheduler

    latent = sampler.get("latent_image")
    if init_image is None:
        empty = upstream(wf, latent, ("EmptyLatentImage",))
        if empty is None:
            raise rejected(f"The ComfyUI workflow has no EmptyLatentImage feeding KSampler {sampler_id}.")
        wf[empty]["inputs"].update(width=request.width, height=request.height, batch_size=request.n)
    else:
        _patch_init_image(wf, patched, request, init_image, mask)

    loaders = nodes_of(wf, ("CheckpointLoaderSimple",))
    if loaders:
        loader = upstream(wf, sampler.get("model"), ("CheckpointLoaderSimple",)) or loaders[0]
        patched.checkpoint_node = loader
        if checkpoint is not None:
            wf[loader]["inputs"]["ckpt_name"] = checkpoint
        current = wf[loader]["inputs"].get("ckpt_name")
        patched.checkpoint = current if isinstance(current, str) else None
    elif checkpoint is not None:
        raise rejected("The ComfyUI workflow has no CheckpointLoaderSimple node to load the requested model.")

    for node_id in patched.outputs:
        wf[node_id]["inputs"]["filename_prefix"] = filename_prefix
    return patched


def _patch_init_image(wf: Workflow, patched: Patched, request: GenerationRequest, image: str, mask: str | None) -> None:
    sampler = wf[patched.sampler]["inputs"]
    latent = sampler.get("latent_image")
    encoder = upstream(wf, latent, ("VAEEncode", "VAEEncodeForInpaint"))
    if encoder is None:
        raise rejected(f"The ComfyUI workflow has no VAEEncode feeding KSampler {patched.sampler} (not img2img).")
    loader = upstream(wf, wf[encoder]["inputs"].get("pixels"), ("LoadImage",))
    if loader is None:
        raise rejected(f"The ComfyUI workflow has no LoadImage feeding VAEEncode {encoder}.")
    wf[loader]["inputs"]["image"] = image
    patched.load_image = loader
    if mask is not None:
        masks = nodes_of(wf, ("LoadImageMask",))
        if not masks:
            raise rejected("Masks need an inpainting workflow (one with a LoadImageMask node).")
        # Our mask is white = repaint on black, so the mask is its luminance (LoadImageMask channel "red").
        wf[masks[0]]["inputs"].update(image=mask, channel="red")
        patched.load_mask = masks[0]
    if request.denoising_strength is not None and "denoise" in sampler:
        sampler["denoise"] = request.denoising_strength
    if request.n > 1:
        # VAEEncode makes one latent; ComfyUI batches an encoded image with RepeatLatentBatch.
        repeat = upstream(wf, latent, ("RepeatLatentBatch",))
        if repeat is None:
            repeat = str(max((int(k) for k in wf if k.isdigit()), default=0) + 1)
            while repeat in wf:
                repeat += "0"
            wf[repeat] = {"class_type": "RepeatLatentBatch", "inputs": {"samples": latent, "amount": request.n}}
            sampler["latent_image"] = [repeat, 0]
        else:
            wf[repeat]["inputs"]["amount"] = request.n


def checkpoint_names(object_info: Mapping[str, Any]) -> list[str]:
    """The ckpt_name choices of CheckpointLoaderSimple in an /object_info answer (list or V3 COMBO form)."""
    node = object_info.get("CheckpointLoaderSimple")
    if not isinstance(node, dict):
        return []
    spec = node.get("input", {}).get("required", {}).get("ckpt_name")
    if not isinstance(spec, list) or not spec:
        return []
    if isinstance(spec[0], list):
        return [str(name) for name in spec[0]]
    if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], dict):
        return [str(name) for name in spec[1].get("options", [])]
    return []


def model_name(checkpoint: str) -> str:
    """The gateway's name of a checkpoint file: its base name without extension."""
    base = checkpoint.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    return stem if dot and ext.lower() in ("safetensors", "ckpt", "pt", "pth", "bin", "sft", "gguf") else base
