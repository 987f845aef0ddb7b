"""``swinxseg batch IN OUT --queue redis://...``: every case of a folder segmented by the cluster.

The same cases, outputs (``CASE.nii.gz``, ``CASE_rtstruct.dcm``, ``CASE_seg.dcm``,
``CASE_preview.png``) and reports (``report.json``, ``report.csv``, ``statistics.csv``) as a local
batch (:mod:`service.batch`), but each case is a queue-mode job: its input is copied into the
shared storage (a DICOM series folder is zipped) and its task sent through
:func:`service.queue.submission.submit_job`, the API's own path, so any number of ``swinxseg
worker`` processes share the folder. At most ``in_flight`` jobs are out at once (the storage
holds that many inputs, not the whole folder).

Resuming: a case whose outputs already exist (its mask reading as a mask) is skipped, so a run
started again after an interruption submits only the cases without them. The job id of every
case out on the cluster is kept in ``OUT/.swinxseg_queue_jobs.json``: a job that finished while
no batch was waiting is collected, not run again; one still queued or running is withdrawn (its
folder removed: the worker skips or stops it) and submitted anew, since its task may not have
survived.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections import deque
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path

from service.api.errors import QueueUnavailableError
from service.api.job_results import OUTPUT_FILES
from service.api.jobs import PREVIEW_NAME
from service.batch import (
    BatchReport,
    CaseReport,
    _fail,
    _not_a_case,
    existing_mask_problem,
    output_path_for,
    write_report,
)
from service.batch_inputs import scan_input_folder
from service.errors import InvalidInputError, SwinxsegError
from service.io.cases import case_name_for
from service.io.readers import check_upload_header
from service.io.writers import OUTPUT_FILE_MODE
from service.metrics_types import CaseMetrics
from service.outputs.selection import DEFAULT_OUTPUTS, SUFFIXES
from service.queue.celery_app import make_celery, redacted
from service.queue.job_files import JOB_FILE, RESULT_FILE, RUNNING_FILE, read_json, write_json
from service.queue.submission import new_job_id, submit_job
from service.settings import Settings
from service.storage import is_job_id, storage_root

log = logging.getLogger(__name__)

STATE_FILE = ".swinxseg_queue_jobs.json"  # {case name: job id} of the jobs out on the cluster
_METRIC_FIELDS = {f.name for f in fields(CaseMetrics)}
_QUIET_WARNING_S = 300.0  # a warning when no case has finished for this long (no worker running?)


@dataclass
class _Case:
    report: CaseReport
    path: Path
    out_path: Path


@dataclass
class _QueueRun:
    settings: Settings
    output_dir: Path
    preview: bool
    overlap: float | None
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    root: Path = field(init=False)
    celery: object = field(init=False)
    jobs: dict[str, str] = field(init=False)  # case name -> job id, as in STATE_FILE

    def __post_init__(self) -> None:
        self.root = storage_root(self.settings)
        self.celery = make_celery(self.settings)
        self._check_broker()
        saved = read_json(self.output_dir / STATE_FILE) or {}
        self.jobs = {case: job for case, job in saved.items() if isinstance(job, str) and is_job_id(job)}

    def _check_broker(self) -> None:
        """Fail at once, before any case is copied, when Redis does not answer."""
        try:
            with self.celery.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=3)
                connection.default_channel.client.ping()
        except Exception as exc:  # kombu/redis raise many types for "not reachable"
            raise QueueUnavailableError(
                f"the job queue {redacted(self.settings.queue_url or '')} is unreachable: {exc}") from None

    def save(self) -> None:
        write_json(self.output_dir / STATE_FILE, self.jobs)

    def submit(self, case: _Case) -> str:
        """Send the case to the cluster; its job id. Raises SwinxsegError for an input that cannot
        be sent (the case fails), QueueUnavailableError when Redis is down (the batch stops)."""
        if case.path.is_dir():
            place, filename, media_type = partial(_zip_series, case.path), f"{case.path.name}.zip", "application/zip"
        else:
            check_upload_header(case.path, filename=case.path.name)  # e.g. an .mhd whose data is another file
            place, filename, media_type = partial(shutil.copyfile, case.path), case.path.name, "application/octet-stream"
        meta = {"filename": filename, "media_type": media_type, "want_preview": self.preview, "overlap": self.overlap,
                "outputs": list(self.outputs), "submitted_by": "swinxseg batch"}
        # Recorded before it is sent: a batch killed in between finds the id on its next run (and
        # withdraws that job) rather than leaving a job behind that it does not know.
        job_id = self.jobs[case.report.case] = new_job_id()
        self.save()
        try:
            submit_job(self.root, self.celery, self.settings, place_input=place, meta=meta, job_id=job_id)
        except SwinxsegError:  # nothing was sent and the folder is gone again
            self.jobs.pop(case.report.case, None)
            self.save()
            raise
        return job_id

    def result_of(self, job_id: str) -> dict | None:
        """The job's ``result.json``; a failure when its folder vanished; None while it is out."""
        folder = self.root / job_id
        result = read_json(folder / RESULT_FILE)
        if result is None and read_json(folder / JOB_FILE) is None:
            return {"status": "failed", "error": ["job_deleted", f"job {job_id} was removed from the storage "
                                                  f"{self.root} before it finished"]}
        return result

    def running(self, job_ids) -> int:
        return sum((self.root / job_id / RUNNING_FILE).exists() for job_id in job_ids)

    def withdraw(self, case_name: str) -> None:
        job_id = self.jobs.pop(case_name, None)
        if job_id is not None:
            shutil.rmtree(self.root / job_id, ignore_errors=True)
            log.info("case %s: job %s of an earlier run withdrawn", case_name, job_id)
            self.save()

    def collect(self, case: _Case, job_id: str, result: dict) -> None:
        """Copy the job's outputs into the output folder, fill the case's report, drop the job."""
        report, folder = case.report, self.root / job_id
        report.metrics = CaseMetrics(**{k: v for k, v in (result.get("metrics") or {}).items() if k in _METRIC_FIELDS})
        report.warnings = result.get("warnings") or []
        report.statistics = result.get("statistics") or []
        try:
            if result["status"] != "done":
                code, message = result.get("error") or ("internal_error", "the job failed without a reason")
                raise SwinxsegError(message, code=code)
            report.outputs = {}
            for kind in self.outputs:  # named as a local batch names them: CASE.nii.gz, CASE_rtstruct.dcm, ...
                target = output_file(case.out_path, kind)
                copy_output(folder / OUTPUT_FILES[kind], target)
                report.outputs[kind] = str(target)
            if self.preview:
                copy_output(folder / PREVIEW_NAME, self.output_dir / f"{report.case}_preview.png")
            report.status, report.output = "ok", report.outputs.get("nifti", "")
            log.info("case %s: ok on %s in %.2f s", report.case, result.get("worker", "?"), report.metrics.total_seconds)
        except SwinxsegError as exc:
            _fail(report, exc)
        shutil.rmtree(folder, ignore_errors=True)  # the batch owns its jobs: nothing waits for expiry
        self.jobs.pop(report.case, None)
        self.save()


def output_file(mask_path: Path, kind: str) -> Path:
    """The file of output ``kind`` beside the case's mask path (``CASE.nii.gz`` -> ``CASE_seg.dcm``)."""
    return mask_path.with_name(mask_path.name.removesuffix(SUFFIXES["nifti"]) + SUFFIXES[kind])


def _existing_problem(case_path: Path, out_path: Path, outputs: tuple[str, ...]) -> str | None:
    """Why the case's outputs from an earlier run cannot stand (None: they can); ``"absent"`` when
    none of them is there. The mask must read as a mask; a DICOM output must exist."""
    if not any(output_file(out_path, kind).exists() for kind in outputs):
        return "absent"
    for kind in outputs:
        path = output_file(out_path, kind)
        if kind == "nifti":
            problem = existing_mask_problem(path, case_path) if path.exists() else "no mask"
            if problem is not None:
                return problem
        elif not path.is_file():
            return f"no {path.name}"
    return None


def copy_output(source: Path, target: Path) -> None:
    """Copy a result file through a temp name and a rename (mode 0644, like a local batch's).

    Raises:
        SwinxsegError (``result_missing``): the job's folder has no such file.
    """
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(handle, OUTPUT_FILE_MODE)
        with os.fdopen(handle, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
        os.replace(tmp, target)
    except FileNotFoundError:
        Path(tmp).unlink(missing_ok=True)
        raise SwinxsegError(f"the job finished without its {source.name}", code="result_missing") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _zip_series(folder: Path, target: Path) -> None:
    """A DICOM series folder as one zip (stored, not deflated: the pixel data is compressed or
    compresses little), the form the workers read a series in."""
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                archive.write(path, path.relative_to(folder).as_posix())


def _plan(input_dir: Path, output_dir: Path, report: BatchReport, outputs: tuple[str, ...]) -> list[_Case]:
    """The cases to send: every case of the folder but those that already have their outputs
    (skipped, as a local ``--skip-existing``) or whose mask name another case takes (failed)."""
    listing = scan_input_folder(input_dir)
    report.cases.extend(_not_a_case(entry, reason) for entry, reason in listing.skipped)
    todo, claimed = [], set()
    for path in listing.cases:
        out_path = output_path_for(path, output_dir)
        case = CaseReport(case=case_name_for(path), input=str(path), output=str(out_path))
        if out_path.name in claimed:
            report.cases.append(_fail(case, SwinxsegError(
                f"another input already produces {out_path.name}; rename one of them", code="duplicate_case_name")))
            continue
        claimed.add(out_path.name)
        problem = _existing_problem(path, out_path, outputs)
        if problem is None:
            case.status, case.error = "skipped", "output exists and is a readable mask"
            report.cases.append(case)
            continue
        if problem != "absent":
            log.warning("case %s: the outputs of an earlier run cannot stand (%s); segmenting again", case.case,
                        problem)
        todo.append(_Case(report=case, path=path, out_path=out_path))
    return todo


class Progress:
    """A tqdm bar on stderr (``bar=True``) or one log line per finished case."""

    def __init__(self, total: int, *, bar: bool) -> None:
        self.total, self.done, self._bar = total, 0, None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc="cases", unit="case")

    def update(self, finished: int, *, running: int, queued: int) -> None:
        self.done += finished
        if self._bar is not None:
            self._bar.set_postfix(running=running, queued=queued, refresh=False)
            self._bar.update(finished)
        elif finished:
            log.info("batch: %d/%d case(s) done, %d running, %d queued", self.done, self.total, running, queued)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def run_queue_batch(input_dir: Path, output_dir: Path, settings: Settings, *, preview: bool = False,
                    overlap: float | None = None, in_flight: int = 32, progress_bar: bool = False,
                    outputs: tuple[str, ...] = DEFAULT_OUTPUTS, poll_s: float = 0.5) -> BatchReport:
    """Segment every case in ``input_dir`` on the queue-mode cluster at ``settings.queue_url``
    (workers reading ``settings.storage_dir``) into ``output_dir``; a bad case fails alone.
    ``outputs``: as :func:`service.batch.run_batch` (``nifti``, ``rtstruct``, ``seg``).

    Raises:
        InvalidInputError: ``input_dir`` is not a folder.
        SwinxsegError (``invalid_settings``): no ``queue_url``.
        QueueUnavailableError: Redis cannot be reached (the report so far is written; run again
            to resume).
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not settings.queue_url:
        raise SwinxsegError("batch on the queue needs --queue redis://... (or SWINXSEG_QUEUE_URL)",
                            code="invalid_settings")
    if not input_dir.is_dir():
        raise InvalidInputError(f"input folder {input_dir} does not exist or is not a folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report = BatchReport(str(input_dir), str(output_dir), f"queue-mode workers at {redacted(settings.queue_url)}")
    todo = _plan(input_dir, output_dir, report, outputs)
    run = _QueueRun(settings=settings, output_dir=output_dir, preview=preview, overlap=overlap, outputs=outputs)
    log.info("batch: %d case(s) from %s to the queue %s (%d already have a mask)", len(todo), input_dir,
             redacted(settings.queue_url), sum(c.status == "skipped" and c.error_code != "not_a_case"
                                               for c in report.cases))
    progress = Progress(len(todo), bar=progress_bar)
    finished: list[CaseReport] = []
    try:
        _drive(run, todo, finished, report, progress, in_flight=in_flight, poll_s=poll_s, started=started)
    finally:
        progress.close()
        report.cases = _in_input_order([*report.cases, *finished])
        report.total_seconds = time.perf_counter() - started
        write_report(report, output_dir)
    return report


def _in_input_order(cases: list[CaseReport]) -> list[CaseReport]:
    """As a local batch lists them: the entries that are not cases first, then the cases by name
    (jobs finish in any order)."""
    return sorted(cases, key=lambda c: (c.error_code != "not_a_case", c.input))


def _drive(run: _QueueRun, todo: list[_Case], finished: list[CaseReport], report: BatchReport, progress: Progress,
           *, in_flight: int, poll_s: float, started: float) -> None:
    """Keep up to ``in_flight`` jobs out; collect each as it finishes (report rewritten each time)."""
    waiting: deque[_Case] = deque()
    active: dict[str, _Case] = {}
    for name in set(run.jobs) - {case.report.case for case in todo}:
        run.withdraw(name)  # its case has a mask by now (killed between the copy and the bookkeeping)
    for case in todo:  # jobs an interrupted run left behind: collect the finished ones
        job_id = run.jobs.get(case.report.case)
        result = run.result_of(job_id) if job_id else None
        if result is not None and result["status"] == "done":
            active[job_id] = case
        else:
            run.withdraw(case.report.case)
            waiting.append(case)
    last_change = time.monotonic()
    if active:
        log.info("batch: %d job(s) of an earlier run finished meanwhile: collected, not sent again", len(active))
    while waiting or active:
        while waiting and len(active) < in_flight:
            case = waiting.popleft()
            try:
                active[run.submit(case)] = case
            except SwinxsegError as exc:
                if exc.code == "queue_unavailable":
                    raise
                finished.append(_fail(case.report, exc))
                progress.update(1, running=run.running(active), queued=len(waiting))
        done = [(job_id, result) for job_id in list(active) if (result := run.result_of(job_id)) is not None]
        for job_id, result in done:
            case = active.pop(job_id)
            run.collect(case, job_id, result)
            finished.append(case.report)
            report.total_seconds = time.perf_counter() - started
            write_report(BatchReport(report.input_dir, report.output_dir, report.model,
                                     _in_input_order([*report.cases, *finished]), report.total_seconds), run.output_dir)
        if done:
            running, last_change = run.running(active), time.monotonic()
            progress.update(len(done), running=running, queued=len(waiting) + len(active) - running)
        else:
            if time.monotonic() - last_change > _QUIET_WARNING_S:
                running, last_change = run.running(active), time.monotonic()
                log.warning("batch: no case finished for %.0f s: %d running, %d queued (are workers consuming "
                            "queue %s?)", _QUIET_WARNING_S, running, len(active) - running, run.settings.queue_name)
            time.sleep(poll_s)
