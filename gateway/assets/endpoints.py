"""Native assets API: download the stored image."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from gateway.assets import repository
from gateway.auth.dependencies import Authenticator
from gateway.common.ids import is_id
from gateway.deps import ReadSessionDep, ResourcesDep
from gateway.errors import NotFound, error_responses
from gateway.systems.service import Principal
from policies.scopes import Scope

router = APIRouter(prefix="/assets", tags=["assets"])

Reader = Annotated[Principal, Depends(Authenticator(any_of={Scope.generate, Scope.batch}))]


@router.get(
    "/{asset_id}",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}, **error_responses(404)},
)
async def download_asset(asset_id: str, principal: Reader, session: ReadSessionDep, res: ResourcesDep) -> FileResponse:
    """Download an image of one of the caller's jobs."""
    asset = await repository.get_for_system(session, asset_id, principal.system_id) if is_id(asset_id, "ast") else None
    path = res.store.path_for(asset.sha256, asset.format) if asset else None
    if asset is None or path is None or not path.is_file():
        raise NotFound("No such asset.", code="asset_not_found")
    return FileResponse(
        path,
        media_type=asset.content_type,
        headers={"ETag": f'"{asset.sha256}"', "Cache-Control": "private, max-age=31536000, immutable"},
        filename=f"{asset.id}.{path.suffix.lstrip('.')}",
        content_disposition_type="inline",
    )
