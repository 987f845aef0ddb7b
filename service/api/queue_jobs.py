"""The job store of queue mode: jobs live in shared storage and on the Celery queue, not here.

The API writes each job's folder (:mod:`service.queue.job_files`) and sends its task; every
answer is read back from that folder, so any API replica, or an API restarted meanwhile,
answers for every job. Same interface as :class:`service.api.jobs.JobStore`, so the routes do
not care which mode runs. Redis unreachable: submitting answers 503 (nothing is half-queued).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from service.api.cases import run_blocking
from service.api.errors import GoneError, NotFoundError, QueueUnavailableError
from service.api.gpu_guard import Ticket
from service.api.jobs import INPUT_NAME, Job, JobContext, reap_periodically
from service.api.uploads import Upload
from service.progress import Progress
from service.queue.celery_app import TASK_NAME, redacted
from service.queue.job_files import JOB_FILE, PROGRESS_FILE, RESULT_FILE, RUNNING_FILE, read_json, write_json
from service.settings import Settings
from service.storage import is_job_id

log = logging.getLogger(__name__)

EXPIRED_FOLDER = ".expired"  # one empty file per expired id, so it answers 410 rather than 404
_REMEMBER_EXPIRED_S = 7 * 24 * 3600
_PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5}


class QueueJobStore:
    def __init__(self, root: Path, *, settings: Settings, celery, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        (self.root / EXPIRED_FOLDER).mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self.ttl_s = settings.job_ttl_s
        self.celery = celery
        self.clock = clock

    def __len__(self) -> int:
        return sum(1 for path in self.root.iterdir() if is_job_id(path.name))

    def expires_at(self, job: Job) -> float | None:
        return None if job.finished_at is None else job.finished_at + self.ttl_s

    # ------------------------------------------------------------------ the queue
    def check_broker(self) -> str | None:
        """``None`` when Redis answers, else why not (blocking; a few seconds at most)."""
        try:
            with self.celery.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=3)
                connection.default_channel.client.ping()
        except Exception as exc:  # any failure here means "not reachable", whatever the client raised
            return f"the job queue {redacted(self.settings.queue_url or '')} is unreachable: {exc}"
        return None

    def queue_depth(self) -> float:
        """Jobs waiting on the queue (not yet taken by a worker); NaN when Redis is unreachable."""
        try:
            with self.celery.connection_for_read() as connection:
                return float(connection.default_channel.client.llen(self.settings.queue_name))
        except Exception:
            return float("nan")

    def oldest_wait_s(self) -> float:
        """Seconds the oldest queued job has waited (0 when none; NaN when Redis is unreachable)."""
        try:
            with self.celery.connection_for_read() as connection:
                raw = connection.default_channel.client.lindex(self.settings.queue_name, -1)  # BRPOP end
        except Exception:
            return float("nan")
        if raw is None:
            return 0.0
        job_id = json.loads(raw).get("headers", {}).get("id", "")
        meta = read_json(self.root / job_id / JOB_FILE) if is_job_id(job_id) else None
        return 0.0 if meta is None else max(0.0, self.clock() - meta["created_at"])

    # ------------------------------------------------------------------ lifecycle
    async def submit(
        self, upload: Upload, ticket: Ticket, context: JobContext, *, overlap: float | None, want_preview: bool,
        outputs: tuple[str, ...] = ("nifti",), want_image: bool = False,
    ) -> Job:
        """Move the upload into shared storage and enqueue the job (503 when Redis is down)."""
        job_id = uuid.uuid4().hex
        folder = self.root / job_id
        meta = {"id": job_id, "filename": upload.filename, "media_type": upload.media_type,
                "want_preview": want_preview, "overlap": overlap, "created_at": self.clock(), "outputs": list(outputs),
                "want_image": want_image}
        try:
            folder.mkdir()
            await run_blocking(shutil.move, upload.path, folder / INPUT_NAME)  # storage may be another volume
            write_json(folder / JOB_FILE, meta)
            await run_blocking(self._send, job_id)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            ticket.close()  # the queue place here only paced the upload; the workers queue the job
        return self.get(job_id)

    def _send(self, job_id: str) -> None:
        try:
            # One quick retry replaces a connection that went stale (Redis restarted); a Redis that
            # is down fails within a second or two, so the client gets 503 rather than a hang.
            self.celery.send_task(TASK_NAME, args=[job_id], task_id=job_id, queue=self.settings.queue_name,
                                  retry=True, retry_policy=_PUBLISH_RETRY)
        except Exception as exc:  # kombu/redis raise many types for "cannot publish"
            log.warning("could not enqueue job %s: %s", job_id, exc)
            raise QueueUnavailableError(
                f"the job queue {redacted(self.settings.queue_url or '')} is unreachable; retry later"
            ) from None

    def get(self, job_id: str) -> Job:
        folder = self.root / job_id
        meta = read_json(folder / JOB_FILE) if is_job_id(job_id) else None
        if meta is None:
            if is_job_id(job_id) and (self.root / EXPIRED_FOLDER / job_id).exists():
                raise GoneError(f"job {job_id} expired; results are kept {int(self.ttl_s)} s after they finish")
            raise NotFoundError(f"no job {job_id}")
        job = Job(id=job_id, folder=folder, filename=meta["filename"], media_type=meta["media_type"],
                  want_preview=meta["want_preview"], created_at=meta["created_at"],
                  outputs=tuple(meta.get("outputs") or ("nifti",)))
        job.want_image = bool(meta.get("want_image"))
        running, result = read_json(folder / RUNNING_FILE), read_json(folder / RESULT_FILE)
        if running is not None:
            job.status, job.started_at = "running", running["started_at"]
            job.progress = _progress_of(folder / PROGRESS_FILE)
        if result is not None:
            job.status, job.started_at, job.finished_at = result["status"], result["started_at"], result["finished_at"]
            job.metrics, job.warnings = result.get("metrics"), result.get("warnings") or []
            job.statistics = result.get("statistics")
            job.error = tuple(result["error"]) if result.get("error") else None
        return job

    def queue_position(self, job: Job) -> int | None:
        """1 for the next job a worker takes: the job's place on the Redis list from its BRPOP end
        (None unless queued, or when Redis is unreachable or the task is already taken)."""
        if job.status != "queued":
            return None
        try:
            with self.celery.connection_for_read() as connection:
                raw = connection.default_channel.client.lrange(self.settings.queue_name, 0, -1)
        except Exception:
            return None
        ids = [json.loads(item).get("headers", {}).get("id") for item in reversed(raw)]
        return ids.index(job.id) + 1 if job.id in ids else None

    def delete(self, job_id: str) -> None:
        """Remove the job's folder: a worker skips a job without one, and a running case stops
        before its next window batch (the worker polls the folder)."""
        self.get(job_id)
        shutil.rmtree(self.root / job_id, ignore_errors=True)

    def reap(self) -> list[str]:
        now = self.clock()
        expired = []
        for folder in self.root.iterdir():
            result = read_json(folder / RESULT_FILE) if is_job_id(folder.name) else None
            if result is not None and result["finished_at"] + self.ttl_s <= now:
                (self.root / EXPIRED_FOLDER / folder.name).touch()
                shutil.rmtree(folder, ignore_errors=True)
                expired.append(folder.name)
        for mark in (self.root / EXPIRED_FOLDER).iterdir():
            if mark.stat().st_mtime + _REMEMBER_EXPIRED_S < now:
                mark.unlink(missing_ok=True)
        if expired:
            log.info("expired %d job(s)", len(expired))
        return expired

    async def reap_forever(self) -> None:
        await reap_periodically(self.reap, self.ttl_s)

    async def close(self) -> None:
        """Nothing to stop: the jobs belong to the queue and the workers."""

    def recover(self) -> list[str]:
        return []


def _progress_of(path: Path) -> Progress:
    """A running job's progress as its worker last wrote it (``reading`` before its first write;
    a file two workers raced on, which a redelivered job can cause, reads as unknown)."""
    progress = Progress("reading")
    try:
        saved = read_json(path)
    except ValueError:
        saved = None
    if saved is not None and saved.get("stage") in ("reading", "preprocessing", "inference", "writing"):
        progress.update(saved["stage"], int(saved.get("windows_done", 0)), int(saved.get("windows_total", 0)))
    return progress
