"""Asynchronous jobs: a durable store with a TTL, one folder per job, and the task of each job.

A job owns ``<storage>/<id>/`` (:func:`service.storage.storage_root`, outside the per-process
work folder so that it survives a restart): the upload while it waits (``input.bin``, decoded
only once the job holds the inference slot, so a queue of jobs costs disk, not memory), then its
named result files (``mask.nii.gz``, ``preview.png``, ``image.nii.gz`` for the web page). Its record (status, times, metrics,
warnings, error) lives in SQLite beside the folders (:mod:`service.api.job_records`), so after a
restart finished jobs still answer with their results until they expire, and jobs that were
queued or running are marked failed with the reason (``interrupted``: their process is gone;
the client submits again). They are not re-run: the restart may have been caused by the case.
The folder goes when the job is deleted or its result expires (``job_ttl_s`` after it
finished; a reaper task sweeps). Expired ids are remembered for a while so clients get 410
rather than 404.

Each job runs as its own asyncio task holding a :class:`~service.api.gpu_guard.Ticket` taken at
submission: the queue place is the guard's, shared with synchronous requests, so 429 means the
same thing on both routes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from service.api.cases import SegmenterLike, decode_upload, run_blocking, segment_case
from service.api.errors import INTERNAL_ERROR_CODE, GoneError, NotFoundError
from service.api.gpu_guard import Ticket
from service.api.job_records import JobRecords
from service.api.job_results import IMAGE_NAME, MASK_NAME, OUTPUT_FILES, PREVIEW_NAME, write_job_results
from service.api.metrics import ServiceMetrics
from service.api.schemas import JobStatus
from service.api.uploads import Upload
from service.case_warnings import as_dicts, warnings_of
from service.errors import SwinxsegError
from service.input_checks import enforce_refusals
from service.outputs.selection import check_outputs_possible
from service.progress import Progress
from service.settings import Settings
from service.storage import is_job_id
from service.volume import Volume
from service.workdir import is_alive

log = logging.getLogger(__name__)

_REMEMBER_EXPIRED = 10_000  # ids answered with 410 after expiry; older ones fall back to 404
INPUT_NAME = "input.bin"
INTERRUPTED_CODE = "interrupted"
INTERRUPTED_DETAIL = "interrupted by a restart: the server stopped before the job finished; submit it again"


def iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


@dataclass
class Job:
    id: str
    folder: Path
    filename: str | None
    media_type: str
    want_preview: bool
    created_at: float
    status: JobStatus = "queued"
    started_at: float | None = None
    finished_at: float | None = None
    metrics: dict | None = None
    warnings: list[dict[str, str]] = field(default_factory=list)  # the input's, once decoded
    error: tuple[str, str] | None = None  # (code, detail)
    outputs: tuple[str, ...] = ("nifti",)  # the output kinds asked for (service.outputs.selection)
    statistics: list[dict] | None = None  # per-label OrganStatistics of a done job
    dicomweb: dict | None = None  # a DICOMweb job: the request, then chosen series and stored UIDs
    idempotency_key: str | None = None  # a DICOMweb job's (series UID + model checksum + outputs)
    task: asyncio.Task | None = field(default=None, repr=False)
    # Set by DELETE (and shutdown): the worker thread polls it between window batches.
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    want_image: bool = False  # keep image.nii.gz (not in the record: the file says it was)
    # Live while queued or running (this process); a finished job's is derived from its record.
    progress: Progress = field(default_factory=Progress, repr=False)

    @property
    def mask_path(self) -> Path:
        return self.folder / MASK_NAME

    @property
    def preview_path(self) -> Path:
        return self.folder / PREVIEW_NAME

    @property
    def input_path(self) -> Path:
        return self.folder / INPUT_NAME

    def output_path(self, kind: str) -> Path:
        return self.folder / OUTPUT_FILES[kind]

    @property
    def image_path(self) -> Path:
        return self.folder / IMAGE_NAME

    def progress_view(self) -> dict | None:
        """The ``progress`` of the job status: live while it runs, complete once done, None when it failed."""
        if self.status == "done":
            windows = int((self.metrics or {}).get("windows_run") or 0)
            return {"stage": "done", "windows_done": windows, "windows_total": windows}
        if self.status == "failed":
            return None
        view = self.progress.as_dict()
        if self.status == "running" and view["stage"] == "queued":
            view["stage"] = "reading"  # holds the slot, not decoded yet (or another process's job)
        return view

    def record(self, owner: str) -> dict:
        """The row :class:`JobRecords` keeps (everything but the live task)."""
        code, detail = self.error if self.error else (None, None)
        return {
            "id": self.id, "owner": owner, "filename": self.filename, "media_type": self.media_type,
            "want_preview": int(self.want_preview), "created_at": self.created_at, "status": self.status,
            "started_at": self.started_at, "finished_at": self.finished_at, "metrics": self.metrics,
            "warnings": self.warnings, "error_code": code, "error_detail": detail,
            "outputs": list(self.outputs), "statistics": self.statistics, "dicomweb": self.dicomweb,
            "idempotency_key": self.idempotency_key,
        }

    @classmethod
    def from_record(cls, row: dict, root: Path) -> Job:
        error = (row["error_code"], row["error_detail"]) if row["error_code"] else None
        return cls(
            id=row["id"], folder=root / row["id"], filename=row["filename"], media_type=row["media_type"],
            want_preview=bool(row["want_preview"]), created_at=row["created_at"], status=row["status"],
            started_at=row["started_at"], finished_at=row["finished_at"], metrics=row["metrics"],
            warnings=row["warnings"], error=error, outputs=tuple(row["outputs"]), statistics=row["statistics"],
            dicomweb=row.get("dicomweb"), idempotency_key=row.get("idempotency_key"),
        )


# A job's own work (DICOMweb jobs): (job, ticket, context, on_running) -> None, raising typed errors.
Executor = Callable[["Job", Ticket, "JobContext", Callable[[], None]], Awaitable[None]]


@dataclass
class JobContext:
    """What the worker needs besides the job: injected so tests can swap any of it."""

    segmenter: SegmenterLike | None  # None in queue mode (the workers run the model)
    metrics: ServiceMetrics
    settings: Settings
    work_dir: Path


class JobStore:
    """The jobs of the embedded mode: live ones in memory (their tasks), every record on disk.

    ``owner`` is this process's work folder: records name it, and :meth:`recover` fails the
    unfinished jobs of owners that are gone.
    """

    def __init__(
        self, root: Path, *, ttl_s: float, clock: Callable[[], float] = time.time, owner: Path | None = None
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s
        self.clock = clock
        self.owner = str(owner or "")
        self.records = JobRecords(self.root)
        self._jobs: dict[str, Job] = {}  # this process's queued and running jobs

    def __len__(self) -> int:
        return self.records.count_live()

    def expires_at(self, job: Job) -> float | None:
        return None if job.finished_at is None else job.finished_at + self.ttl_s

    def recover(self) -> list[str]:
        """Mark failed (``interrupted``) the queued and running jobs whose server is gone; returns
        their ids. Their input goes; the record stays until it expires like any finished job."""
        lost = [row["id"] for row in self.records.unfinished()
                if row["owner"] != self.owner and not is_alive(Path(row["owner"]))]
        for job_id in lost:
            job = self._load(job_id)
            job.error = (INTERRUPTED_CODE, INTERRUPTED_DETAIL)
            job.input_path.unlink(missing_ok=True)
            self._finish(job, "failed")
        if lost:
            log.warning("%d job(s) were interrupted by a restart and are marked failed", len(lost))
        return lost

    # ------------------------------------------------------------------ lifecycle
    async def submit(
        self, upload: Upload, ticket: Ticket, context: JobContext, *, overlap: float | None, want_preview: bool,
        outputs: tuple[str, ...] = ("nifti",), want_image: bool = False,
    ) -> Job:
        """Store the upload in the job's folder and start its worker task."""
        job_id = uuid.uuid4().hex
        folder = self.root / job_id
        folder.mkdir()
        job = Job(
            id=job_id,
            folder=folder,
            filename=upload.filename,
            media_type=upload.media_type,
            want_preview=want_preview,
            created_at=self.clock(),
            outputs=outputs,
            want_image=want_image,
        )
        try:
            # A queued job waits as a file (the spool file, moved), decoded only in the slot.
            os.replace(upload.path, job.input_path)
            self._save(job)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        self._jobs[job_id] = job
        job.task = asyncio.create_task(self._run(job, ticket, context, overlap), name=f"job-{job_id}")
        return job

    def start(self, job: Job, ticket: Ticket, context: JobContext, execute: Executor) -> Job:
        """Record a prepared job (its folder made) and run ``execute(job, ticket, context, on_running)``
        as its task, with the same failure handling as an upload's job (DICOMweb jobs)."""
        try:
            self._save(job)
        except BaseException:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise
        self._jobs[job.id] = job

        async def run(job: Job, ticket: Ticket, context: JobContext, overlap: float | None) -> None:
            await execute(job, ticket, context, lambda: self._start(job))
            if not job.cancel.is_set():
                self._finish(job, "done")

        job.task = asyncio.create_task(self._run(job, ticket, context, None, run), name=f"job-{job.id}")
        return job

    def find_key(self, key: str) -> Job | None:
        """The newest unexpired job submitted with idempotency ``key``, or None."""
        job_id = self.records.find_key(key)
        return None if job_id is None else self.get(job_id)

    def queue_position(self, job: Job) -> int | None:
        """1 for the next job to run, 2 for the one after...: this server's queued jobs submitted
        before it, plus one; None unless queued. (A synchronous request may still go first.)"""
        if job.status != "queued":
            return None
        return 1 + sum(1 for other in self._jobs.values()
                       if other.status == "queued" and other.created_at < job.created_at)

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is not None:
            return job
        row = self.records.load(job_id) if is_job_id(job_id) else None
        if row is not None and row["expired_at"] is not None:
            raise GoneError(f"job {job_id} expired; results are kept {int(self.ttl_s)} s after they finish")
        if row is None:
            raise NotFoundError(f"no job {job_id}")
        return Job.from_record(row, self.root)

    def delete(self, job_id: str) -> None:
        """Remove a job and its files. A queued job gives its queue place back at once; a running
        one is told to stop and does so before its next window batch, which frees the inference
        slot (its thread cannot be interrupted mid-window); it writes nothing after that."""
        job = self.get(job_id)
        job.cancel.set()
        if job.task is not None and not job.task.done() and job.status != "running":
            job.task.cancel()  # queued: its ticket gives the queue place back
        if job.status == "running":
            log.info("job %s deleted while running: stopping it at the next window", job.id)
        self._jobs.pop(job.id, None)
        self.records.delete(job.id)
        shutil.rmtree(job.folder, ignore_errors=True)

    def reap(self) -> list[str]:
        """Delete every finished job older than the TTL; returns their ids."""
        now = self.clock()
        expired = self.records.expired_by(now, self.ttl_s)
        for job_id in expired:
            shutil.rmtree(self.root / job_id, ignore_errors=True)
            self.records.mark_expired(job_id, now, keep=_REMEMBER_EXPIRED)
        if expired:
            log.info("expired %d job(s)", len(expired))
        return expired

    async def reap_forever(self) -> None:
        await reap_periodically(self.reap, self.ttl_s)

    async def close(self) -> None:
        """Shutdown: cancel queued jobs, wait for a running one (its thread cannot be stopped);
        both are recorded as interrupted. Finished jobs keep their records and results."""
        live = list(self._jobs.values())
        tasks = [job.task for job in live if job.task is not None and not job.task.done()]
        for job in live:
            job.cancel.set()  # a running case stops at its next window instead of finishing
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job in live:
            if job.status in ("queued", "running"):
                job.error = (INTERRUPTED_CODE, INTERRUPTED_DETAIL)
                self._finish(job, "failed")
            if job.status == "failed":
                shutil.rmtree(job.folder, ignore_errors=True)
        self.records.close()

    def _load(self, job_id: str) -> Job:
        row = self.records.load(job_id)
        if row is None:
            raise NotFoundError(f"no job {job_id}")
        return Job.from_record(row, self.root)

    def _save(self, job: Job) -> None:
        self.records.save(job.record(self.owner))

    # ------------------------------------------------------------------ worker
    @staticmethod
    def _load_input(job: Job, context: JobContext) -> Volume:
        job.progress.update("reading")
        upload = Upload(path=job.input_path, filename=job.filename, media_type=job.media_type)
        volume = decode_upload(upload, settings=context.settings, work_dir=context.work_dir)
        job.input_path.unlink(missing_ok=True)
        # Kept before the refusal checks, so the job status says what a refusal was about.
        job.warnings = as_dicts(warnings_of(volume))
        enforce_refusals(volume, context.settings.refuse_warnings)
        check_outputs_possible(volume, job.outputs)  # before inference: a refused output costs nothing
        return volume

    async def _run(self, job: Job, ticket: Ticket, context: JobContext, overlap: float | None,
                   execute: Callable[..., Awaitable[None]] | None = None) -> None:
        with ticket:
            try:
                await (execute or self._execute)(job, ticket, context, overlap)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if job.cancel.is_set():
                    log.info("job %s stopped after it was deleted (%s)", job.id, exc)
                elif isinstance(exc, SwinxsegError):
                    self._fail(job, context, exc.code, exc.message)
                else:
                    log.exception("job %s failed unexpectedly", job.id)
                    self._fail(job, context, INTERNAL_ERROR_CODE, "internal error; the server log has the details")
            finally:
                if job.cancel.is_set():  # deleted meanwhile: whatever the worker wrote goes too
                    shutil.rmtree(job.folder, ignore_errors=True)

    async def _execute(self, job: Job, ticket: Ticket, context: JobContext, overlap: float | None) -> None:
        outcome = await segment_case(
            partial(self._load_input, job, context),
            segmenter=context.segmenter,
            ticket=ticket,
            overlap=overlap,
            load_in_slot=True,
            on_running=lambda: self._start(job),
            should_stop=job.cancel.is_set,
            progress=job.progress,
        )
        if job.cancel.is_set():
            return
        job.progress.update("writing")
        job.statistics = await run_blocking(
            write_job_results, job.folder, outcome.ct, outcome.result.mask, outputs=job.outputs,
            manifest=getattr(context.segmenter, "manifest", None), metrics=outcome.metrics,
            preview_title=job.filename, want_preview=job.want_preview, want_image=job.want_image,
        )
        context.metrics.observe_case(
            outcome.metrics, case_seconds=outcome.case_seconds(), queue_seconds=outcome.queue_seconds
        )
        job.metrics = outcome.metrics.to_dict()
        self._finish(job, "done")

    def _fail(self, job: Job, context: JobContext, code: str, detail: str) -> None:
        context.metrics.failures.labels(reason=code).inc()
        job.error = (code, detail)
        job.input_path.unlink(missing_ok=True)
        self._finish(job, "failed")
        log.warning("job %s failed: %s: %s", job.id, code, detail)

    def _start(self, job: Job) -> None:
        job.status, job.started_at = "running", self.clock()
        if not job.cancel.is_set():  # deleted meanwhile: its record is gone and stays gone
            self._save(job)

    def _finish(self, job: Job, status: JobStatus) -> None:
        job.status = status
        job.finished_at = self.clock()
        self._jobs.pop(job.id, None)
        self._save(job)


async def reap_periodically(reap: Callable[[], list[str]], ttl_s: float) -> None:
    """Run ``reap`` every quarter of the TTL (0.5-60 s) for ever, off the event loop: it deletes
    folders, which must not stall requests. Both job stores (embedded and queue mode) use it."""
    interval = max(0.5, min(60.0, ttl_s / 4))
    while True:
        await asyncio.sleep(interval)
        await run_blocking(reap)
