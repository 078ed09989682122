"""Asset representations in API responses."""

from __future__ import annotations

from pydantic import BaseModel

from gateway.assets.models import Asset


class AssetRead(BaseModel):
    id: str
    url: str
    width: int
    height: int
    format: str
    sha256: str
    bytes: int
    seed: int
    caption: str | None = None
    tags: list[str] | None = None

    @classmethod
    def of(cls, asset: Asset, base_url: str) -> AssetRead:
        return cls(
            id=asset.id,
            url=f"{base_url}/v1/assets/{asset.id}",
            width=asset.width,
            height=asset.height,
            format=asset.format,
            sha256=asset.sha256,
            bytes=asset.bytes,
            seed=asset.seed,
            caption=asset.caption,
            tags=asset.tags,
        )
