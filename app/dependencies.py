"""FastAPI dependencies: settings, the service state, API-key check. Override these in tests."""

from __future__ import annotations

import secrets

from fastapi import Depends, Request

from app.errors import AuthenticationError
from app.service import Service
from app.settings import Settings


def get_service(request: Request) -> Service:
    """The app's `Service` (built by `create_app`)."""
    return request.app.state.service


def get_settings(service: Service = Depends(get_service)) -> Settings:
    """The settings the app was built with."""
    return service.settings


def require_api_key(request: Request, settings: Settings = Depends(get_settings)) -> None:
    """401 unless `Authorization: Bearer <key>` matches the configured key (if any)."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value()
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError(
            "missing API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not secrets.compare_digest(token.strip().encode(), expected.encode()):
        raise AuthenticationError("invalid API key", headers={"WWW-Authenticate": "Bearer"})
