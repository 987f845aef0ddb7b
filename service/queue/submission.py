"""Putting one job on the cluster: its folder in shared storage, then its Celery task.

Both submitters use this: the API's queue store (``POST /v1/jobs``) and ``swinxseg batch
--queue``. The folder (:mod:`service.queue.job_files`) is complete before the task is sent, so a
worker never takes a job whose input is not there yet; when sending fails the folder is removed,
so nothing is left half-queued.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from service.api.errors import QueueUnavailableError
from service.api.jobs import INPUT_NAME
from service.queue.celery_app import TASK_NAME, redacted
from service.queue.job_files import JOB_FILE, write_json
from service.settings import Settings

log = logging.getLogger(__name__)

# One quick retry replaces a connection that went stale (Redis restarted); a Redis that is down
# fails within a second or two, so the submitter hears about it rather than hanging.
_PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}


def new_job_id() -> str:
    """A fresh job id (uuid4, 32 hex digits)."""
    return uuid.uuid4().hex


def submit_job(root: Path, celery, settings: Settings, *, place_input: Callable[[Path], object], meta: dict,
               clock: Callable[[], float] = time.time, job_id: str | None = None) -> str:
    """Create ``<root>/<id>/`` (``input.bin`` by ``place_input(path)``, then ``job.json`` from
    ``meta``: ``filename``, ``media_type``, ``want_preview``, ``overlap``, ...) and send its task.
    ``job_id``: one from :func:`new_job_id` that the caller recorded first (default: a new one).

    Returns the job id (32 hex digits). Blocking (file copies, one Redis round trip).

    Raises:
        QueueUnavailableError: Redis cannot be reached (the folder is removed again).
    """
    job_id = job_id or new_job_id()
    folder = Path(root) / job_id
    try:
        folder.mkdir()
        place_input(folder / INPUT_NAME)
        write_json(folder / JOB_FILE, {"id": job_id, **meta, "created_at": clock()})
        send_job(celery, settings, job_id)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return job_id


def send_job(celery, settings: Settings, job_id: str) -> None:
    """Send the task of the job whose folder is ready (the task id is the job id).

    Raises:
        QueueUnavailableError: Redis cannot be reached.
    """
    try:
        celery.send_task(TASK_NAME, args=[job_id], task_id=job_id, queue=settings.queue_name,
                         retry=True, retry_policy=_PUBLISH_RETRY)
    except Exception as exc:  # kombu/redis raise many types for "cannot publish"
        log.warning("could not enqueue job %s: %s", job_id, exc)
        raise QueueUnavailableError(
            f"the job queue {redacted(settings.queue_url or '')} is unreachable; retry later"
        ) from None
