"""The A1111 emulator answers like stable-diffusion-webui v1.10 (reference section 1, upstream modules/api).

Requests, responses, errors, auth, checkpoints and settings; ``test_a1111_runtime`` covers a webui at work.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from PIL import Image

from gateway.emulators.a1111 import create_app
from gateway.emulators.core import EmulatorOptions

SMALL = {"width": 64, "height": 64, "steps": 2}
ENVELOPE_KEYS = {"error", "detail", "body", "errors"}


@contextlib.asynccontextmanager
async def emulator(**options: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(EmulatorOptions(**{"step_ms": 5.0, "load_ms": 50.0, **options}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://emu", timeout=30) as client:
        yield client


async def txt2img(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/sdapi/v1/txt2img", json={**SMALL, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def decode(image: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(image)))


# -- txt2img request and response -------------------------------------------------------------------------------


async def test_txt2img_parameters_echo_every_field_with_the_reference_defaults() -> None:
    async with emulator() as client:
        parameters = (await txt2img(client, prompt="a fox"))["parameters"]
    defaults = {
        "prompt": "a fox",
        "negative_prompt": "",
        "styles": None,
        "seed": -1,
        "subseed": -1,
        "subseed_strength": 0,
        "seed_resize_from_h": -1,
        "seed_resize_from_w": -1,
        "sampler_name": None,
        "scheduler": None,
        "batch_size": 1,
        "n_iter": 1,
        "steps": 2,
        "cfg_scale": 7.0,
        "width": 64,
        "height": 64,
        "restore_faces": None,
        "tiling": None,
        "do_not_save_samples": False,
        "do_not_save_grid": False,
        "eta": None,
        "denoising_strength": None,
        "override_settings": None,
        "override_settings_restore_afterwards": True,
        "refiner_checkpoint": None,
        "enable_hr": False,
        "hr_scale": 2.0,
        "hr_upscaler": None,
        "hr_second_pass_steps": 0,
        "force_task_id": None,
        "sampler_index": "Euler",
        "script_name": None,
        "script_args": [],
        "send_images": True,
        "save_images": False,
        "alwayson_scripts": {},
        "infotext": None,
    }
    assert {key: parameters[key] for key in defaults} == defaults


async def test_txt2img_ignores_unknown_fields_like_pydantic_v1() -> None:
    async with emulator() as client:
        result = await txt2img(client, not_a_field=1)
    assert "not_a_field" not in result["parameters"]


async def test_txt2img_coerces_values_the_lax_pydantic_v1_way() -> None:
    async with emulator() as client:
        result = await txt2img(client, steps="3", width=64.9)
    assert (result["parameters"]["steps"], result["parameters"]["width"]) == (3, 64)


async def test_info_is_a_json_string_with_the_generation_details() -> None:
    async with emulator() as client:
        info = (await txt2img(client, prompt="a fox", negative_prompt="blur"))["info"]
    assert isinstance(info, str)
    details = json.loads(info)
    expected = {
        "prompt",
        "all_prompts",
        "negative_prompt",
        "seed",
        "all_seeds",
        "subseed",
        "all_subseeds",
        "width",
        "height",
        "sampler_name",
        "cfg_scale",
        "steps",
        "batch_size",
        "sd_model_name",
        "sd_model_hash",
        "infotexts",
        "job_timestamp",
        "version",
    }
    assert expected <= details.keys()
    assert (details["prompt"], details["negative_prompt"], details["sampler_name"]) == ("a fox", "blur", "Euler")
    assert (details["sd_model_name"], details["sd_model_hash"], details["version"]) == (
        "v1-5-pruned-emaonly",
        "6ce0161689",
        "v1.10.1",
    )


async def test_one_image_per_batch_size_times_n_iter_with_consecutive_seeds() -> None:
    async with emulator() as client:
        result = await txt2img(client, batch_size=2, n_iter=2, seed=100)
    info = json.loads(result["info"])
    assert len(result["images"]) == 4
    assert info["all_seeds"] == [100, 101, 102, 103]
    assert [f"Seed: {seed}," in text for seed, text in zip(info["all_seeds"], info["infotexts"], strict=True)] == [
        True
    ] * 4


async def test_images_are_pngs_of_the_requested_size_carrying_their_infotext() -> None:
    async with emulator() as client:
        result = await txt2img(client, width=96, height=64)
    image = decode(result["images"][0])
    assert (image.format, image.size) == ("PNG", (96, 64))
    assert image.info["parameters"] == json.loads(result["info"])["infotexts"][0]


async def test_seed_minus_one_is_replaced_by_a_random_seed() -> None:
    async with emulator() as client:
        seeds = [json.loads((await txt2img(client))["info"])["seed"] for _ in range(2)]
    assert -1 not in seeds and seeds[0] != seeds[1]


async def test_send_images_false_returns_an_empty_image_list() -> None:
    async with emulator() as client:
        result = await txt2img(client, send_images=False)
    assert result["images"] == []


async def test_every_handled_response_carries_x_process_time() -> None:
    async with emulator() as client:
        responses = [
            await client.post("/sdapi/v1/txt2img", json=SMALL),
            await client.get("/sdapi/v1/sd-models"),
            await client.post("/sdapi/v1/img2img", json={}),
            await client.post("/sdapi/v1/txt2img", json={"steps": "x"}),
        ]
    assert [float(r.headers["X-Process-Time"]) >= 0 for r in responses] == [True] * 4


async def test_validation_errors_are_fastapi_422_in_pydantic_v1_form() -> None:
    async with emulator() as client:
        response = await client.post("/sdapi/v1/txt2img", json={"steps": "many"})
    assert response.status_code == 422
    assert response.json() == {
        "detail": [{"loc": ["body", "steps"], "msg": "value is not a valid integer", "type": "type_error.integer"}]
    }


async def test_unknown_sampler_falls_back_to_the_first_sampler_as_v1_10_does() -> None:
    async with emulator() as client:
        result = await txt2img(client, sampler_name="No Such Sampler")
    assert json.loads(result["info"])["sampler_name"] == "DPM++ 2M"


async def test_sampler_name_with_a_schedule_suffix_is_split_into_sampler_and_schedule() -> None:
    async with emulator() as client:
        info = json.loads((await txt2img(client, sampler_name="Euler a Exponential"))["info"])
    assert info["sampler_name"] == "Euler a"
    assert "Sampler: Euler a, Schedule type: Exponential," in info["infotexts"][0]


async def test_unknown_alwayson_script_is_422_in_the_error_envelope() -> None:
    async with emulator() as client:
        response = await client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"NoSuch": {}}})
    assert response.status_code == 422
    assert response.json() == {
        "error": "HTTPException",
        "detail": "Script 'NoSuch' not found",
        "body": "",
        "errors": "",
    }


async def test_hires_fix_returns_images_upscaled_by_hr_scale() -> None:
    async with emulator() as client:
        result = await txt2img(client, enable_hr=True, hr_scale=1.5, denoising_strength=0.5)
    assert decode(result["images"][0]).size == (96, 96)


async def test_hires_fix_without_denoising_strength_fails_with_a_type_error() -> None:
    async with emulator() as client:
        response = await client.post("/sdapi/v1/txt2img", json={**SMALL, "enable_hr": True})
    assert (response.status_code, response.json()["error"]) == (500, "TypeError")


# -- img2img ----------------------------------------------------------------------------------------------------


def png_b64(size: tuple[int, int] = (32, 32), colour: str = "red") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


async def test_img2img_without_init_images_is_404_init_image_not_found() -> None:
    async with emulator() as client:
        response = await client.post("/sdapi/v1/img2img", json={"prompt": "x"})
    assert response.status_code == 404
    assert response.json() == {"error": "HTTPException", "detail": "Init image not found", "body": "", "errors": ""}


async def test_img2img_with_an_undecodable_image_is_500_invalid_encoded_image() -> None:
    async with emulator() as client:
        response = await client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": ["bm90IGFuIGltYWdl"]})
    assert (response.status_code, response.json()["detail"]) == (500, "Invalid encoded image")


async def test_img2img_returns_an_image_of_the_requested_size_and_hides_init_images() -> None:
    async with emulator() as client:
        init = "data:image/png;base64," + png_b64()
        response = await client.post("/sdapi/v1/img2img", json={**SMALL, "width": 80, "init_images": [init]})
    result = response.json()
    assert decode(result["images"][0]).size == (80, 64)
    assert (result["parameters"]["init_images"], result["parameters"]["denoising_strength"]) == (None, 0.75)
    assert (result["parameters"]["mask_blur_x"], result["parameters"]["mask_blur_y"]) == (4, 4)


# -- auth ---------------------------------------------------------------------------------------------------------


async def test_api_auth_without_credentials_is_401_not_authenticated() -> None:
    async with emulator(auth="alice:secret") as client:
        response = await client.get("/sdapi/v1/sd-models")
    assert response.status_code == 401
    assert response.json() == {"error": "HTTPException", "detail": "Not authenticated", "body": "", "errors": ""}


async def test_api_auth_with_a_wrong_password_is_401_incorrect_username_or_password() -> None:
    async with emulator(auth="alice:secret") as client:
        response = await client.post("/sdapi/v1/txt2img", json=SMALL, auth=("alice", "nope"))
    assert (response.status_code, response.json()["detail"]) == (401, "Incorrect username or password")


async def test_api_auth_accepts_every_listed_pair() -> None:
    async with emulator(auth="alice:secret,bob:hunter2") as client:
        statuses = [
            (await client.get("/sdapi/v1/sd-models", auth=pair)).status_code
            for pair in [("alice", "secret"), ("bob", "hunter2")]
        ]
    assert statuses == [200, 200]


# -- checkpoints, options, catalogues ---------------------------------------------------------------------------


async def test_sd_models_lists_the_configured_checkpoints_like_checkpoint_info() -> None:
    async with emulator(models=["juggernaut", "SDXL/dream.ckpt"]) as client:
        models = (await client.get("/sdapi/v1/sd-models")).json()
    first, second = models
    assert set(first) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert (
        first["title"] == f"juggernaut.safetensors [{first['sha256'][:10]}]" and first["hash"] == first["sha256"][:10]
    )
    assert (second["model_name"], second["title"].split(" [")[0]) == ("SDXL_dream", "SDXL/dream.ckpt")


async def test_samplers_and_schedulers_use_the_real_names() -> None:
    async with emulator() as client:
        samplers = (await client.get("/sdapi/v1/samplers")).json()
        schedulers = (await client.get("/sdapi/v1/schedulers")).json()
    by_name = {s["name"]: s for s in samplers}
    assert by_name["Euler a"]["aliases"] == ["k_euler_a", "k_euler_ancestral"]
    assert by_name["DPM++ 2M"]["options"] == {"scheduler": "karras"}
    assert {"Euler", "DPM++ SDE", "DDIM", "UniPC", "LCM"} <= by_name.keys()
    assert {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False} in (
        schedulers
    )


async def test_options_report_the_loaded_checkpoint_by_title() -> None:
    async with emulator() as client:
        options = (await client.get("/sdapi/v1/options")).json()
    assert options["sd_model_checkpoint"] == "v1-5-pruned-emaonly.safetensors [6ce0161689]"


async def test_setting_the_checkpoint_costs_load_ms_and_answers_null() -> None:
    async with emulator(load_ms=300.0) as client:
        started = time.monotonic()
        response = await client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sd_xl_base_1.0"})
        elapsed = time.monotonic() - started
        options = (await client.get("/sdapi/v1/options")).json()
    assert (response.status_code, response.json()) == (200, None)
    assert elapsed >= 0.3 and options["sd_model_checkpoint"] == "sd_xl_base_1.0.safetensors [31e35c80fc]"


async def test_setting_an_unknown_checkpoint_is_500_runtime_error() -> None:
    async with emulator() as client:
        response = await client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"})
    assert response.status_code == 500
    assert response.json() == {"error": "RuntimeError", "detail": "", "body": "", "errors": "model 'nope' not found"}


async def test_override_checkpoint_applies_to_the_call_then_the_setting_is_restored() -> None:
    async with emulator(load_ms=200.0) as client:
        started = time.monotonic()
        result = await txt2img(client, override_settings={"sd_model_checkpoint": "sd_xl_base_1.0"})
        elapsed = time.monotonic() - started
        options = (await client.get("/sdapi/v1/options")).json()
    assert json.loads(result["info"])["sd_model_name"] == "sd_xl_base_1.0" and elapsed >= 0.2
    assert options["sd_model_checkpoint"].startswith("v1-5-pruned-emaonly")


async def test_override_settings_restore_afterwards_false_keeps_the_new_checkpoint() -> None:
    async with emulator() as client:
        await txt2img(
            client, override_settings={"sd_model_checkpoint": "sd_xl_base_1.0"}, override_settings_restore_afterwards=0
        )
        options = (await client.get("/sdapi/v1/options")).json()
    assert options["sd_model_checkpoint"].startswith("sd_xl_base_1.0")


async def test_unknown_override_checkpoint_is_dropped_and_the_configured_one_used() -> None:
    async with emulator() as client:
        result = await txt2img(client, override_settings={"sd_model_checkpoint": "nope"})
    assert json.loads(result["info"])["sd_model_name"] == "v1-5-pruned-emaonly"
    assert result["parameters"]["override_settings"] == {}


async def test_fail_rate_one_fails_like_a_cuda_out_of_memory() -> None:
    async with emulator(fail_rate=1.0) as client:
        response = await client.post("/sdapi/v1/txt2img", json=SMALL)
    body = response.json()
    assert response.status_code == 500 and set(body) == ENVELOPE_KEYS
    assert (body["error"], body["detail"]) == ("OutOfMemoryError", "")
    assert body["errors"].startswith("CUDA out of memory. Tried to allocate")
