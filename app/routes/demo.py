"""The try-it page: `GET /` and its files under `/demo/` (on unless `HLSTM_DEMO_PAGE=false`).

Static files from `app/static` (HTML, one script, one style sheet, the AudioWorklet that takes
microphone samples), read once, no build step, nothing fetched from elsewhere: the page works
offline. It calls `/v1/models`, `/v1/audio/...` and `/v1/realtime` as any client does, with the
API key the user types (kept in the tab: memory and sessionStorage), so it adds no new power.
Every file goes out with a Content-Security-Policy that allows only this origin's scripts,
styles and connections, no inline script, no eval, no plugins, no framing.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import orjson
from fastapi import APIRouter, Depends, Response
from starlette.exceptions import HTTPException

from app.dependencies import get_settings
from app.settings import Settings

STATIC = Path(__file__).resolve().parent.parent / "static"

#: Files under /demo/ and their media types (anything else is a 404).
ASSETS = {
    "demo.js": "text/javascript; charset=utf-8",
    "pcm-worklet.js": "text/javascript; charset=utf-8",
    "demo.css": "text/css; charset=utf-8",
}

#: `connect-src 'self'` covers ws:/wss: to this host (CSP 3); blob: lets the page's own
#: recordings (blob URLs it made) be fetched, played and downloaded.
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "media-src 'self' blob:",
        "connect-src 'self' blob:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "microphone=(self), camera=(), geolocation=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["demo"], include_in_schema=False)


@cache
def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def _file(name: str, media_type: str) -> Response:
    return Response(_read(name), media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/")
async def page() -> Response:
    """The try-it page."""
    return _file("index.html", "text/html; charset=utf-8")


@router.get("/demo/config.json")
async def page_config(settings: Settings = Depends(get_settings)) -> Response:
    """What the page needs before its first /v1 call: whether a key is asked, the limits."""
    body = {
        "api_key_required": settings.api_key is not None,
        "max_upload_mb": settings.max_upload_mb,
        "max_audio_seconds": settings.max_audio_seconds,
        "max_embedding_values": settings.max_embedding_values,
        "realtime_max_append_bytes": settings.realtime_max_append_bytes,
    }
    return Response(orjson.dumps(body), media_type="application/json", headers=SECURITY_HEADERS)


@router.get("/demo/{name}")
async def asset(name: str) -> Response:
    """The page's script, style sheet and AudioWorklet module."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, f"no file {name!r} under /demo/")
    return _file(name, media_type)
