"""Demo systems for ``imagegate serve --demo``: crm, oa and design with seed 002's scopes.

Their keys are kept in ``<var>/demo-tokens.json`` (mode 0600) so that the same keys work across restarts.
This file is a convenience of the demo only; real systems' keys are never stored in plain text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.db.engine import transaction
from gateway.systems import repository, service
from policies.scopes import DEMO_SYSTEMS


async def ensure_demo_systems(sessionmaker: async_sessionmaker[AsyncSession], var_dir: Path) -> dict[str, str]:
    path = var_dir / "demo-tokens.json"
    saved: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    tokens: dict[str, str] = {}
    async with transaction(sessionmaker) as session:
        for name, scopes in DEMO_SYSTEMS.items():
            system = await repository.get_system_by_name(session, name)
            if system is None:
                tokens[name] = (await service.create_system(session, name=name, scopes=list(scopes))).secret
                continue
            known = saved.get(name)
            principal = await service.authenticate(session, known) if known else None
            if principal is not None and principal.system_id == system.id:
                tokens[name] = known  # type: ignore[assignment]
            else:
                tokens[name] = (await service.issue_token(session, system_name=name)).secret
    _save(path, tokens)
    return tokens


def _save(path: Path, tokens: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(tokens, handle, indent=2)
