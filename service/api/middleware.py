"""The request middleware: request id in and out, access log line, HTTP metrics, last-resort 500.

A plain ASGI middleware rather than ``BaseHTTPMiddleware``: it does not buffer or re-task the
request (uploads stream straight through) and it sees exceptions no handler took, so it can
answer them with a JSON 500 without traceback text while the server keeps serving.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import INTERNAL_ERROR_CODE, error_body
from service.api.metrics import ServiceMetrics
from service.logs import request_id_var

log = logging.getLogger("swinxseg.api")
access_log = logging.getLogger("swinxseg.access")

REQUEST_ID_HEADER = "x-request-id"
# A caller's id is echoed only if it is short and plain, so it cannot inject into logs or headers.
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# Polled by orchestrators every few seconds: log them at DEBUG so they do not drown the rest.
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


def _incoming_request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER.encode():
            candidate = value.decode("latin-1").strip()
            if _SAFE_REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def _route_template(scope: Scope) -> str:
    # The template ("/v1/jobs/{job_id}"), never the raw path, keeps the label set bounded.
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            self.metrics.failures.labels(reason=INTERNAL_ERROR_CODE).inc()
            if not response_started:
                await self._send_internal_error(send_with_id, request_id)
            status = 500
        finally:
            self._record(scope, status, time.perf_counter() - started, request_id)
            request_id_var.reset(token)

    @staticmethod
    async def _send_internal_error(send: Send, request_id: str) -> None:
        body = json.dumps(
            error_body(INTERNAL_ERROR_CODE, "internal server error; the server log has the details", request_id)
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _record(self, scope: Scope, status: int, seconds: float, request_id: str) -> None:
        route, method = _route_template(scope), scope.get("method", "")
        self.metrics.http_requests.labels(route=route, method=method, status=str(status)).inc()
        self.metrics.http_duration.labels(route=route, method=method).observe(seconds)
        level = logging.DEBUG if route in _QUIET_ROUTES and status < 400 else logging.INFO
        access_log.log(
            level,
            "%s %s -> %d",
            method,
            scope.get("path", ""),
            status,
            extra={
                "request_id": request_id,
                "route": route,
                "method": method,
                "status": status,
                "seconds": round(seconds, 4),
            },
        )
