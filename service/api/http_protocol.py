"""uvicorn's h11 protocol with its own 400 answer in the service's JSON error shape.

A request uvicorn cannot parse (a bad request line, a malformed or oversized header block, an
invalid ``Content-Length``) never reaches the app: uvicorn answers it itself with a plain-text
``Invalid HTTP request received.``. This subclass answers the same 400 with
``{"error": "bad_request", "detail": ..., "request_id": null}`` instead, so every error of the
service is JSON. (No request id exists yet: the request was never parsed.) uvicorn's other
built-in answers cannot occur here: ``limit_concurrency`` is not used (its 503), and the app's
middleware answers every exception with a JSON 500 before uvicorn's own 500 would apply.
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.api.errors import error_body

_DETAIL = "invalid HTTP request: the request line or headers could not be parsed"


class JsonErrorH11Protocol(H11Protocol):
    """Pass as ``uvicorn.run(..., http=JsonErrorH11Protocol)``."""

    def send_400_response(self, msg: str) -> None:  # uvicorn's hook; msg is its fixed text
        body = json.dumps(error_body("bad_request", _DETAIL, None)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()
