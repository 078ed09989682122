"""The route inventory: every route the app serves, with the scopes it declares."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fastapi.routing import iter_route_contexts

from gateway.auth.dependencies import Authenticator

# Every route there is. A new route fails the inventory test until it is added here (OWASP API9).
PUBLIC = {
    "GET /openapi.json",
    "GET /docs",
    "GET /docs/oauth2-redirect",
    "GET /redoc",
    "GET /healthz",
    "GET /readyz",
    "POST /oauth/token",
    "GET /files/{asset_id}",  # a signed, expiring link: the signature is the credential
}
PROTECTED = {
    "POST /v1/jobs",
    "GET /v1/jobs",
    "GET /v1/jobs/{job_id}",
    "POST /v1/jobs/{job_id}/cancel",
    "GET /v1/assets/{asset_id}",
    "GET /v1/usage",
    "GET /v1/templates",
    "GET /v1/templates/{name}",
    "PUT /v1/templates/{name}",
    "POST /v1/templates/{name}/render",
    "GET /v1/recipes",
    "GET /v1/recipes/{name}",
    "POST /v1/recipes/{name}",
    "GET /v1/batches",
    "GET /v1/batches/{batch_id}",
    "POST /v1/batches/{batch_id}/cancel",
    "PUT /v1/logo",
    "GET /v1/logo",
    "DELETE /v1/logo",
    "GET /v1/connectors/kinds",
    "GET /v1/connectors",
    "POST /v1/connectors",
    "GET /v1/connectors/{name}",
    "PUT /v1/connectors/{name}",
    "DELETE /v1/connectors/{name}",
    "POST /v1/connectors/{name}/test",
    "GET /v1/deliveries",
    "GET /v1/deliveries/{delivery_id}",
    "POST /v1/deliveries/{delivery_id}/replay",
    "POST /v1/callback-secret",
    "GET /v1/admin/systems",
    "POST /v1/admin/systems",
    "GET /v1/admin/systems/{name}",
    "PATCH /v1/admin/systems/{name}",
    "POST /v1/admin/systems/{name}/tokens",
    "POST /v1/admin/systems/{name}/tokens/{token_id}/revoke",
    "POST /v1/admin/systems/{name}/oauth-clients",
    "POST /v1/admin/systems/{name}/oauth-clients/{client_id}/revoke",
    "GET /v1/admin/systems/{name}/quota",
    "PATCH /v1/admin/systems/{name}/quota",
    "GET /v1/admin/systems/{name}/content-policy",
    "PUT /v1/admin/systems/{name}/content-policy",
    "GET /v1/admin/backends",
    "POST /v1/admin/backends",
    "GET /v1/admin/backends/{name}",
    "PATCH /v1/admin/backends/{name}",
    "DELETE /v1/admin/backends/{name}",
    "POST /v1/admin/backends/{name}/probe",
    "GET /v1/admin/audit",
}


@dataclass(frozen=True)
class RouteInfo:
    method: str
    path: str
    scopes: tuple[frozenset[str], ...]  # one set per Authenticator on the route

    @property
    def key(self) -> str:
        return f"{self.method} {self.path}"


def _authenticators(dependant: Any) -> list[frozenset[str]]:
    found = [dependant.call.any_of] if isinstance(dependant.call, Authenticator) else []
    for sub in dependant.dependencies:
        found += _authenticators(sub)
    return found


def routes(app: Any) -> list[RouteInfo]:
    out = []
    for context in iter_route_contexts(app.routes):
        dependant = getattr(context, "dependant", None)
        scopes = tuple(_authenticators(dependant)) if dependant is not None else ()
        for method in sorted((context.methods or set()) - {"HEAD"}):
            path = re.sub(r"\{(\w+):[^}]+\}", r"{\1}", str(context.path))  # `{name:connector_name}` is `{name}`
            out.append(RouteInfo(method=method, path=path, scopes=scopes))
    return out
