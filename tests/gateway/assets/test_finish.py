"""Finishing a generated image: exact output size (cover + centre crop), watermark (text, logo), output format."""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageStat
from pydantic import ValidationError

from gateway.assets import fonts
from gateway.assets.finish import MAX_LOGO_BYTES, Finished, Watermark, finish, load_logo

PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def _encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _gradient(width: int, height: int) -> Image.Image:
    """A mid-tone RGB picture (neither black nor white, so both the white text and its dark outline show)."""
    horizontal = Image.linear_gradient("L").rotate(90).resize((width, height))
    vertical = Image.linear_gradient("L").resize((width, height))
    return Image.merge("RGB", (horizontal, vertical, Image.new("L", (width, height), 128))).point(lambda v: 64 + v // 2)


def _noise(width: int, height: int) -> Image.Image:
    rng = random.Random(7)
    return Image.frombytes("RGB", (width, height), bytes(rng.getrandbits(8) for _ in range(width * height * 3)))


def _diff(a: Image.Image, b: Image.Image) -> Image.Image:
    return ImageChops.difference(a.convert("RGB"), b.convert("RGB")).convert("L")


def _mean_diff(a: Image.Image, b: Image.Image) -> float:
    return ImageStat.Stat(_diff(a, b)).mean[0]


def _red_logo_with_hole(size: int = 100, hole: int = 40) -> bytes:
    """A red square, opaque, with a fully transparent square hole in its centre."""
    logo = Image.new("RGBA", (size, size), (255, 0, 0, 255))
    start = (size - hole) // 2
    ImageDraw.Draw(logo).rectangle((start, start, start + hole - 1, start + hole - 1), fill=(0, 0, 0, 0))
    return _encode(logo)


# --- size -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "target"),
    [((1600, 896), (1600, 900)), ((1024, 1024), (1200, 1200)), ((768, 512), (800, 800)), ((512, 768), (300, 200))],
)
def test_the_output_has_exactly_the_requested_size(source: tuple[int, int], target: tuple[int, int]) -> None:
    result = finish(_encode(_gradient(*source)), output_format="png", size=target)
    assert isinstance(result, Finished)
    assert (result.width, result.height) == target == _open(result.data).size


def test_a_different_aspect_is_cropped_evenly_from_both_sides_not_padded_or_squashed() -> None:
    # 768x512 -> 800x800: scaled by 800/512 to 1200x800, then 200 px cut from each side, i.e. the outer 128 source
    # columns on both sides. Left and right bands of exactly that width vanish; the green centre fills the output.
    source = Image.new("RGB", (768, 512), (0, 200, 0))
    source.paste((255, 0, 0), (0, 0, 128, 512))
    source.paste((0, 0, 255), (640, 0, 768, 512))
    out = _open(finish(_encode(source), output_format="png", size=(800, 800)).data).convert("RGB")
    for x in (12, 400, 787):
        for y in (0, 400, 799):
            r, g, b = out.getpixel((x, y))  # type: ignore[misc]
            assert g > 190 and r < 10 and b < 10, (x, y, (r, g, b))
    # LANCZOS right at the cut: a little of the cropped bands bleeds into the first and last columns.
    assert out.getpixel((0, 400))[0] > 0 or out.getpixel((799, 400))[2] > 0  # type: ignore[index]


def test_a_square_image_is_scaled_up_to_a_larger_square() -> None:
    source = Image.new("RGB", (1024, 1024), (0, 0, 255))
    source.paste((255, 255, 0), (0, 0, 512, 512))  # top-left quarter yellow
    out = _open(finish(_encode(source), output_format="png", size=(1200, 1200)).data).convert("RGB")
    assert out.getpixel((300, 300)) == (255, 255, 0)
    assert out.getpixel((900, 900)) == (0, 0, 255)
    assert out.getpixel((590, 300)) == (255, 255, 0)  # the quarter is scaled too: 600 px wide, not 512
    assert out.getpixel((610, 300)) == (0, 0, 255)


@pytest.mark.parametrize("size", [None, (320, 240)], ids=["no-size", "same-size"])
def test_no_resampling_when_the_size_already_matches(size: tuple[int, int] | None) -> None:
    source = _noise(320, 240)  # any resampling or crop would change this pixel for pixel
    result = finish(_encode(source), output_format="png", size=size)
    assert (result.width, result.height) == (320, 240)
    assert _diff(_open(result.data), source).getbbox() is None


@pytest.mark.parametrize("size", [(0, 100), (100, -1), (9000, 100)])
def test_an_impossible_size_is_refused(size: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="output size"):
        finish(_encode(_gradient(64, 64)), output_format="png", size=size)


# --- format -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("source_format", ["PNG", "JPEG", "WEBP"])
def test_the_output_format_is_honoured(fmt: str, source_format: str) -> None:
    result = finish(
        _encode(_gradient(300, 200), source_format),
        output_format=fmt,  # type: ignore[arg-type]
        size=(160, 160),
        watermark=Watermark(text="Acme"),
    )
    decoded = _open(result.data)
    assert decoded.format == PIL_FORMATS[fmt]
    assert decoded.size == (160, 160) == (result.width, result.height)


def test_jpeg_output_of_an_rgba_input_is_flattened_on_white() -> None:
    source = Image.new("RGBA", (200, 100), (0, 0, 0, 0))  # left half transparent
    source.paste((0, 0, 255, 255), (100, 0, 200, 100))  # right half opaque blue
    decoded = _open(finish(_encode(source), output_format="jpeg").data)
    assert decoded.format == "JPEG" and decoded.mode == "RGB"
    assert all(c > 245 for c in decoded.getpixel((50, 50)))  # type: ignore[union-attr]
    r, g, b = decoded.getpixel((150, 50))  # type: ignore[misc]
    assert b > 230 and r < 20 and g < 20


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_transparency_is_kept_by_formats_that_have_it(fmt: str) -> None:
    source = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    source.paste((255, 0, 0, 255), (32, 0, 64, 64))
    decoded = _open(finish(_encode(source), output_format=fmt).data).convert("RGBA")  # type: ignore[arg-type]
    assert decoded.getpixel((10, 10))[3] == 0  # type: ignore[index]
    assert decoded.getpixel((50, 10))[3] == 255  # type: ignore[index]


# --- text watermark ---------------------------------------------------------------------------------------------

WIDTH, HEIGHT = 800, 600
REGIONS = {  # (left, top, right, bottom) the watermark must stay in
    "top-left": (0, 0, WIDTH // 2, HEIGHT // 2),
    "top-right": (WIDTH // 2, 0, WIDTH, HEIGHT // 2),
    "bottom-left": (0, HEIGHT // 2, WIDTH // 2, HEIGHT),
    "bottom-right": (WIDTH // 2, HEIGHT // 2, WIDTH, HEIGHT),
    "center": (WIDTH // 4, HEIGHT // 4, WIDTH * 3 // 4, HEIGHT * 3 // 4),
}


def _plain(source: Image.Image) -> Image.Image:
    return _open(finish(_encode(source), output_format="png").data)


def _marked(source: Image.Image, watermark: Watermark, logo: bytes | None = None) -> Image.Image:
    return _open(finish(_encode(source), output_format="png", watermark=watermark, logo=logo).data)


@pytest.mark.parametrize("position", list(REGIONS))
def test_text_changes_pixels_only_at_its_position(position: str) -> None:
    source = _gradient(WIDTH, HEIGHT)
    bbox = _diff(_marked(source, Watermark(text="Acme Corp", position=position)), _plain(source)).getbbox()  # type: ignore[arg-type]
    assert bbox is not None
    left, top, right, bottom = REGIONS[position]
    assert left <= bbox[0] and top <= bbox[1] and bbox[2] <= right and bbox[3] <= bottom, bbox
    margin = round(0.03 * HEIGHT)
    if position != "center":  # snug in its corner, `margin` from the two edges
        assert bbox[0] - margin in range(-1, 6) if "left" in position else WIDTH - margin - bbox[2] in range(-1, 6)
        assert bbox[1] - margin in range(-1, 12) if "top" in position else HEIGHT - margin - bbox[3] in range(-1, 12)
    else:
        assert abs((bbox[0] + bbox[2]) / 2 - WIDTH / 2) < 4 and abs((bbox[1] + bbox[3]) / 2 - HEIGHT / 2) < 10


@pytest.mark.parametrize("scale", [0.1, 0.2, 0.4])
def test_text_is_about_scale_times_the_image_width(scale: float) -> None:
    source = _gradient(WIDTH, HEIGHT)
    bbox = _diff(_marked(source, Watermark(text="Acme Corp", scale=scale)), _plain(source)).getbbox()
    assert bbox is not None
    assert abs((bbox[2] - bbox[0]) - scale * WIDTH) <= 0.05 * scale * WIDTH + 2


def test_text_that_would_not_fit_is_shrunk_to_fit_inside_the_margins() -> None:
    source = _gradient(800, 60)  # a banner: 0.5 of the width as text would be far taller than the image
    bbox = _diff(_marked(source, Watermark(text="Acme", scale=0.5)), _plain(source)).getbbox()
    assert bbox is not None
    assert bbox[1] >= 1 and bbox[3] <= 59


def test_higher_opacity_changes_the_pixels_more() -> None:
    source, plain = _gradient(WIDTH, HEIGHT), _plain(_gradient(WIDTH, HEIGHT))
    diffs = [_mean_diff(_marked(source, Watermark(text="Acme Corp", opacity=o)), plain) for o in (0.1, 0.4, 0.7, 1.0)]
    assert 0 < diffs[0] < diffs[1] < diffs[2] < diffs[3]
    assert diffs[3] / diffs[0] > 5  # roughly proportional, not a token difference


def test_text_is_white_with_a_dark_outline() -> None:
    source = Image.new("RGB", (WIDTH, HEIGHT), (128, 128, 128))
    marked = _marked(source, Watermark(text="HH", opacity=1.0, scale=0.4)).convert("L")
    lo, hi = marked.getextrema()  # type: ignore[misc]
    assert hi > 240  # the white glyphs
    assert lo < 60  # the dark outline that keeps them legible on a light picture


def test_chinese_text_draws_something() -> None:
    source = _gradient(WIDTH, HEIGHT)
    diff = _diff(_marked(source, Watermark(text="品牌水印", opacity=1.0)), _plain(source))
    assert diff.getbbox() is not None
    assert ImageStat.Stat(diff).mean[0] > 0.1


@pytest.mark.skipif(fonts.cjk_font_path() is None, reason="no CJK font installed (e.g. Debian fonts-wqy-zenhei)")
def test_chinese_text_is_drawn_with_real_glyphs() -> None:
    # A font without CJK glyphs draws the same box for every character: two different texts would look alike.
    source = _gradient(WIDTH, HEIGHT)
    first = _marked(source, Watermark(text="品牌", opacity=1.0))
    second = _marked(source, Watermark(text="天地", opacity=1.0))
    assert _mean_diff(first, second) > 0.1


# --- logo -------------------------------------------------------------------------------------------------------


def test_the_logo_keeps_its_colour_and_its_transparent_hole() -> None:
    source = Image.new("RGB", (1000, 1000), (40, 160, 40))
    watermark = Watermark(logo=True, position="top-left", opacity=1.0, scale=0.2, margin=0.0)
    marked = _marked(source, watermark, logo=load_logo(_red_logo_with_hole())).convert("RGB")
    # 100 px logo -> 200 px at the top-left corner; its 40 px hole -> the 80 px square from (60, 60).
    for point in [(10, 10), (30, 100), (190, 100), (100, 30), (100, 185)]:
        r, g, b = marked.getpixel(point)  # type: ignore[misc]
        assert r > 240 and g < 15 and b < 15, (point, (r, g, b))
    for point in [(70, 70), (100, 100), (130, 130)]:
        assert marked.getpixel(point) == (40, 160, 40), point
    assert marked.getpixel((300, 300)) == (40, 160, 40)


def test_a_translucent_logo_is_reddish_where_it_is_and_leaves_its_hole_alone() -> None:
    source = _gradient(WIDTH, HEIGHT)
    plain = _plain(source).convert("RGB")
    marked = _marked(source, Watermark(logo=True, position="top-left", margin=0.0), _red_logo_with_hole()).convert(
        "RGB"
    )
    r, g, b = marked.getpixel((10, 10))  # type: ignore[misc]
    pr, pg, pb = plain.getpixel((10, 10))  # type: ignore[misc]
    assert r > pr + 40 and g < pg and b < pb  # opacity 0.6: blended towards red
    hole_centre = (80, 80)  # the logo is 160 px wide; the hole spans 48..112
    assert marked.getpixel(hole_centre) == plain.getpixel(hole_centre)


@pytest.mark.parametrize(("scale", "logo_size"), [(0.1, (100, 100)), (0.25, (300, 100)), (0.4, (64, 128))])
def test_the_logo_is_scale_times_the_image_width_and_keeps_its_aspect(scale: float, logo_size: tuple[int, int]) -> None:
    source = Image.new("RGB", (1000, 1000), (0, 0, 0))
    logo = _encode(Image.new("RGB", logo_size, (255, 255, 255)))
    bbox = _diff(_marked(source, Watermark(logo=True, scale=scale, opacity=1.0), logo), source).getbbox()
    assert bbox is not None
    width, height = bbox[2] - bbox[0], bbox[3] - bbox[1]
    assert abs(width - scale * 1000) <= 1
    assert abs(height - scale * 1000 * logo_size[1] / logo_size[0]) <= 1


def test_logo_and_text_go_side_by_side_logo_first() -> None:
    source = Image.new("RGB", (1000, 1000), (0, 0, 128))
    logo = _encode(Image.new("RGB", (100, 100), (255, 0, 0)))
    marked = _marked(source, Watermark(logo=True, text="Acme", opacity=1.0, scale=0.3), logo).convert("RGB")
    bbox = _diff(marked, source).getbbox()
    assert bbox is not None
    assert abs((bbox[2] - bbox[0]) - 300) <= 0.05 * 300  # logo and text together are `scale` wide
    red = Image.eval(marked.getchannel("R"), lambda v: 255 if v > 200 else 0)
    red = ImageChops.multiply(red, Image.eval(marked.getchannel("G"), lambda v: 255 if v < 50 else 0))
    logo_box = red.getbbox()
    assert logo_box is not None and logo_box[0] == bbox[0]  # the logo is on the left...
    white = Image.eval(marked.convert("L"), lambda v: 255 if v > 230 else 0).getbbox()
    assert white is not None and white[0] > logo_box[2]  # ...and the (white) text on its right


def test_a_logo_watermark_without_a_logo_is_an_error() -> None:
    with pytest.raises(ValueError, match="no logo"):
        finish(_encode(_gradient(64, 64)), output_format="png", watermark=Watermark(logo=True))


def test_the_logo_given_to_finish_is_checked_too() -> None:
    with pytest.raises(ValueError, match="not a PNG, JPEG or WEBP"):
        finish(_encode(_gradient(64, 64)), output_format="png", watermark=Watermark(logo=True), logo=b"nope")


# --- load_logo --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_load_logo_normalises_to_rgba_png(fmt: str) -> None:
    source = Image.new("RGB", (120, 80), (10, 20, 200))
    decoded = _open(load_logo(_encode(source, fmt)))
    assert decoded.format == "PNG" and decoded.mode == "RGBA" and decoded.size == (120, 80)


def test_load_logo_keeps_transparency() -> None:
    decoded = _open(load_logo(_red_logo_with_hole()))
    assert decoded.getpixel((0, 0)) == (255, 0, 0, 255)
    assert decoded.getpixel((50, 50))[3] == 0  # type: ignore[index]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"this is not an image",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        _encode(Image.new("RGB", (8, 8)), "GIF"),
    ],
    ids=["empty", "text", "svg", "gif"],
)
def test_load_logo_refuses_what_is_not_a_png_jpeg_or_webp_image(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"the logo is (empty|not a PNG, JPEG or WEBP image)"):
        load_logo(data)


def test_load_logo_refuses_a_damaged_image() -> None:
    data = _encode(_noise(200, 200))
    with pytest.raises(ValueError, match="damaged or truncated PNG"):
        load_logo(data[: len(data) // 2])


def test_load_logo_refuses_a_file_over_2_mb() -> None:
    data = _encode(_noise(1000, 1000), compress_level=0)  # a valid ~3 MB PNG of only 1000x1000 px
    assert len(data) > MAX_LOGO_BYTES
    with pytest.raises(ValueError, match=r"the logo is 2\.9 MB; at most 2 MB"):
        load_logo(data)


def test_load_logo_refuses_5000x5000_px_before_decoding() -> None:
    data = _encode(Image.new("L", (5000, 5000)))  # compresses to a few KB
    assert len(data) < MAX_LOGO_BYTES
    with pytest.raises(ValueError, match="the logo is 5000x5000 px; at most 4096x4096"):
        load_logo(data)


def test_load_logo_accepts_4096_px_and_stores_it_at_most_1024_px_keeping_its_aspect() -> None:
    assert _open(load_logo(_encode(Image.new("L", (4096, 16))))).size == (1024, 4)
    assert _open(load_logo(_encode(Image.new("L", (300, 200))))).size == (300, 200)  # smaller logos stay as they are


# --- the model --------------------------------------------------------------------------------------------------


def test_watermark_defaults() -> None:
    watermark = Watermark(text="Acme")
    assert (watermark.logo, watermark.position, watermark.opacity, watermark.scale, watermark.margin) == (
        False,
        "bottom-right",
        0.6,
        0.2,
        0.03,
    )


def test_a_watermark_needs_text_or_logo() -> None:
    with pytest.raises(ValidationError, match="needs a text, the logo"):
        Watermark()
    with pytest.raises(ValidationError, match="needs a text, the logo"):
        Watermark(logo=False)
    assert Watermark(logo=True).text is None


@pytest.mark.parametrize(
    "body",
    [
        {"text": ""},
        {"text": "   "},
        {"text": "x" * 101},
        {"text": "A\x00B"},
        {"text": 5},
        {"logo": "yes"},
        {"logo": True, "position": "middle"},
        {"logo": True, "opacity": 0.01},
        {"logo": True, "opacity": 1.5},
        {"logo": True, "scale": 0.6},
        {"logo": True, "scale": 0.01},
        {"logo": True, "margin": 0.3},
        {"logo": True, "margin": -0.1},
        {"logo": True, "colour": "red"},
    ],
)
def test_invalid_watermarks_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        Watermark.model_validate(body)


def test_watermark_from_json_accepts_integral_numbers() -> None:
    watermark = Watermark.model_validate_json('{"text": "品牌", "opacity": 1, "margin": 0, "position": "center"}')
    assert (watermark.opacity, watermark.margin, watermark.position) == (1.0, 0.0, "center")


def test_every_watermark_field_is_described_in_the_schema() -> None:
    properties = Watermark.model_json_schema()["properties"]
    assert set(properties) == {"text", "logo", "position", "opacity", "scale", "margin"}
    assert all(prop.get("description") for prop in properties.values()), properties
