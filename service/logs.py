"""Logging for every entry point (``configure_logging``): one JSON object per line (``log_json``)
or plain text, with the request id of the request being handled.

The id lives in a context variable set by the request middleware; asyncio tasks and worker
threads started while handling a request inherit it, so a job's log lines carry the id of the
request that submitted it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime

# Characters that could end a log line or rewrite a terminal: C0/C1 controls (newline, CR, ESC...)
# and the Unicode line/paragraph separators some viewers break lines at.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as a Python escape (``\\n``, ``\\x1b``):
    a URL path, file name or header logged from a request can then never forge a log line."""
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], text)


def _safe(value: object) -> object:
    return escape_controls(value) if isinstance(value, str) else value


request_id_var: ContextVar[str | None] = ContextVar("swinxseg_request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and is emitted.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "request_id",
    "color_message",  # uvicorn's ANSI-coloured duplicate of the message
}


class RequestIdFilter(logging.Filter):
    """Stamp ``record.request_id`` from the context (``"-"`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = request_id_var.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "request_id", ...extra, "exc"}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": escape_controls(record.getMessage()),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = _safe(value)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)


class _EscapingFormatter(logging.Formatter):
    """One record is one line: controls in the message are escaped, and a traceback follows on
    lines that start with ``  | ``, so no text of it can pass for a record."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's API
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei) -> str:  # noqa: N802 - logging's API
        text = super().formatException(ei)
        return "\n".join("  | " + escape_controls(line) for line in text.splitlines())

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's API
        return "\n".join("  | " + escape_controls(line) for line in stack_info.splitlines())


class TextFormatter(_EscapingFormatter):
    """Plain lines for a terminal: ``time LEVEL logger: message``; inside a request the request id
    stands in brackets where the colon was. Extra fields follow as ``key=value`` (escaped too)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._in_request = _EscapingFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        request_id = getattr(record, "request_id", None)
        line = self._in_request.format(record) if request_id and request_id != "-" else super().format(record)
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}
        if extra:
            head, sep, rest = line.partition("\n")  # extras go on the record's own line
            head += " " + " ".join(f"{k}={escape_controls(str(v))}" for k, v in extra.items())
            line = head + sep + rest
        return line


def configure_logging(*, level: str = "INFO", json_lines: bool = False) -> None:
    """Route the root logger (and uvicorn's, which propagate) to one stderr handler of ours."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
