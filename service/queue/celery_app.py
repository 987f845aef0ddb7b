"""The Celery application of queue mode, configured from ``Settings`` (built on demand, never at import).

Delivery guarantees: a worker takes one job at a time (prefetch 1) and acknowledges it only
when it has finished (late acknowledgement, rejected back to the queue when a pool process is
lost). A worker that dies outright (``kill -9``, a lost node) never acknowledges: the job goes
back on the queue once ``queue_visibility_timeout_s`` has passed (every worker looks for such jobs
every ``RESTORE_EVERY_S`` seconds, :func:`restore_lost_jobs_periodically`). A job is therefore run at
least once; its results are written atomically and idempotently (:mod:`service.queue.job_files`).
"""

from __future__ import annotations

import logging
import threading
from urllib.parse import urlsplit, urlunsplit

from service.settings import Settings

log = logging.getLogger(__name__)

TASK_NAME = "swinxseg.segment_job"
# How often a worker looks for jobs whose worker died (see restore_lost_jobs).
RESTORE_EVERY_S = 5.0
# Seconds to wait for Redis before a request is answered 503 (never a hung request).
_CONNECT_TIMEOUT_S = 3


def make_celery(settings: Settings):
    """A ``celery.Celery`` using ``settings.queue_url`` as broker and result backend."""
    from celery import Celery  # imported here: embedded mode never needs it

    if not settings.queue_url:
        raise ValueError("queue mode needs SWINXSEG_QUEUE_URL")
    transport = {
        "visibility_timeout": settings.queue_visibility_timeout_s,
        "socket_connect_timeout": _CONNECT_TIMEOUT_S,
        "socket_timeout": 30,
    }
    app = Celery("swinxseg", broker=settings.queue_url, backend=settings.queue_url)
    app.conf.update(
        task_default_queue=settings.queue_name,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_hijack_root_logger=False,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        redis_socket_connect_timeout=_CONNECT_TIMEOUT_S,
        result_expires=settings.job_ttl_s,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
    )
    return app


def redacted(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def restore_lost_jobs(app) -> None:
    """Put back on the queue every job taken more than ``visibility_timeout`` seconds ago and never
    acknowledged (its worker died). Blocking, one Redis round trip; safe to run from many
    processes at once (kombu holds a Redis lock while it restores).

    Why: kombu's Redis transport does this itself only on every tenth of its 10-second ticks, so a
    job of a killed worker waited the visibility timeout plus up to about 100 s (measured 96.5 s).
    """
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        channel.qos.restore_visible(num=channel.unacked_restore_limit, interval=1)


def restore_lost_jobs_periodically(app, *, every_s: float = RESTORE_EVERY_S) -> threading.Thread:
    """A daemon thread running :func:`restore_lost_jobs` every ``every_s`` seconds (a Redis that
    is down is only logged: the worker itself reconnects)."""

    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(every_s):
            try:
                restore_lost_jobs(app)
            except Exception as exc:  # any broker error: try again at the next tick
                log.debug("could not look for lost jobs: %s", exc)

    thread = threading.Thread(target=loop, name="swinxseg-restore-lost-jobs", daemon=True)
    thread.start()
    return thread
