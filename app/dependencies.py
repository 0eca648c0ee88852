"""FastAPI dependencies: settings, the service state, API-key check. Override these in tests."""

from __future__ import annotations

from fastapi import Depends
from starlette.requests import HTTPConnection

from app.admission import check_api_key
from app.service import Service
from app.settings import Settings


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
    (WebSockets).
    """
    check_api_key(connection.headers.get("authorization", ""), settings.api_key)
