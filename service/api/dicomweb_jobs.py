"""DICOMweb jobs (``POST /v1/dicomweb/jobs``): a study on the configured PACS, segmented in the
background, its RTSTRUCT/SEG stored back into the same study, in the ordinary job model.

The job's steps: choose and fetch the series (QIDO-RS, WADO-RS into the job folder) while the job
holds only its queue place; read and segment holding the inference slot; then write the job's
result files (mask, outputs, statistics, as for an upload's job) and STOW-RS the very RTSTRUCT/SEG
files the job serves, so the downloaded and the stored objects have the same SOP Instance UIDs.

Idempotency: a job's key is sha256(series UID, or the study UID when no series is named; the
model's manifest checksum; the outputs). A submission whose key matches a queued, running or done
job gets that job back (a CT series reported stable twice makes one job); a failed one is replaced
by a new job, so a PACS that was down can be tried again.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
import uuid
from collections.abc import Callable

from service.api.cases import run_blocking
from service.api.job_results import write_job_results
from service.api.jobs import Job, JobContext, JobStore
from service.dicomweb.pipeline import StudyCase

log = logging.getLogger(__name__)

SERIES_FOLDER = "series"
MEDIA_TYPE = "application/dicom"  # what the job's input is, for its record


def idempotency_key(study_uid: str, series_uid: str | None, model_sha256: str, outputs: tuple[str, ...]) -> str:
    subject = f"series:{series_uid}" if series_uid else f"study:{study_uid}"
    return hashlib.sha256("|".join([subject, model_sha256, ",".join(outputs)]).encode()).hexdigest()


def existing_job(store: JobStore, key: str) -> Job | None:
    """The job a repeated submission gets back: same key, not failed (module docstring)."""
    job = store.find_key(key)
    return job if job is not None and job.status != "failed" else None


def new_job(store: JobStore, case: StudyCase, key: str) -> Job:
    """A queued DICOMweb job for ``case`` (its folder made, nothing run yet)."""
    job_id = uuid.uuid4().hex
    folder = store.root / job_id
    folder.mkdir()
    request = {"study_uid": case.study_uid, "series_uid": case.series_uid, "source_url": case.source.url,
               "store_url": case.destination.url}
    return Job(id=job_id, folder=folder, filename=f"study-{case.study_uid}", media_type=MEDIA_TYPE,
               want_preview=False, created_at=store.clock(), outputs=case.outputs, dicomweb=request,
               idempotency_key=key)


def executor(case: StudyCase):
    """The job's work, as ``JobStore.start`` runs it."""

    async def execute(job: Job, ticket, context: JobContext, on_running: Callable[[], None]) -> None:
        started = time.perf_counter()
        folder = job.folder / SERIES_FOLDER
        try:
            chosen = await run_blocking(case.fetch, folder)
            job.dicomweb = {**(job.dicomweb or {}), "chosen_series": chosen.to_dict()}
            waiting_since = time.perf_counter()
            async with ticket.running():
                queue_seconds = time.perf_counter() - waiting_since
                on_running()
                job.progress.update("reading")
                volume = await run_blocking(case.read, folder)
                result = await run_blocking(context.segmenter.segment, volume, should_stop=job.cancel.is_set,
                                            progress=job.progress)
                case.clock.lap("segment")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        if job.cancel.is_set():
            return
        await _finish(job, case, context, volume, result, started, queue_seconds)

    return execute


async def _finish(job: Job, case: StudyCase, context: JobContext, volume, result, started: float,
                  queue_seconds: float) -> None:
    """Write the job's files, STOW-RS its DICOM outputs, record what was stored."""
    job.warnings = _warnings(volume)
    job.progress.update("writing")
    job.statistics = await run_blocking(
        write_job_results, job.folder, volume, result.mask, outputs=job.outputs,
        manifest=getattr(context.segmenter, "manifest", None), metrics=result.metrics,
    )
    case.clock.lap("write")
    built = {kind: job.output_path(kind).read_bytes() for kind in job.outputs}
    stored = await run_blocking(case.store, built)
    summary = case.result(stored, result.metrics, volume).to_dict()
    summary.pop("metrics")
    job.dicomweb = {**(job.dicomweb or {}), **summary}
    job.metrics = result.metrics.to_dict()
    context.metrics.observe_case(result.metrics, case_seconds=time.perf_counter() - started,
                                 queue_seconds=queue_seconds)
    log.info("job %s: study %s series %s -> stored %s", job.id, case.study_uid, case.chosen.uid,
             ", ".join(f"{o.modality} {o.sop_instance_uid}" for o in stored))


def _warnings(volume) -> list[dict[str, str]]:
    from service.case_warnings import as_dicts, warnings_of

    return as_dicts(warnings_of(volume))
