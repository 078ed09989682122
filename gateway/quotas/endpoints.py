"""A system's own use and limits."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from gateway.auth.dependencies import Authenticator
from gateway.deps import ReadSessionDep
from gateway.quotas import service
from gateway.quotas.schemas import UsageRead
from gateway.systems.service import Principal
from policies.scopes import ALL_SCOPES

router = APIRouter(tags=["usage"])
AnyCaller = Annotated[Principal, Depends(Authenticator(any_of=ALL_SCOPES))]


@router.get("/usage", response_model=UsageRead)
async def get_usage(principal: AnyCaller, session: ReadSessionDep) -> UsageRead:
    """Today's use of the calling system against its limits."""
    return await service.usage_of(session, system_id=principal.system_id, system_name=principal.system_name)
