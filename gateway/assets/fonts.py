"""Fonts for text the gateway draws on images (preview pictures, watermarks).

A font with CJK glyphs is used when one is installed (e.g. Debian fonts-wqy-zenhei / fonts-noto-cjk); else Pillow's
own font, which has no CJK glyphs (Chinese text then comes out as boxes).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import ImageFont

CJK_FONT_PATHS = (
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",  # Fedora
    "/System/Library/Fonts/PingFang.ttc",  # macOS
    "/System/Library/Fonts/STHeiti Medium.ttc",
)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def has_cjk(text: str) -> bool:
    """Whether ``text`` has characters from the CJK blocks (or above), which need a CJK font."""
    return any(ord(c) > 0x2E80 for c in text)


def cjk_font_path() -> str | None:
    """The first installed CJK-capable font, or None."""
    for path in CJK_FONT_PATHS:
        if Path(path).exists():
            return path
    return None


@lru_cache(maxsize=64)
def load_font(size: int, cjk: bool) -> Font:
    """A font of ``size`` px: the installed CJK font if ``cjk`` and there is one, else Pillow's default font.

    Cached (the one piece of process-wide state); the fonts are only read, never changed, after loading.
    """
    if cjk:
        path = cjk_font_path()
        if path is not None:
            return ImageFont.truetype(path, size)
    return ImageFont.load_default(size=size)
