"""Admin API for systems: create, list, change scopes, issue and revoke keys and OAuth2 clients, quotas,
content policies. Every change is written to the audit log in the same transaction."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, status
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.audit.service import Actor, record
from gateway.auth.dependencies import Authenticator
from gateway.deps import ReadSessionDep, SessionDep
from gateway.errors import error_responses
from gateway.moderation import service as moderation
from gateway.moderation.schemas import ContentPolicyRead, ContentPolicyUpdate
from gateway.quotas import repository as quota_repository
from gateway.quotas import service as quotas
from gateway.quotas.schemas import Limits, QuotaUpdate, UsageRead
from gateway.systems import repository, service
from gateway.systems.models import OAuthClient, System, Token
from gateway.systems.schemas import (
    ClientIssued,
    ClientRead,
    SystemCreate,
    SystemCreated,
    SystemList,
    SystemRead,
    SystemUpdate,
    TokenCreate,
    TokenIssued,
    TokenRead,
)
from gateway.systems.service import Principal
from policies.scopes import Scope

router = APIRouter(prefix="/admin/systems", tags=["admin: systems"], responses=error_responses(404))
Admin = Annotated[Principal, Depends(Authenticator(any_of={Scope.admin}))]
Name = Annotated[str, Path(max_length=64, pattern=r"^[a-z][a-z0-9_-]{0,63}$", description="The system's name")]
TokenId = Annotated[str, Path(pattern=r"^tok_[0-9a-f]{28}$")]
ClientId = Annotated[str, Path(pattern=r"^cli_[0-9a-f]{28}$")]


def _actor(request: Request, admin: Principal) -> Actor:
    return Actor.of(request, admin.system_name, admin.credential)


async def _read(session: AsyncSession, system: System) -> SystemRead:
    quota = await quota_repository.get_quota(session, system.id)
    tokens = list(await repository.tokens_of(session, system.id))
    clients = list(await repository.clients_of(session, system.id))
    return SystemRead.of(system, Limits.of(quota), tokens, clients)


@router.get("", response_model=SystemList)
async def list_systems(_: Admin, session: ReadSessionDep) -> SystemList:
    """Every system with its scopes, limits, keys (prefixes only) and OAuth2 clients."""
    return SystemList(items=[await _read(session, s) for s in await repository.list_systems(session)])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SystemCreated, responses=error_responses(409))
async def create_system(body: SystemCreate, admin: Admin, request: Request, session: SessionDep) -> SystemCreated:
    """Create a system and its first API key (and, with `oauth`, an OAuth2 client); secrets are shown once."""
    issued = await service.create_system(session, name=body.name, scopes=[str(s) for s in body.scopes])
    client = await service.create_oauth_client(session, system_name=body.name) if body.oauth else None
    record(
        session,
        _actor(request, admin),
        "system.create",
        target=f"system:{body.name}",
        details={"scopes": issued.system.scopes, "oauth": body.oauth},
    )
    await session.commit()
    read = await _read(session, issued.system)
    return SystemCreated(
        **read.model_dump(),
        token=issued.secret,
        client_id=client.client.id if client else None,
        client_secret=client.secret if client else None,
    )


@router.get("/{name}", response_model=SystemRead)
async def get_system(name: Name, _: Admin, session: ReadSessionDep) -> SystemRead:
    """One system."""
    return await _read(session, await service.get_system(session, name))


@router.patch("/{name}", response_model=SystemRead)
async def update_system(
    name: Name, body: SystemUpdate, admin: Admin, request: Request, session: SessionDep
) -> SystemRead:
    """Change a system's scopes (its keys and tokens follow from the next request on)."""
    system = await service.set_scopes(session, name=name, scopes=[str(s) for s in body.scopes])
    record(session, _actor(request, admin), "system.update", target=f"system:{name}", details={"scopes": system.scopes})
    await session.commit()
    return await _read(session, system)


@router.post("/{name}/tokens", status_code=status.HTTP_201_CREATED, response_model=TokenIssued)
async def issue_token(
    name: Name, body: TokenCreate, admin: Admin, request: Request, session: SessionDep
) -> TokenIssued:
    """Issue another API key (to rotate: issue, deploy, revoke the old one); shown once."""
    scopes = [str(s) for s in body.scopes] if body.scopes is not None else None
    issued = await service.issue_narrowed_token(session, name=name, scopes=scopes)
    record(
        session,
        _actor(request, admin),
        "token.issue",
        target=f"system:{name}",
        details={"token_id": issued.token.id, "prefix": issued.token.prefix, "scopes": scopes},
    )
    await session.commit()
    return TokenIssued(**TokenRead.of(issued.token).model_dump(), token=issued.secret)


@router.post("/{name}/tokens/{token_id}/revoke", response_model=TokenRead)
async def revoke_token(name: Name, token_id: TokenId, admin: Admin, request: Request, session: SessionDep) -> TokenRead:
    """Revoke an API key; it is refused from the next request on."""
    token = await service.revoke_of(session, Token, name=name, item_id=token_id)
    record(session, _actor(request, admin), "token.revoke", target=f"system:{name}", details={"token_id": token.id})
    await session.commit()
    return TokenRead.of(token)


@router.post("/{name}/oauth-clients", status_code=status.HTTP_201_CREATED, response_model=ClientIssued)
async def create_client(name: Name, admin: Admin, request: Request, session: SessionDep) -> ClientIssued:
    """Create an OAuth2 client-credentials client; its secret is shown once."""
    issued = await service.create_oauth_client(session, system_name=name)
    record(
        session,
        _actor(request, admin),
        "oauth_client.create",
        target=f"system:{name}",
        details={"client_id": issued.client.id},
    )
    await session.commit()
    return ClientIssued(**ClientRead.of(issued.client).model_dump(), client_secret=issued.secret)


@router.post("/{name}/oauth-clients/{client_id}/revoke", response_model=ClientRead)
async def revoke_client(
    name: Name, client_id: ClientId, admin: Admin, request: Request, session: SessionDep
) -> ClientRead:
    """Revoke an OAuth2 client: no new tokens, and its issued tokens stop working at once."""
    client = await service.revoke_of(session, OAuthClient, name=name, item_id=client_id)
    record(
        session,
        _actor(request, admin),
        "oauth_client.revoke",
        target=f"system:{name}",
        details={"client_id": client.id},
    )
    await session.commit()
    return ClientRead.of(client)


@router.get("/{name}/quota", response_model=UsageRead)
async def get_quota(name: Name, _: Admin, session: ReadSessionDep) -> UsageRead:
    """A system's limits and today's use."""
    system = await service.get_system(session, name)
    return await quotas.usage_of(session, system_id=system.id, system_name=system.name)


@router.patch("/{name}/quota", response_model=UsageRead)
async def set_quota(name: Name, body: QuotaUpdate, admin: Admin, request: Request, session: SessionDep) -> UsageRead:
    """Change a system's limits: the fields given change, `null` removes a limit."""
    system = await service.get_system(session, name)
    await quotas.set_limits(session, system_id=system.id, body=body)
    record(
        session,
        _actor(request, admin),
        "quota.set",
        target=f"system:{name}",
        details=body.model_dump(include=body.model_fields_set),
    )
    await session.commit()
    return await quotas.usage_of(session, system_id=system.id, system_name=system.name)


@router.get("/{name}/content-policy", response_model=ContentPolicyRead)
async def get_content_policy(name: Name, _: Admin, session: ReadSessionDep) -> ContentPolicyRead:
    """A system's additions to the shipped content lists."""
    system = await service.get_system(session, name)
    policy = await moderation.get_policy(session, system.id)
    return moderation.read_policy(name, policy)


@router.put("/{name}/content-policy", response_model=ContentPolicyRead)
async def set_content_policy(
    name: Name, body: ContentPolicyUpdate, admin: Admin, request: Request, session: SessionDep
) -> ContentPolicyRead:
    """Replace a system's extra terms, allowed terms and per-category actions."""
    system = await service.get_system(session, name)
    policy = await moderation.set_policy(session, system_id=system.id, body=body)
    record(
        session,
        _actor(request, admin),
        "content_policy.set",
        target=f"system:{name}",
        # Counts, not the terms: the log says what changed without copying the lists around.
        details={
            "extra_terms": {k: len(v) for k, v in policy.extra.items()},
            "allow_terms": len(policy.allow),
            "actions": policy.actions,
        },
    )
    await session.commit()
    return moderation.read_policy(name, policy)
