"""What ``swinxseg worker`` does with one job: its folder in, its results out (blocking).

The model is loaded and warmed up once per worker process (:func:`run_worker`); each job is one
call of :func:`run_job`, which runs in the Celery task. Deleting the job's folder (``DELETE
/v1/jobs/<id>``) stops a running case before its next window batch.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from service.api.cases import SegmenterLike
from service.api.errors import INTERNAL_ERROR_CODE
from service.api.job_results import write_job_results
from service.api.jobs import INPUT_NAME
from service.api.metrics import ServiceMetrics
from service.api.uploads import Upload
from service.case_warnings import as_dicts, warnings_of
from service.errors import SwinxsegError
from service.input_checks import screen_input
from service.io.readers import read_volume_upload
from service.outputs.selection import check_outputs_possible
from service.progress import Progress
from service.queue.job_files import (
    JOB_FILE,
    PROGRESS_FILE,
    RESULT_FILE,
    RUNNING_FILE,
    read_json,
    write_json,
    write_json_once,
)
from service.settings import Settings
from service.storage import is_job_id

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    segmenter: SegmenterLike
    settings: Settings
    storage: Path  # the shared jobs folder
    work_dir: Path  # this process's temp folder (zip extraction)
    metrics: ServiceMetrics
    name: str = socket.gethostname()


def run_job(job_id: str, context: WorkerContext) -> dict:
    """Run one job; returns a small summary (the Celery result). A job already finished (a
    second delivery) or deleted is not run again."""
    folder = context.storage / job_id
    meta = read_json(folder / JOB_FILE) if is_job_id(job_id) else None
    if meta is None:
        return {"status": "deleted"}
    finished = read_json(folder / RESULT_FILE)
    if finished is not None:
        log.info("job %s already %s: not run again", job_id, finished["status"])
        return {"status": finished["status"]}
    started = time.time()
    write_json(folder / RUNNING_FILE, {"started_at": started, "worker": context.name})
    result = {"status": "failed", "started_at": started, "worker": context.name, "warnings": [], "error": None}
    try:
        result.update(_segment(folder, meta, context, queued_s=max(0.0, started - meta["created_at"])))
    except SwinxsegError as exc:
        result["error"] = [exc.code, exc.message]
    except Exception:
        log.exception("job %s failed unexpectedly", job_id)
        result["error"] = [INTERNAL_ERROR_CODE, "internal error; the worker log has the details"]
    if not folder.is_dir():
        log.info("job %s was deleted while it ran", job_id)
        return {"status": "deleted"}
    result["finished_at"] = time.time()
    if not write_json_once(folder / RESULT_FILE, result):
        # Another delivery of this job ran at the same time and finished first: its result
        # stands (this one may have failed only because that one had removed the input).
        first = read_json(folder / RESULT_FILE) or {}
        log.warning("job %s: a second delivery finished %s on %s after the first had finished %s on %s; "
                    "the first result is kept", job_id, result["status"], context.name, first.get("status"),
                    first.get("worker"))
        return {"status": first.get("status", result["status"]), "worker": first.get("worker")}
    if result["error"] is not None:
        context.metrics.failures.labels(reason=result["error"][0]).inc()
    (folder / INPUT_NAME).unlink(missing_ok=True)
    log.info("job %s %s on %s", job_id, result["status"], context.name)
    return {"status": result["status"], "worker": context.name}


def _segment(folder: Path, meta: dict, context: WorkerContext, *, queued_s: float) -> dict:
    settings = context.settings
    began = time.perf_counter()
    progress = Progress("reading", on_change=_ProgressFile(folder / PROGRESS_FILE))
    progress.update("reading")
    upload = Upload(path=folder / INPUT_NAME, filename=meta["filename"], media_type=meta["media_type"])
    volume = read_volume_upload(
        upload.path, filename=upload.reader_filename, max_voxels=settings.max_input_voxels,
        work_dir=context.work_dir, max_zip_members=settings.max_zip_members,
    )
    volume = screen_input(volume, refuse=settings.refuse_warnings)
    outputs = tuple(meta.get("outputs") or ("nifti",))
    check_outputs_possible(volume, outputs)  # before inference: a refused output costs nothing
    outcome = context.segmenter.segment(volume, overlap=meta.get("overlap"), should_stop=lambda: not folder.is_dir(),
                                        progress=progress)
    progress.update("writing")
    statistics = write_job_results(
        folder, volume, outcome.mask, outputs=outputs, manifest=getattr(context.segmenter, "manifest", None),
        metrics=outcome.metrics, preview_title=meta["filename"], want_preview=bool(meta.get("want_preview")),
        want_image=bool(meta.get("want_image")),
    )
    context.metrics.observe_case(outcome.metrics, case_seconds=time.perf_counter() - began, queue_seconds=queued_s)
    return {"status": "done", "metrics": outcome.metrics.to_dict(), "warnings": as_dicts(warnings_of(volume)),
            "statistics": statistics}


class _ProgressFile:
    """Writes a job's progress to ``progress.json`` for the API to read: each stage change, and
    window counts at most every ``interval_s`` (a batch of windows can take milliseconds).

    Through one fixed temp name and a rename, without fsync (progress need not survive a crash):
    a worker killed mid-write leaves at most ``.progress.json.tmp``, which the worker that takes
    the job over renames away with its first write, so no stray temp file stays behind.
    """

    def __init__(self, path: Path, *, interval_s: float = 0.5) -> None:
        self.path, self.interval_s = path, interval_s
        self.scratch = path.with_name(f".{path.name}.tmp")
        self._last: tuple[str, float] | None = None

    def __call__(self, snapshot: dict) -> None:
        now = time.monotonic()
        stage = snapshot["stage"]
        finished_inference = stage == "inference" and snapshot["windows_done"] == snapshot["windows_total"]
        if self._last is not None and self._last[0] == stage and not finished_inference \
                and now - self._last[1] < self.interval_s:
            return
        if not self.path.parent.is_dir():
            return  # deleted meanwhile: the case stops at its next window batch
        self._last = (stage, now)
        try:
            self.scratch.write_text(json.dumps(snapshot))
            os.replace(self.scratch, self.path)
        except FileNotFoundError:
            pass  # the folder went between the check and the write (DELETE)
