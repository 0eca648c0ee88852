"""Every error the service returns, mapped to status codes in one place.

Responses have the OpenAI shape `{"error": {"type", "message", "param"}}`. Status codes (design
section 5): 400 undecodable audio or bad parameter, 401 missing/invalid API key, 408 body not
received in time, 413 upload, duration, decoded samples or response over the limit, 415
unsupported media or container or codec, 422 validation, 429 queue full or too many uploads
at once (with `Retry-After`), 431 request headers too large, 503 not ready, 504 request
deadline passed. Anything unexpected becomes a 500 with a
generic message (details go to the log, not to the client).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


class APIError(Exception):
    """Base of the errors a route may raise; subclasses pin status and type."""

    status_code: int = 400
    error_type: str = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        # A short machine-readable cause, e.g. for the decode-failure metric's label.
        self.reason = reason or self.error_type


class BadRequestError(APIError):
    """400: a parameter has a bad value."""


class AudioDecodeError(APIError):
    """400: the upload is not audio we can decode (corrupt, empty, NaN/inf, too short)."""

    error_type = "invalid_audio"


class AuthenticationError(APIError):
    """401: API key missing or wrong."""

    status_code = 401
    error_type = "authentication_error"


class PayloadTooLargeError(APIError):
    """413: upload size or audio duration over the configured limit."""

    status_code = 413
    error_type = "payload_too_large"


class UnsupportedMediaError(APIError):
    """415: the upload's content type is not audio."""

    status_code = 415
    error_type = "unsupported_media_type"


class OverloadedError(APIError):
    """429: the batch queue is full; retry after the given number of seconds."""

    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


class NotReadyError(APIError):
    """503: the model is not loaded and warmed (starting or draining)."""

    status_code = 503
    error_type = "service_unavailable"


class RequestTimeoutError(APIError):
    """504: the request spent longer than the configured timeout in queue + compute."""

    status_code = 504
    error_type = "timeout_error"


class UploadTooLarge(StarletteHTTPException):
    """Raised from inside the body stream when the byte count passes the limit.

    An HTTPException subclass because FastAPI re-raises those from body parsing (any other
    exception there becomes a generic 400).
    """

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(413, f"request body over the limit of {limit_bytes} bytes")


class BodyReadTimeout(StarletteHTTPException):
    """408, raised from inside the body stream when the client pauses or takes too long."""

    def __init__(self, idle_s: float, total_s: float) -> None:
        super().__init__(
            408,
            f"request body not received in time (pauses over {idle_s:g} s or over {total_s:g} s "
            "in all)",
            headers={"Connection": "close"},
        )


class ErrorDetail(BaseModel):
    """What went wrong: a machine-readable type, a message, and the parameter at fault."""

    type: str
    message: str
    param: str | None = None


class ErrorBody(BaseModel):
    """The error envelope every non-2xx response carries (OpenAI's shape)."""

    error: ErrorDetail


_ERROR_DESCRIPTIONS = {
    400: "Undecodable audio (corrupt, empty, too short, NaN, sample rate or channels out of "
    "bounds) or a bad parameter.",
    401: "Missing or wrong API key (checked before the body is read).",
    404: "No such model.",
    408: "The request body was not received in time.",
    413: "Upload, audio duration, decoded samples, request audio or response size over a limit.",
    415: "Not an allowed container or codec, or not an audio media type.",
    422: "Request validation failed.",
    429: "Too many uploads or queued requests; retry after `Retry-After` seconds.",
    431: "Too many or too large request headers.",
    503: "Not ready (starting, draining, or the batch worker died).",
    504: "The request's deadline passed (decode, queue, inference, formatting).",
}


def error_responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI `responses` entries for the given error status codes (the envelope schema)."""
    return {code: {"model": ErrorBody, "description": _ERROR_DESCRIPTIONS[code]} for code in codes}


def error_body(error_type: str, message: str, param: str | None = None) -> dict:
    """The JSON error envelope."""
    return {"error": {"type": error_type, "message": message, "param": param}}


def error_response(
    status_code: int,
    error_type: str,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A JSONResponse carrying the error envelope."""
    return JSONResponse(
        error_body(error_type, message, param), status_code=status_code, headers=headers
    )


_HTTP_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limit_error",
    431: "request_header_fields_too_large",
    503: "service_unavailable",
    504: "timeout_error",
}


def install_error_handlers(app: FastAPI, on_error: Callable[[str], None] | None = None) -> None:
    """Register the handlers; `on_error(type)` is called for each error response (metrics)."""

    def count(error_type: str) -> None:
        if on_error is not None:
            on_error(error_type)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        count(exc.error_type)
        return error_response(exc.status_code, exc.error_type, exc.message, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "header")]
        param = ".".join(loc) or None
        message = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
            for e in errors
        )
        count("validation_error")
        return error_response(422, "validation_error", message or "invalid request", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = _HTTP_TYPES.get(exc.status_code, "http_error")
        count(error_type)
        return error_response(
            exc.status_code, error_type, str(exc.detail), None, dict(exc.headers or {})
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged (with its request id) by app.middleware.RequestContextMiddleware.
        count("internal_error")
        return error_response(500, "internal_error", "internal server error")
