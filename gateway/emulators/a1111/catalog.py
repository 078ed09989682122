"""What an AUTOMATIC1111 v1.10 install knows: samplers, schedulers, checkpoints, settings and scripts.

Sampler and scheduler tables follow ``modules/sd_samplers_kdiffusion.py``, ``sd_samplers_timesteps.py``,
``sd_samplers_lcm.py`` and ``sd_schedulers.py`` of v1.10. ``resolve_sampler`` is v1.10's
``get_sampler_and_scheduler``: a scheduler label may be glued to the sampler name ("DPM++ 2M Karras"), and an
unknown sampler name silently falls back to the first sampler ("DPM++ 2M"), so v1.10's ``validate_sampler_name``
(400 "Sampler not found") can no longer fire from the API.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

VERSION = "v1.10.1"
MODELS_DIR = "/stable-diffusion-webui/models/Stable-diffusion"
DEFAULT_MODELS = ["v1-5-pruned-emaonly", "sd_xl_base_1.0"]
# sha256 of the public files, so hashes look like the real ones; other names get a hash derived from the name.
KNOWN_SHA256 = {
    "v1-5-pruned-emaonly.safetensors": "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
    "sd_xl_base_1.0.safetensors": "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b",
}


@dataclass(frozen=True)
class Sampler:
    """One ``SamplerData`` entry: name, aliases and options (``scheduler`` is its default schedule)."""

    name: str
    aliases: tuple[str, ...]
    options: dict[str, Any]

    @property
    def second_order(self) -> bool:
        """Second-order samplers evaluate the model twice per step (twice the GPU time)."""
        return bool(self.options.get("second_order"))


@dataclass(frozen=True)
class Scheduler:
    """One ``sd_schedulers.Scheduler`` (what GET /sdapi/v1/schedulers lists)."""

    name: str
    label: str
    default_rho: float = -1
    need_inner_model: bool = False
    aliases: tuple[str, ...] | None = None


SAMPLERS = [
    Sampler("DPM++ 2M", ("k_dpmpp_2m",), {"scheduler": "karras"}),
    Sampler("DPM++ SDE", ("k_dpmpp_sde",), {"scheduler": "karras", "second_order": True, "brownian_noise": True}),
    Sampler("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), {"scheduler": "exponential", "brownian_noise": True}),
    Sampler(
        "DPM++ 2M SDE Heun",
        ("k_dpmpp_2m_sde_heun",),
        {"scheduler": "exponential", "brownian_noise": True, "solver_type": "heun"},
    ),
    Sampler("DPM++ 2S a", ("k_dpmpp_2s_a",), {"scheduler": "karras", "uses_ensd": True, "second_order": True}),
    Sampler(
        "DPM++ 3M SDE",
        ("k_dpmpp_3m_sde",),
        {"scheduler": "exponential", "discard_next_to_last_sigma": True, "brownian_noise": True},
    ),
    Sampler("Euler a", ("k_euler_a", "k_euler_ancestral"), {"uses_ensd": True}),
    Sampler("Euler", ("k_euler",), {}),
    Sampler("LMS", ("k_lms",), {}),
    Sampler("Heun", ("k_heun",), {"second_order": True}),
    Sampler("DPM2", ("k_dpm_2",), {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True}),
    Sampler(
        "DPM2 a",
        ("k_dpm_2_a",),
        {"scheduler": "karras", "discard_next_to_last_sigma": True, "uses_ensd": True, "second_order": True},
    ),
    Sampler("DPM fast", ("k_dpm_fast",), {"uses_ensd": True}),
    Sampler("DPM adaptive", ("k_dpm_ad",), {"uses_ensd": True}),
    Sampler("Restart", ("restart",), {"scheduler": "karras", "second_order": True}),
    Sampler("DDIM", ("ddim",), {}),
    Sampler("DDIM CFG++", ("ddim_cfgpp",), {}),
    Sampler("PLMS", ("plms",), {}),
    Sampler("UniPC", ("unipc",), {}),
    Sampler("LCM", ("k_lcm",), {}),
]
SAMPLERS_BY_NAME = {s.name: s for s in SAMPLERS}

SCHEDULERS = [
    Scheduler("automatic", "Automatic"),
    Scheduler("uniform", "Uniform", need_inner_model=True),
    Scheduler("karras", "Karras", default_rho=7.0),
    Scheduler("exponential", "Exponential"),
    Scheduler("polyexponential", "Polyexponential", default_rho=1.0),
    Scheduler("sgm_uniform", "SGM Uniform", need_inner_model=True, aliases=("SGMUniform",)),
    Scheduler("kl_optimal", "KL Optimal"),
    Scheduler("align_your_steps", "Align Your Steps"),
    Scheduler("simple", "Simple", need_inner_model=True),
    Scheduler("normal", "Normal", need_inner_model=True),
    Scheduler("ddim", "DDIM", need_inner_model=True),
    Scheduler("beta", "Beta", need_inner_model=True),
]
SCHEDULERS_MAP = {**{s.name: s for s in SCHEDULERS}, **{s.label: s for s in SCHEDULERS}}


def resolve_sampler(sampler_name: str | None, scheduler_name: str | None, *, convert_automatic: bool = True) -> Sampler:
    """v1.10 ``get_sampler_and_scheduler`` (sampler half): unknown names fall back to the first sampler."""
    return _resolve(sampler_name, scheduler_name, convert_automatic)[0]


def resolve_scheduler(sampler_name: str | None, scheduler_name: str | None, *, convert_automatic: bool = True) -> str:
    """v1.10 ``get_sampler_and_scheduler`` (scheduler half): the scheduler's label."""
    return _resolve(sampler_name, scheduler_name, convert_automatic)[1].label


def _resolve(
    sampler_name: str | None, scheduler_name: str | None, convert_automatic: bool
) -> tuple[Sampler, Scheduler]:
    default = SAMPLERS[0]
    found = SCHEDULERS_MAP.get(scheduler_name or "", SCHEDULERS[0])
    name = sampler_name or default.name
    for scheduler in SCHEDULERS:
        for option in (scheduler.label, scheduler.name, *(scheduler.aliases or ())):
            if name.endswith(" " + option):
                found = scheduler
                name = name[: -(len(option) + 1)]
                break
    sampler = SAMPLERS_BY_NAME.get(name, default)
    if convert_automatic and sampler.options.get("scheduler") == found.name:
        found = SCHEDULERS[0]
    return sampler, found


def effective_schedule_label(sampler: Sampler, scheduler_label: str) -> str:
    """The "Schedule type" an infotext shows: Automatic resolves to the sampler's default schedule, if it has one."""
    if scheduler_label != "Automatic":
        return scheduler_label
    default = SCHEDULERS_MAP.get(sampler.options.get("scheduler", ""))
    return default.label if default is not None else "Automatic"


@dataclass(frozen=True)
class Checkpoint:
    """One file of models/Stable-diffusion, as ``sd_models.CheckpointInfo`` describes it."""

    name: str  # path relative to the models dir, with extension
    sha256: str

    @property
    def shorthash(self) -> str:
        return self.sha256[:10]

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]"

    @property
    def model_name(self) -> str:
        return os.path.splitext(self.name.replace("/", "_").replace("\\", "_"))[0]

    @property
    def name_for_extra(self) -> str:
        return os.path.splitext(os.path.basename(self.name))[0]

    @property
    def filename(self) -> str:
        return f"{MODELS_DIR}/{self.name}"

    @property
    def aliases(self) -> tuple[str, ...]:
        """What ``sd_models.checkpoint_aliases`` maps to this checkpoint."""
        return (self.title, self.model_name, self.name, self.name_for_extra, self.shorthash, self.sha256)

    def item(self) -> dict[str, Any]:
        """An entry of GET /sdapi/v1/sd-models."""
        return {
            "title": self.title,
            "model_name": self.model_name,
            "hash": self.shorthash,
            "sha256": self.sha256,
            "filename": self.filename,
            "config": None,
        }


def checkpoints(models: list[str]) -> list[Checkpoint]:
    """The checkpoints of ``--models`` (default: SD 1.5 and SDXL base); ``.safetensors`` is added when missing."""
    result = []
    for model in models or DEFAULT_MODELS:
        name = model if model.endswith((".safetensors", ".ckpt")) else f"{model}.safetensors"
        sha = KNOWN_SHA256.get(name) or hashlib.sha256(f"imagegate-emulator:{name}".encode()).hexdigest()
        result.append(Checkpoint(name=name, sha256=sha))
    return result


def default_options(checkpoint: Checkpoint) -> dict[str, Any]:
    """A realistic subset of ``shared.opts.data`` (GET /sdapi/v1/options); only these keys can be set."""
    return {
        "samples_save": True,
        "samples_format": "png",
        "samples_filename_pattern": "",
        "save_images_add_number": True,
        "grid_save": True,
        "grid_format": "png",
        "return_grid": True,
        "grid_only_if_multiple": True,
        "enable_pnginfo": True,
        "save_txt": False,
        "jpeg_quality": 80,
        "outdir_txt2img_samples": "outputs/txt2img-images",
        "outdir_img2img_samples": "outputs/img2img-images",
        "outdir_txt2img_grids": "outputs/txt2img-grids",
        "outdir_img2img_grids": "outputs/img2img-grids",
        "sd_model_checkpoint": checkpoint.title,
        "sd_checkpoints_limit": 1,
        "sd_checkpoints_keep_in_cpu": True,
        "sd_checkpoint_cache": 0,
        "sd_vae": "Automatic",
        "sd_vae_overrides_per_model_preferences": True,
        "CLIP_stop_at_last_layers": 1,
        "img2img_fix_steps": False,
        "img2img_color_correction": False,
        "initial_noise_multiplier": 1.0,
        "eta_noise_seed_delta": 0,
        "eta_ddim": 0.0,
        "eta_ancestral": 1.0,
        "s_churn": 0.0,
        "s_tmin": 0.0,
        "s_tmax": 0.0,
        "s_noise": 1.0,
        "s_min_uncond": 0.0,
        "token_merging_ratio": 0.0,
        "randn_source": "GPU",
        "face_restoration": False,
        "face_restoration_model": "CodeFormer",
        "tiling": False,
        "live_previews_enable": True,
        "live_previews_image_format": "png",
        "show_progress_every_n_steps": 10,
        "show_progress_type": "Approx NN",
        "hide_samplers": [],
        "add_model_hash_to_info": True,
        "add_model_name_to_info": True,
        "add_version_to_infotext": True,
        "api_enable_requests": True,
        "api_forbid_local_requests": True,
        "sd_lora": "None",
        "lora_preferred_name": "Alias from file",
    }


# script.title() of the scripts a stock install (plus the ControlNet extension) has; matched case-insensitively.
ALWAYSON_SCRIPTS = {"controlnet", "refiner", "seed", "sampler", "hypertile", "extra options"}
ALWAYSON_IMG2IMG_SCRIPTS = ALWAYSON_SCRIPTS | {"soft inpainting"}
SELECTABLE_SCRIPTS = {"prompt matrix", "prompts from file or textbox", "x/y/z plot"}
SELECTABLE_IMG2IMG_SCRIPTS = SELECTABLE_SCRIPTS | {
    "img2img alternative test",
    "loopback",
    "outpainting mk2",
    "poor man's outpainting",
    "sd upscale",
}
