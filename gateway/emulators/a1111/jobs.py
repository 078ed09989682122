"""A txt2img/img2img request turned into what ``process_images`` works on, and what it reports back.

``Job`` holds the resolved generation (sampler and schedule, seeds, per-batch sampling steps, output sizes,
the hires second pass); ``infotext`` and ``info`` build the strings ``Processed.infotext`` and ``Processed.js``
produce in v1.10.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException
from PIL import Image

from gateway.emulators.a1111 import catalog
from gateway.emulators.a1111.models import Img2ImgRequest, Txt2ImgRequest


@dataclass
class Job:
    """One call's processing parameters (``p`` in upstream code)."""

    kind: str  # "txt2img" | "img2img"
    prompt: str
    negative_prompt: str
    batch_size: int
    n_iter: int
    steps: int  # as requested (infotext "Steps")
    sampling_steps: int  # sampler callbacks per batch (img2img: int(denoising * steps) + 1)
    width: int  # as requested (info and infotext "Size")
    height: int
    sampler: catalog.Sampler
    scheduler: str  # label after ``fix_p_invalid_sampler_and_scheduler``
    cfg_scale: float
    denoising_strength: float | None
    subseed_strength: float
    seed: int = -1
    subseed: int = -1
    hires: tuple[int, int, int] | None = None  # (steps, width, height) of the second pass
    extra: dict[str, Any] = field(default_factory=dict)  # extra_generation_params
    init_images: list[Image.Image] = field(default_factory=list)
    all_seeds: list[int] = field(default_factory=list)
    all_subseeds: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.batch_size * self.n_iter

    @property
    def out_size(self) -> tuple[int, int]:
        """Decoded image size: the latent is 1/8 of the requested size, rounded down."""
        return self.width // 8 * 8, self.height // 8 * 8

    def fix_seeds(self) -> None:
        """``get_fixed_seed`` + ``all_seeds``: -1 (or none) is random; image i of the call uses seed + i."""
        seed = self.seed if self.seed not in (-1, None) else random.randrange(4294967294)  # noqa: S311
        subseed = self.subseed if self.subseed not in (-1, None) else random.randrange(4294967294)  # noqa: S311
        self.all_seeds = [seed + (x if self.subseed_strength == 0 else 0) for x in range(self.total)]
        self.all_subseeds = [subseed + x for x in range(self.total)]


def _check_scripts(name: str | None, alwayson: dict[str, Any], *, img2img: bool) -> None:
    """``get_selectable_script`` and ``init_script_args``: unknown scripts are 422."""
    selectable = catalog.SELECTABLE_IMG2IMG_SCRIPTS if img2img else catalog.SELECTABLE_SCRIPTS
    always = catalog.ALWAYSON_IMG2IMG_SCRIPTS if img2img else catalog.ALWAYSON_SCRIPTS
    if name and name.lower() not in selectable:
        raise HTTPException(status_code=422, detail=f"Script '{name}' not found")
    for script in alwayson or {}:
        if script.lower() in selectable:
            detail = "Cannot have a selectable script in the always on scripts params"
            raise HTTPException(status_code=422, detail=detail)
        if script.lower() not in always:
            raise HTTPException(status_code=422, detail=f"Script '{script}' not found")


def _common(req: Txt2ImgRequest | Img2ImgRequest, kind: str) -> Job:
    sampler_name = req.sampler_name or req.sampler_index
    scheduler = req.scheduler
    if not scheduler:  # the API fills it in unless it resolved to Automatic
        label = catalog.resolve_scheduler(sampler_name, None)
        scheduler = label if label != "Automatic" else None
    sampler = catalog.resolve_sampler(sampler_name, req.scheduler)
    job = Job(
        kind=kind,
        prompt=req.prompt or "",
        negative_prompt=req.negative_prompt or "",
        batch_size=req.batch_size if req.batch_size is not None else 1,
        n_iter=req.n_iter if req.n_iter is not None else 1,
        steps=req.steps if req.steps is not None else 50,
        sampling_steps=req.steps if req.steps is not None else 50,
        width=req.width if req.width is not None else 512,
        height=req.height if req.height is not None else 512,
        sampler=sampler,
        scheduler=catalog.resolve_scheduler(sampler.name, scheduler, convert_automatic=False),
        cfg_scale=req.cfg_scale if req.cfg_scale is not None else 7.0,
        denoising_strength=req.denoising_strength,
        subseed_strength=req.subseed_strength or 0,
        seed=req.seed if req.seed is not None else -1,
        subseed=req.subseed if req.subseed is not None else -1,
    )
    return job


def _sampled(job: Job) -> Job:
    """What the k-diffusion sampler records when it picks the sigmas (after ``init``'s own parameters)."""
    schedule = catalog.effective_schedule_label(job.sampler, job.scheduler)
    if schedule != "Automatic":
        job.extra["Schedule type"] = schedule
    return job


def txt2img_job(req: Txt2ImgRequest) -> Job:
    """``text2imgapi`` up to the queue lock, then ``StableDiffusionProcessingTxt2Img.init``'s hires sizing."""
    _check_scripts(req.script_name, req.alwayson_scripts, img2img=False)
    job = _common(req, "txt2img")
    if req.enable_hr:
        job.extra["Denoising strength"] = req.denoising_strength
        scale = req.hr_scale if req.hr_scale is not None else 2.0
        rx, ry = req.hr_resize_x or 0, req.hr_resize_y or 0
        if rx == 0 and ry == 0:
            job.extra["Hires upscale"] = scale
            target = int(job.width * scale), int(job.height * scale)
        else:
            job.extra["Hires resize"] = f"{rx}x{ry}"
            if ry == 0:
                target = rx, rx * job.height // max(1, job.width)
            elif rx == 0:
                target = ry * job.width // max(1, job.height), ry
            else:
                target = rx, ry
        if req.hr_second_pass_steps:
            job.extra["Hires steps"] = req.hr_second_pass_steps
        if req.hr_upscaler is not None:
            job.extra["Hires upscaler"] = req.hr_upscaler
        job.hires = (req.hr_second_pass_steps or job.steps, target[0] // 8 * 8, target[1] // 8 * 8)
    return _sampled(job)


def img2img_job(req: Img2ImgRequest, init_images: list[Image.Image]) -> Job:
    """``img2imgapi``: it samples only ``int(denoising_strength * steps) + 1`` steps (``img2img_fix_steps`` off)."""
    _check_scripts(req.script_name, req.alwayson_scripts, img2img=True)
    job = _common(req, "img2img")
    job.init_images = init_images
    if len(init_images) > 1:
        if len(init_images) > job.batch_size:
            raise RuntimeError(f"bad number of images passed: {len(init_images)}; expecting {job.batch_size} or less")
        job.batch_size = len(init_images)
    if job.denoising_strength is None:
        raise TypeError("'<' not supported between instances of 'float' and 'NoneType'")
    job.extra["Denoising strength"] = job.denoising_strength
    job.sampling_steps = int(min(job.denoising_strength, 0.999) * job.steps) + 1
    return _sampled(job)


def _quote(value: Any) -> str:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def infotext(job: Job, index: int, *, checkpoint: catalog.Checkpoint, clip_skip: int) -> str:
    """``create_infotext`` for image ``index`` of the call (the PNG ``parameters`` text)."""
    params: dict[str, Any] = {
        "Steps": job.steps,
        "Sampler": job.sampler.name,
        "Schedule type": catalog.effective_schedule_label(job.sampler, job.scheduler),
        "CFG scale": job.cfg_scale,
        "Seed": job.all_seeds[index] if index < len(job.all_seeds) else None,
        "Size": f"{job.width}x{job.height}",
        "Model hash": checkpoint.shorthash,
        "Model": checkpoint.name_for_extra,
        "Variation seed": None if job.subseed_strength == 0 else job.all_subseeds[index],
        "Variation seed strength": None if job.subseed_strength == 0 else job.subseed_strength,
        "Clip skip": None if clip_skip <= 1 else clip_skip,
        **job.extra,
        "Version": catalog.VERSION,
    }
    text = ", ".join(f"{k}: {_quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {job.negative_prompt}" if job.negative_prompt else ""
    return f"{job.prompt}{negative}\n{text}".strip()


def info(
    job: Job,
    req: Txt2ImgRequest | Img2ImgRequest,
    *,
    checkpoint: catalog.Checkpoint,
    infotexts: list[str],
    **extra: Any,
) -> str:
    """``Processed.js()``: the response's ``info``, a JSON *string*."""
    prompts = [job.prompt] * job.total or [job.prompt]
    negatives = [job.negative_prompt] * job.total or [job.negative_prompt]
    obj = {
        "prompt": prompts[0],
        "all_prompts": prompts,
        "negative_prompt": negatives[0],
        "all_negative_prompts": negatives,
        "seed": job.all_seeds[0],
        "all_seeds": job.all_seeds,
        "subseed": job.all_subseeds[0],
        "all_subseeds": job.all_subseeds,
        "subseed_strength": job.subseed_strength,
        "width": job.width,
        "height": job.height,
        "sampler_name": job.sampler.name,
        "cfg_scale": job.cfg_scale,
        "steps": job.steps,
        "batch_size": job.batch_size,
        "restore_faces": bool(req.restore_faces),
        "face_restoration_model": "CodeFormer" if req.restore_faces else None,
        "sd_model_name": checkpoint.name_for_extra,
        "sd_model_hash": checkpoint.shorthash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": req.seed_resize_from_w,
        "seed_resize_from_h": req.seed_resize_from_h,
        "denoising_strength": job.denoising_strength,
        "extra_generation_params": job.extra,
        "index_of_first_image": extra.get("index_of_first_image", 0),
        "infotexts": infotexts,
        "styles": req.styles or [],
        "job_timestamp": extra.get("job_timestamp", "0"),
        "clip_skip": extra.get("clip_skip", 1),
        "is_using_inpainting_conditioning": False,
        "version": catalog.VERSION,
    }
    return json.dumps(obj)
