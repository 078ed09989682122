"""What the emulated ComfyUI nodes do (their definitions for ``/object_info`` are in ``registry``).

Values that flow between nodes are light stand-ins (a checkpoint name for MODEL/CLIP/VAE, the prompt text for
CONDITIONING, size + sampling recipe for LATENT) and real Pillow images for IMAGE. The KSampler spends the GPU
time (steps x pixels x batch, plus ``load_ms`` when its checkpoint is not the loaded one) and sends ``progress``
1..steps; VAEDecode draws the pictures, deterministic in positive prompt, negative prompt and seed + i, at the
latent's size (EmptyLatentImage's width/height rounded down to multiples of 8). SaveImage/PreviewImage write
PNGs with the ``prompt`` (and ``extra_pnginfo``) text chunks, as upstream.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from gateway.emulators.comfyui.files import FileStore, PathEscape, normalise_subfolder
from gateway.emulators.core import SimulatedGPU, render_image

MAX_PIXELS = 64 * 1024 * 1024  # more pixels than this in one batch: the emulated GPU runs out of memory
RESAMPLE = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
OOM_TIPS = (
    "This error means you ran out of memory on your GPU.\n\n"
    "TIPS: If the workflow worked before you might have accidentally set the batch_size to a large number."
)


class OutOfMemoryError(RuntimeError):
    """``torch.OutOfMemoryError`` as the CUDA caching allocator raises it."""

    type_name = "torch.OutOfMemoryError"


@dataclass(frozen=True)
class ModelRef:
    ckpt: str
    loras: tuple[tuple[str, float], ...] = ()

    def __str__(self) -> str:
        return f"<comfy.model_patcher.ModelPatcher object at 0x{id(self):x}>"


@dataclass(frozen=True)
class ClipRef:
    ckpt: str
    loras: tuple[tuple[str, float], ...] = ()

    def __str__(self) -> str:
        return f"<comfy.sd.CLIP object at 0x{id(self):x}>"


@dataclass(frozen=True)
class VaeRef:
    name: str

    def __str__(self) -> str:
        return f"<comfy.sd.VAE object at 0x{id(self):x}>"


@dataclass(frozen=True)
class Conditioning:
    text: str

    def __str__(self) -> str:
        return f"[[tensor(...), {{'pooled_output': tensor(...)}}]]  # {self.text[:40]!r}"


@dataclass(frozen=True)
class Latent:
    """A latent batch: pixel size (x8 of the latent), count, and how it was sampled (None: empty/encoded)."""

    width: int
    height: int
    batch: int
    prompt: str | None = None
    negative: str = ""
    seed: int = 0
    denoise: float = 1.0
    source: tuple[Image.Image, ...] | None = None

    def __str__(self) -> str:
        return f"{{'samples': tensor(shape=[{self.batch}, 4, {self.height // 8}, {self.width // 8}])}}"


class RunContext(Protocol):
    """What a running node may use (provided by the executor)."""

    prompt_id: str
    node_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    gpu: SimulatedGPU
    files: FileStore

    def interrupted(self) -> bool: ...

    async def progress(self, value: int, total: int) -> None: ...


Ui = dict[str, list[Any]]
NodeFn = Callable[[RunContext, dict[str, Any]], Awaitable[tuple[tuple[Any, ...], Ui | None]]]


@dataclass(frozen=True)
class Env:
    """What the dynamic input lists depend on."""

    checkpoints: list[str]
    files: FileStore


def _check_pixels(width: int, height: int, batch: int) -> None:
    if width * height * batch > MAX_PIXELS:
        raise OutOfMemoryError("Allocation on device ")


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


# --- loaders and conditioning -------------------------------------------------------------------------------------


async def checkpoint_loader(ctx: RunContext, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], Ui | None]:
    name = str(inputs["ckpt_name"])
    return (ModelRef(name), ClipRef(name), VaeRef(name)), None


async def vae_loader(ctx: RunContext, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], Ui | None]:
    return (VaeRef(str(inputs["vae_name"])),), None


async def lora_loader(ctx: RunContext, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], Ui | None]:
    model: ModelRef = inputs["model"]
    clip: ClipRef = inputs["clip"]
    name = str(inputs["lora_name"])
    model = replace(model, loras=(*model.loras, (name, float(inputs["strength_model"]))))
    clip = replace(clip, loras=(*clip.loras, (name, float(inputs["strength_clip"]))))
    return (model, clip), None


async def clip_text_encode(ctx: RunContext, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], Ui | None]:
    return (Conditioning(str(inputs["text"])),), None


# --- latents and sampling -----------------------------------------------------------------------------------------


async def empty_latent(ctx: RunContext, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], Ui | None]:
    width, height, batch = int(inputs["width"]) // 8 * 8, int(inputs["height"]) // 8 * 8, int(inputs["batch_size"])
    return (Latent(width=width, height=height, batch=batch),), None


async def ksampler(ctx: RunContext, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], Ui | None]:
    """Spend steps x pixels x batch of GPU time, sending ``progress`` 1..steps; the picture is drawn at decode."""
    model: ModelRef = inputs["model"]
    latent: Latent = inputs["latent_image"]
    steps = int(inputs["steps"])
    _check_pixels(latent.width, latent.height, latent.batch)
    if ctx.gpu.should_fail():
        ctx.gpu.loaded_model = None  # upstream unloads all models after an OOM
        raise OutOfMemoryError("Allocation on device ")
    run = asyncio.ensure_future(
        ctx.gpu.run(steps=steps, width=latent.width, height=latent.height, n=latent.batch, model=model.ckpt)
    )
    sent = 0
    try:
        while not run.done():
            if ctx.interrupted():
                ctx.gpu.interrupt()
            state = ctx.gpu.current
            if state is not None and not state.interrupted:
                reached = min(steps, int(state.progress * steps))
                while sent < reached:
                    sent += 1
                    await ctx.progress(sent, steps)
            await asyncio.wait({run}, timeout=0.01)
        run.result()
    finally:
        if not run.done():
            run.cancel()
    while sent < steps:
        sent += 1
        await ctx.progress(sent, steps)
    positive: Conditioning = inputs["positive"]
    negative: Conditioning = inputs["negative"]
    sampled = replace(
        latent, prompt=positive.text, negative=negative.text, seed=int(inputs["seed"]), denoise=float(inputs["denoise"])
    )
    return (sampled,), None


def _draw(latent: Latent) -> list[Image.Image]:
    if latent.prompt is None:  # decoding an unsampled latent: a flat grey, as the VAE makes of zeros
        if latent.source is not None:
            return [img.resize((latent.width, latent.height)) for img in latent.source]
        return [Image.new("RGB", (latent.width, latent.height), (128, 128, 128)) for _ in range(latent.batch)]
    images = []
    for i in range(latent.batch):
        data = render_image(
            prompt=latent.prompt,
            negative_prompt=latent.negative,
            width=latent.width,
            height=latent.height,
            seed=latent.seed + i,
        )
        image = _decode(data)
        if latent.source is not None and latent.denoise < 1:
            base = latent.source[min(i, len(latent.source) - 1)].resize(image.size)
            image = Image.blend(base, image, max(0.0, latent.denoise))
        images.append(image)
    return images


async def vae_decode(ctx: RunContext, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], Ui | None]:
    latent: Latent = inputs["samples"]
    _check_pixels(latent.width, latent.height, latent.batch)
    return (await asyncio.to_thread(_draw, latent),), None


async def vae_encode(ctx: RunContext, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], Ui | None]:
    images: list[Image.Image] = inputs["pixels"]
    width, height = images[0].width // 8 * 8, images[0].height // 8 * 8
    source = tuple(img.crop((0, 0, width, height)) for img in images)
    return (Latent(width=width, height=height, batch=len(images), source=source),), None


async def repeat_latent_batch(ctx: RunContext, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], Ui | None]:
    """Upstream RepeatLatentBatch: the batch repeated ``amount`` times (an encoded image becomes n images)."""
    latent: Latent = inputs["samples"]
    amount = int(inputs["amount"])
    source = latent.source * amount if latent.source is not None else None
    return (replace(latent, batch=latent.batch * amount, source=source),), None


# --- images -------------------------------------------------------------------------------------------------------


def _png(image: Image.Image, ctx: RunContext) -> bytes:
    info = PngInfo()
    info.add_text("prompt", json.dumps(ctx.prompt))
    for key, value in (ctx.extra_data.get("extra_pnginfo") or {}).items():
        info.add_text(str(key), json.dumps(value))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info, compress_level=4)
    return buffer.getvalue()


def _expand_prefix(prefix: str, image: Image.Image) -> str:
    now = time.localtime()
    for token, value in {
        "%width%": str(image.width),
        "%height%": str(image.height),
        "%year%": str(now.tm_year),
        "%month%": f"{now.tm_mon:02d}",
        "%day%": f"{now.tm_mday:02d}",
        "%hour%": f"{now.tm_hour:02d}",
        "%minute%": f"{now.tm_min:02d}",
        "%second%": f"{now.tm_sec:02d}",
    }.items():
        prefix = prefix.replace(token, value)
    return prefix


async def _save(ctx: RunContext, images: list[Image.Image], folder: str, prefix: str) -> Ui:
    prefix = _expand_prefix(prefix, images[0])
    directory, name = prefix.rsplit("/", 1) if "/" in prefix else ("", prefix)
    try:
        subfolder = normalise_subfolder(directory)
    except PathEscape:
        raise Exception(  # upstream raises a bare Exception here
            "**** ERROR: Saving image outside the output folder is not allowed.\n"
            f" full_output_folder: {directory}\n         output_dir: {folder}"
        ) from None
    results = []
    for image in images:
        data = await asyncio.to_thread(_png, image, ctx)
        filename = f"{name}_{ctx.files.next_counter(folder, subfolder, name):05}_.png"
        ctx.files.put(folder, subfolder, filename, data)
        results.append({"filename": filename, "subfolder": subfolder, "type": folder})
    return {"images": results}


async def save_image(ctx: RunContext, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], Ui | None]:
    return (), await _save(ctx, inputs["images"], "output", str(inputs["filename_prefix"]))


async def preview_image(ctx: RunContext, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], Ui | None]:
    suffix = "".join(random.choice(string.ascii_lowercase) for _ in range(5))  # noqa: S311 - as upstream
    return (), await _save(ctx, inputs["images"], "temp", f"ComfyUI_temp_{suffix}")


async def load_image(ctx: RunContext, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], Ui | None]:
    data = ctx.files.get(*ctx.files.resolve(str(inputs["image"])))
    if data is None:
        raise FileNotFoundError(f"[Errno 2] No such file or directory: '{inputs['image']}'")

    def load() -> tuple[Image.Image, Image.Image]:
        with Image.open(io.BytesIO(data)) as opened:
            img = ImageOps.exif_transpose(opened)
            if "A" in img.getbands():
                return img.convert("RGB"), ImageOps.invert(img.getchannel("A"))
            return img.convert("RGB"), Image.new("L", (64, 64), 0)

    image, mask = await asyncio.to_thread(load)
    return ([image], [mask]), None


def validate_image(env: Env, value: Any) -> bool | str:
    try:
        exists = env.files.exists(*env.files.resolve(str(value)))
    except PathEscape:
        exists = False
    return True if exists else f"Invalid image file: {value}"


async def empty_image(ctx: RunContext, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], Ui | None]:
    width, height, batch, color = (int(inputs[k]) for k in ("width", "height", "batch_size", "color"))
    _check_pixels(width, height, batch)
    rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
    return ([Image.new("RGB", (width, height), rgb) for _ in range(batch)],), None


async def image_invert(ctx: RunContext, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], Ui | None]:
    return (await asyncio.to_thread(lambda: [ImageOps.invert(img) for img in inputs["image"]]),), None


def _scale(images: list[Image.Image], method: str, width: int, height: int, crop: str) -> list[Image.Image]:
    out = []
    for img in images:
        w, h = width, height
        if w == 0 and h == 0:
            out.append(img)
            continue
        if w == 0:
            w = max(1, round(img.width * h / img.height))
        elif h == 0:
            h = max(1, round(img.height * w / img.width))
        if crop == "center":
            img = ImageOps.fit(img, (w, h), method=RESAMPLE[method])
        else:
            img = img.resize((w, h), RESAMPLE[method])
        out.append(img)
    return out


async def image_scale(ctx: RunContext, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], Ui | None]:
    width, height = int(inputs["width"]), int(inputs["height"])
    _check_pixels(width, height, len(inputs["image"]))
    args = (inputs["image"], str(inputs["upscale_method"]), width, height, str(inputs["crop"]))
    return (await asyncio.to_thread(_scale, *args),), None


async def image_scale_by(ctx: RunContext, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], Ui | None]:
    images: list[Image.Image] = inputs["image"]
    factor = float(inputs["scale_by"])
    width, height = round(images[0].width * factor), round(images[0].height * factor)
    _check_pixels(width, height, len(images))
    return (await asyncio.to_thread(_scale, images, str(inputs["upscale_method"]), width, height, "disabled"),), None


async def image_batch(ctx: RunContext, inputs: dict[str, Any]) -> tuple[tuple[Any, ...], Ui | None]:
    first: list[Image.Image] = inputs["image1"]
    second: list[Image.Image] = inputs["image2"]
    size = first[0].size
    second = [img if img.size == size else ImageOps.fit(img, size, Image.Resampling.BILINEAR) for img in second]
    return ([*first, *second],), None
