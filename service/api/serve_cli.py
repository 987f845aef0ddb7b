"""``swinxseg serve``: run the HTTP service with uvicorn (one worker: one model, one GPU cap).

Settings come from ``SWINXSEG_*`` environment variables; the flags here override them. Prefer
``SWINXSEG_API_KEY`` over ``--api-key`` (flags show up in ``ps``).
"""

from __future__ import annotations

import argparse
import logging

from service.cli_flags import MODEL_FLAGS, Flag, add_settings_flags
from service.cli_flags import settings_from_args as settings_from
from service.settings import Settings

log = logging.getLogger(__name__)

# Request line + headers a client may send (bytes); larger is uvicorn's (JSON) 400. uvicorn's
# default, written out so the limit is documented.
H11_MAX_HEADER_BYTES = 16 * 1024

HELP = "run the HTTP service"

# The flags that set Settings fields (type, choices and range come from the field).
FLAGS = (
    Flag("host", help="interface to bind (default 127.0.0.1; 0.0.0.0 in the container)"),
    Flag("port", help="TCP port (default 8000)"),
    *MODEL_FLAGS,
    Flag("api_key", help="require this key (X-API-Key or Bearer); prefer SWINXSEG_API_KEY"),
    Flag("queue_size", help="requests that may wait for the model before 429"),
    Flag("log_json", help="one JSON object per log line"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_flags(parser, FLAGS)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment first, flags on top (pydantic-settings gives init arguments priority)."""
    return settings_from(args, FLAGS)


def _log_level(args: argparse.Namespace, settings: Settings) -> str:
    # The top-level `swinxseg --log-level` defaults to INFO; only an explicit other value beats the env.
    flag = getattr(args, "log_level", None)
    return flag if flag and flag.upper() != "INFO" else settings.log_level


def run(args: argparse.Namespace) -> int:
    from service.api.app import build_segmenter, create_app
    from service.logs import configure_logging
    from service.workdir import ensure_base

    settings = settings_from_args(args)
    configure_logging(level=_log_level(args, settings), json_lines=settings.log_json)
    ensure_base(settings.work_dir)  # a work folder that cannot be made is one error line, not a traceback
    # Load the model before the server starts: a bad model folder is then one clear error line
    # and exit code 3 from `swinxseg`, not a lifespan traceback. Warm-up still runs in the lifespan.
    app = create_app(settings, segmenter=build_segmenter(settings))
    return serve_app(app, settings)


def serve_app(app, settings: Settings) -> int:
    """Run ``app`` under uvicorn with the service's options (one worker, JSON 400s, our logging);
    returns the exit code."""
    import uvicorn

    from service.api.http_protocol import JsonErrorH11Protocol

    log.info("serving on http://%s:%d (docs at /docs)", settings.host, settings.port)
    try:
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            workers=1,  # the GPU cap and the one-inference guard are per process
            log_config=None,  # keep our handlers (JSON lines) instead of uvicorn's dictConfig
            access_log=False,  # our middleware writes the access line, with the request id
            server_header=False,
            http=JsonErrorH11Protocol,  # uvicorn's own 400s in our JSON error shape
            h11_max_incomplete_event_size=H11_MAX_HEADER_BYTES,
            timeout_graceful_shutdown=30,
        )
    except SystemExit as exc:  # uvicorn exits 3 when the lifespan (model load) fails
        return int(exc.code or 0)
    return 0
