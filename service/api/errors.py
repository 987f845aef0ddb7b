"""The ONE mapping from errors to HTTP responses: ``{"error": code, "detail": msg, "request_id": id}``.

Library code raises the typed errors of :mod:`service.errors` (each carries ``http_status`` and
``code``); the few HTTP-only conditions (auth, queue, jobs) get their own subclasses here so that
every error response of the app, including FastAPI's validation errors and Starlette's 404/405,
leaves through :func:`error_response` in the same shape and is counted once in the metrics.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import SwinxsegError

if TYPE_CHECKING:
    from service.api.metrics import ServiceMetrics

log = logging.getLogger(__name__)

INTERNAL_ERROR_CODE = "internal_error"


class HttpError(SwinxsegError):
    """An HTTP-level condition with optional response headers (``Retry-After``, ``WWW-Authenticate``)."""

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = dict(headers or {})


class BadRequestError(HttpError):
    code, http_status = "bad_request", 400


class UnauthorizedError(HttpError):
    code, http_status = "unauthorized", 401

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="swinxseg"'})


class NotFoundError(HttpError):
    code, http_status = "not_found", 404


class ConflictError(HttpError):
    code, http_status = "conflict", 409


class UseJobsError(HttpError):
    """Queue mode: the API runs no model, so a case goes through ``POST /v1/jobs``."""

    code, http_status = "use_jobs", 409


class QueueUnavailableError(HttpError):
    """Queue mode: Redis cannot be reached, so a job cannot be queued (nothing was kept)."""

    code, http_status = "queue_unavailable", 503

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class GoneError(HttpError):
    code, http_status = "gone", 410


class QueueFullError(HttpError):
    code, http_status = "queue_full", 429

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, headers={"Retry-After": str(int(retry_after_s))})


class NotReadyError(HttpError):
    code, http_status = "model_not_ready", 503

    def __init__(self, message: str, *, retry_after_s: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(int(retry_after_s))})


def request_id_of(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def error_body(code: str, detail: str, request_id: str | None) -> dict[str, str | None]:
    return {"error": code, "detail": detail, "request_id": request_id}


def error_response(
    request: Request, *, status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Build the JSON error response and count it under ``swinxseg_failures_total{reason=code}``."""
    metrics: ServiceMetrics | None = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.failures.labels(reason=code).inc()
    return JSONResponse(error_body(code, detail, request_id_of(request)), status_code=status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    # One readable line, e.g. "query.overlap: Input should be less than 1", instead of a list.
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


# Each handler is registered for its own exception type only (install_error_handlers).
async def _swinxseg_handler(request: Request, exc: SwinxsegError) -> JSONResponse:
    if exc.http_status >= 500:
        log.error("request failed: %s: %s", exc.code, exc.message)
    return error_response(
        request,
        status=exc.http_status,
        code=exc.code,
        detail=exc.message,
        headers=getattr(exc, "headers", None),
    )


async def _validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(request, status=422, code="validation_error", detail=_validation_detail(exc))


async def _http_exception_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, f"http_{exc.status_code}")
    return error_response(
        request, status=exc.status_code, code=code, detail=str(exc.detail), headers=exc.headers
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers; unexpected exceptions are answered by the request middleware."""
    app.add_exception_handler(SwinxsegError, _swinxseg_handler)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)  # type: ignore[arg-type]
