"""The node classes the emulated ComfyUI has, as ``/object_info`` shows them (``NODE_CLASS_MAPPINGS``).

Names, input order, defaults, min/max, return types, categories and display names follow upstream ``nodes.py``;
the tooltips are left out, so validation ``details`` read as in the reference (``"images"``, not
``"images: The images to save."``). Checkpoint names come from ``--models``; LoadImage lists input/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.emulators.comfyui import nodes as n
from gateway.emulators.comfyui.nodes import Env, NodeFn

MAX_RESOLUTION = 16384
SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
    "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "gradient_estimation",
    "er_sde", "seeds_2", "seeds_3", "ddim", "uni_pc", "uni_pc_bh2",
]  # fmt: skip
SCHEDULERS = [
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
]  # fmt: skip
UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
DEFAULT_CHECKPOINTS = ["sd_xl_base_1.0.safetensors", "v1-5-pruned-emaonly.safetensors"]
LORAS = ["add_detail.safetensors", "lcm-lora-sdxl.safetensors"]
VAES = ["sdxl_vae.safetensors", "vae-ft-mse-840000-ema-pruned.safetensors"]
HIDDEN_PROMPT = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
InputTypes = dict[str, dict[str, Any]]


def checkpoint_names(models: list[str]) -> list[str]:
    """The checkpoints/ folder: ``--models a,b`` as file names (``a`` -> ``a.safetensors``), else two defaults."""
    if not models:
        return list(DEFAULT_CHECKPOINTS)
    return [m if m.endswith((".safetensors", ".ckpt", ".pt", ".sft", ".gguf")) else f"{m}.safetensors" for m in models]


@dataclass(frozen=True)
class NodeDef:
    name: str
    display_name: str
    category: str
    input_types: Callable[[Env], InputTypes]
    outputs: tuple[str, ...]
    run: NodeFn
    output_node: bool = False
    output_names: tuple[str, ...] | None = None
    description: str = ""
    # VALIDATE_INPUTS(input) -> True | error string; replaces the list check of that input (LoadImage)
    custom_validate: tuple[str, Callable[[Env, Any], bool | str]] | None = None
    is_changed: Callable[[Env, dict[str, Any]], str] | None = None

    def info(self, env: Env) -> dict[str, Any]:
        """The ``/object_info`` entry (``node_info`` in server.py)."""
        types = self.input_types(env)
        return {
            "input": types,
            "input_order": {key: list(value) for key, value in types.items()},
            "output": list(self.outputs),
            "output_is_list": [False] * len(self.outputs),
            "output_name": list(self.output_names or self.outputs),
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": "nodes",
            "category": self.category,
            "output_node": self.output_node,
        }


def _int(default: int, lo: int, hi: int, step: int | None = None, **extra: Any) -> list[Any]:
    options: dict[str, Any] = {"default": default, "min": lo, "max": hi}
    if step is not None:
        options["step"] = step
    return ["INT", {**options, **extra}]


def _float(default: float, lo: float, hi: float, step: float, **extra: Any) -> list[Any]:
    return ["FLOAT", {"default": default, "min": lo, "max": hi, "step": step, **extra}]


def _fixed(required: dict[str, Any], hidden: dict[str, str] | None = None) -> Callable[[Env], InputTypes]:
    types: InputTypes = {"required": required}
    if hidden:
        types["hidden"] = dict(hidden)
    return lambda env: types


SAVE_DESCRIPTION = "Saves the input images to your ComfyUI output directory."
KSAMPLER_INPUTS = {
    "model": ["MODEL"],
    "seed": _int(0, 0, 0xFFFFFFFFFFFFFFFF, control_after_generate=True),
    "steps": _int(20, 1, 10000),
    "cfg": _float(8.0, 0.0, 100.0, 0.1, round=0.01),
    "sampler_name": [SAMPLERS],
    "scheduler": [SCHEDULERS],
    "positive": ["CONDITIONING"],
    "negative": ["CONDITIONING"],
    "latent_image": ["LATENT"],
    "denoise": _float(1.0, 0.0, 1.0, 0.01),
}
NODE_LIST = [
    NodeDef(
        "CheckpointLoaderSimple",
        "Load Checkpoint",
        "loaders",
        lambda env: {"required": {"ckpt_name": [list(env.checkpoints)]}},
        ("MODEL", "CLIP", "VAE"),
        n.checkpoint_loader,
        description="Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
    ),
    NodeDef("VAELoader", "Load VAE", "loaders", _fixed({"vae_name": [VAES]}), ("VAE",), n.vae_loader),
    NodeDef(
        "LoraLoader",
        "Load LoRA",
        "loaders",
        _fixed(
            {
                "model": ["MODEL"],
                "clip": ["CLIP"],
                "lora_name": [LORAS],
                "strength_model": _float(1.0, -100.0, 100.0, 0.01),
                "strength_clip": _float(1.0, -100.0, 100.0, 0.01),
            }
        ),
        ("MODEL", "CLIP"),
        n.lora_loader,
        description="LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are "
        "denoised such as applying styles. Multiple LoRA nodes can be linked together.",
    ),
    NodeDef(
        "CLIPTextEncode",
        "CLIP Text Encode (Prompt)",
        "conditioning",
        _fixed({"text": ["STRING", {"multiline": True, "dynamicPrompts": True}], "clip": ["CLIP"]}),
        ("CONDITIONING",),
        n.clip_text_encode,
        description="Encodes a text prompt using a CLIP model into an embedding that can be used to guide the "
        "diffusion model towards generating specific images.",
    ),
    NodeDef(
        "EmptyLatentImage",
        "Empty Latent Image",
        "latent",
        _fixed(
            {
                "width": _int(512, 16, MAX_RESOLUTION, 8),
                "height": _int(512, 16, MAX_RESOLUTION, 8),
                "batch_size": _int(1, 1, 4096),
            }
        ),
        ("LATENT",),
        n.empty_latent,
        description="Create a new batch of empty latent images to be denoised via sampling.",
    ),
    NodeDef(
        "RepeatLatentBatch",
        "Repeat Latent Batch",
        "latent/batch",
        _fixed({"samples": ["LATENT"], "amount": _int(1, 1, 64)}),
        ("LATENT",),
        n.repeat_latent_batch,
    ),
    NodeDef(
        "KSampler",
        "KSampler",
        "sampling",
        _fixed(KSAMPLER_INPUTS),
        ("LATENT",),
        n.ksampler,
        description="Uses the provided model, positive and negative conditioning to denoise the latent image.",
    ),
    NodeDef(
        "VAEDecode",
        "VAE Decode",
        "latent",
        _fixed({"samples": ["LATENT"], "vae": ["VAE"]}),
        ("IMAGE",),
        n.vae_decode,
        description="Decodes latent images back into pixel space images.",
    ),
    NodeDef(
        "VAEEncode", "VAE Encode", "latent", _fixed({"pixels": ["IMAGE"], "vae": ["VAE"]}), ("LATENT",), n.vae_encode
    ),
    NodeDef(
        "SaveImage",
        "Save Image",
        "image",
        _fixed({"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}, HIDDEN_PROMPT),
        (),
        n.save_image,
        output_node=True,
        description=SAVE_DESCRIPTION,
    ),
    NodeDef(
        "PreviewImage",
        "Preview Image",
        "image",
        _fixed({"images": ["IMAGE"]}, HIDDEN_PROMPT),
        (),
        n.preview_image,
        output_node=True,
        description=SAVE_DESCRIPTION,
    ),
    NodeDef(
        "LoadImage",
        "Load Image",
        "image",
        lambda env: {"required": {"image": [env.files.input_images(), {"image_upload": True}]}},
        ("IMAGE", "MASK"),
        n.load_image,
        custom_validate=("image", n.validate_image),
        is_changed=lambda env, inputs: env.files.digest(env.files.resolve(str(inputs.get("image", "")))),
    ),
    NodeDef(
        "EmptyImage",
        "EmptyImage",
        "image",
        _fixed(
            {
                "width": _int(512, 1, MAX_RESOLUTION, 1),
                "height": _int(512, 1, MAX_RESOLUTION, 1),
                "batch_size": _int(1, 1, 4096),
                "color": _int(0, 0, 0xFFFFFF, 1, display="color"),
            }
        ),
        ("IMAGE",),
        n.empty_image,
    ),
    NodeDef("ImageInvert", "Invert Image", "image", _fixed({"image": ["IMAGE"]}), ("IMAGE",), n.image_invert),
    NodeDef(
        "ImageScale",
        "Upscale Image",
        "image/upscaling",
        _fixed(
            {
                "image": ["IMAGE"],
                "upscale_method": [UPSCALE_METHODS],
                "width": _int(512, 0, MAX_RESOLUTION, 1),
                "height": _int(512, 0, MAX_RESOLUTION, 1),
                "crop": [["disabled", "center"]],
            }
        ),
        ("IMAGE",),
        n.image_scale,
    ),
    NodeDef(
        "ImageScaleBy",
        "Upscale Image By",
        "image/upscaling",
        _fixed({"image": ["IMAGE"], "upscale_method": [UPSCALE_METHODS], "scale_by": _float(1.0, 0.01, 8.0, 0.01)}),
        ("IMAGE",),
        n.image_scale_by,
    ),
    NodeDef(
        "ImageBatch",
        "Batch Images",
        "image",
        _fixed({"image1": ["IMAGE"], "image2": ["IMAGE"]}),
        ("IMAGE",),
        n.image_batch,
    ),
]
NODES: dict[str, NodeDef] = {node.name: node for node in NODE_LIST}
