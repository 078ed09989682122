"""HTTP Basic in front of a server that has no auth of its own, the way a reverse proxy (nginx) adds it.

Real ComfyUI, the Z-Image and GLM-4.6V services have no authentication, and Gradio's own is a login form with
cookies; deployments put them behind ``auth_basic``. With ``--auth user:pass`` the emulators do the same on every
route, websockets included: a missing or wrong ``Authorization: Basic`` answers 401 with ``WWW-Authenticate:
Basic realm="..."`` and nginx's HTML body; a refused websocket handshake answers that same 401 (or closes, if the
server cannot send a body).
"""

from __future__ import annotations

from typing import Any

from gateway.emulators.core import EmulatorOptions, basic_auth_ok

NGINX_401 = (
    b"<html>\r\n<head><title>401 Authorization Required</title></head>\r\n<body>\r\n"
    b"<center><h1>401 Authorization Required</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


class ProxyBasicAuth:
    """ASGI middleware: pass requests with valid credentials (or all, when ``options.auth`` is unset)."""

    def __init__(self, app: Any, options: EmulatorOptions, realm: str = "Restricted") -> None:
        self.app = app
        self.options = options
        self.realm = realm

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or not self.options.credentials():
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if basic_auth_ok(headers.get("authorization"), self.options):
            await self.app(scope, receive, send)
            return
        response_headers = [
            (b"content-type", b"text/html"),
            (b"content-length", str(len(NGINX_401)).encode()),
            (b"www-authenticate", f'Basic realm="{self.realm}"'.encode()),
        ]
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 401, "headers": response_headers})
            await send({"type": "http.response.body", "body": NGINX_401})
            return
        await receive()  # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": 401, "headers": response_headers})
            await send({"type": "websocket.http.response.body", "body": NGINX_401})
        else:
            await send({"type": "websocket.close", "code": 1008})
