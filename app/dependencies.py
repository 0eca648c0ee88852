"""FastAPI dependencies: settings, the service state, API-key check. Override these in tests."""

from __future__ import annotations

from fastapi import Depends
from starlette.requests import HTTPConnection

from app.admission import check_api_key
from app.errors import AuthenticationError
from app.service import Service
from app.settings import Settings

#: WebSocket subprotocol carrying the key, for browsers (which cannot set headers there).
KEY_PROTOCOL_PREFIX = "openai-insecure-api-key."


def offered_subprotocols(connection: HTTPConnection) -> list[str]:
    """The subprotocols a WebSocket client offered (`Sec-WebSocket-Protocol`)."""
    header = connection.headers.get("sec-websocket-protocol", "")
    return [p.strip() for p in header.split(",") if p.strip()]


def get_service(connection: HTTPConnection) -> Service:
    """The app's `Service` (built by `create_app`)."""
    return connection.app.state.service


def get_settings(service: Service = Depends(get_service)) -> Settings:
    """The settings the app was built with."""
    return service.settings


def require_api_key(connection: HTTPConnection, settings: Settings = Depends(get_settings)) -> None:
    """401 unless `Authorization: Bearer <key>` matches the configured key (if any).

    HTTP routes under /v1 are checked earlier, before their body is read, by
    `app.middleware.AdmissionMiddleware`; this dependency is for routes it does not see
    (WebSockets). A WebSocket may send the key as the subprotocol
    `openai-insecure-api-key.<key>` instead of the header.
    """
    try:
        check_api_key(connection.headers.get("authorization", ""), settings.api_key)
    except AuthenticationError:
        keys = [
            p[len(KEY_PROTOCOL_PREFIX) :]
            for p in offered_subprotocols(connection)
            if p.startswith(KEY_PROTOCOL_PREFIX)
        ]
        if connection.scope["type"] != "websocket" or not keys:
            raise
        check_api_key(f"Bearer {keys[0]}", settings.api_key)
