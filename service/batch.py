"""Batch mode: every case of a folder through one loaded model, with a per-case report.

FLARE naming (``CASE_0000.nii.gz`` -> ``CASE.nii.gz``) and plain names (``x.nrrd`` -> ``x.nii.gz``);
DICOM series folders and zips are cases too. A bad case is reported and the batch goes on.
Masks are written atomically, and the report is rewritten after every case so that an
interrupted batch still leaves an accurate one. Every entry of the input folder is in the report:
as a case, or skipped with the reason (``service.batch_inputs``). Masks, previews and reports are
all created with mode ``OUTPUT_FILE_MODE`` (0644).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from service.batch_inputs import scan_input_folder
from service.case_warnings import as_dicts, warnings_of
from service.errors import InvalidInputError, SwinxsegError
from service.input_checks import add_input_warnings, enforce_refusals
from service.io.cases import case_name_for
from service.io.readers import read_volume
from service.io.writers import OUTPUT_FILE_MODE
from service.memory import peak_rss_mb
from service.metrics_types import CaseMetrics
from service.outputs.dicom_common import model_info
from service.outputs.selection import (
    DEFAULT_OUTPUTS,
    SUFFIXES,
    check_outputs_possible,
    parse_outputs,
    write_outputs,
)
from service.outputs.statistics import STATISTICS_CSV_COLUMNS, OrganStatistics, csv_rows, organ_statistics
from service.segmenter import Segmenter
from service.settings import Settings

log = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_CSV = "report.csv"
STATISTICS_CSV = "statistics.csv"
CSV_COLUMNS = (
    "case", "status", "error", "input", "output", "input_shape", "input_spacing_mm", "model_grid_shape",
    "windows_run", "windows_skipped", "load_s", "preprocess_s", "infer_s", "postprocess_s", "write_s",
    "total_s", "peak_gpu_mb_torch_allocated", "peak_gpu_mb_torch_reserved", "peak_gpu_mb_nvml",
    "peak_rss_mb", "device", "backend", "precision", "fallbacks", "warning_codes", "warnings",
)


@dataclass
class CaseReport:
    case: str
    input: str
    output: str
    status: str = "pending"  # ok | failed | skipped
    error: str = ""
    error_code: str = ""
    warnings: list[dict[str, str]] = field(default_factory=list)  # [{"code", "message"}], see case_warnings
    metrics: CaseMetrics = field(default_factory=CaseMetrics)
    outputs: dict[str, str] = field(default_factory=dict)  # {"nifti"|"rtstruct"|"seg": path}
    statistics: list[dict] = field(default_factory=list)  # OrganStatistics.to_dict() per label present

    def csv_row(self) -> dict:
        m = self.metrics
        seconds = m.seconds
        return {
            "case": self.case, "status": self.status, "error": self.error, "input": self.input,
            "output": self.output, "input_shape": "x".join(map(str, m.input_shape)),
            "input_spacing_mm": "x".join(f"{s:g}" for s in m.input_spacing_mm),
            "model_grid_shape": "x".join(map(str, m.model_grid_shape)),
            "windows_run": m.windows_run, "windows_skipped": m.windows_skipped,
            **{f"{stage}_s": seconds.get(stage, "") for stage in ("load", "preprocess", "infer", "postprocess", "write")},
            "total_s": m.total_seconds,
            "peak_gpu_mb_torch_allocated": _blank(m.peak_gpu_mb_torch_allocated),
            "peak_gpu_mb_torch_reserved": _blank(m.peak_gpu_mb_torch_reserved),
            "peak_gpu_mb_nvml": _blank(m.peak_gpu_mb_nvml),
            "peak_rss_mb": m.peak_rss_mb, "device": m.device, "backend": m.backend,
            "precision": m.precision,
            "fallbacks": "; ".join(m.fallbacks),
            "warning_codes": "; ".join(w["code"] for w in self.warnings),
            "warnings": " | ".join(f"{w['code']}: {w['message']}" for w in self.warnings),
        }


def gpu_peak_text(m: CaseMetrics) -> str:
    peak = m.peak_gpu_mb_nvml or m.peak_gpu_mb_torch_reserved
    return "n/a (CPU)" if peak is None else f"{peak:.0f} MB"


def _blank(value):
    return "" if value is None else value


@dataclass
class BatchReport:
    input_dir: str
    output_dir: str
    model: str
    cases: list[CaseReport] = field(default_factory=list)
    total_seconds: float = 0.0

    @property
    def failed(self) -> list[CaseReport]:
        return [c for c in self.cases if c.status == "failed"]

    def to_dict(self) -> dict:
        counts = {s: sum(c.status == s for c in self.cases) for s in ("ok", "failed", "skipped")}
        return {
            "input_dir": self.input_dir, "output_dir": self.output_dir, "model": self.model,
            "total_seconds": round(self.total_seconds, 3), "counts": counts,
            "cases": [asdict(c) for c in self.cases],
        }


def output_path_for(case: Path, output_dir: Path) -> Path:
    return output_dir / f"{case_name_for(case)}.nii.gz"


def _atomic_write_text(path: Path, text: str) -> None:
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(handle, OUTPUT_FILE_MODE)  # mkstemp makes 0600; reports read like the masks
        with os.fdopen(handle, "w", newline="") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(report: BatchReport, output_dir: Path) -> None:
    _atomic_write_text(output_dir / REPORT_JSON, json.dumps(report.to_dict(), indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for case in report.cases:
        writer.writerow(case.csv_row())
    _atomic_write_text(output_dir / REPORT_CSV, buffer.getvalue())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=STATISTICS_CSV_COLUMNS)
    writer.writeheader()
    for case in report.cases:
        writer.writerows(csv_rows(case.case, [OrganStatistics(**s) for s in case.statistics]))
    _atomic_write_text(output_dir / STATISTICS_CSV, buffer.getvalue())


def run_batch(
    input_dir: Path,
    output_dir: Path,
    settings: Settings,
    *,
    segmenter: Segmenter | None = None,
    skip_existing: bool = False,
    preview: bool = False,
    overlap: float | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
    outputs: Iterable[str] = DEFAULT_OUTPUTS,
) -> BatchReport:
    """Segment every case in ``input_dir`` into ``output_dir``; never raises for a bad case.

    ``outputs``: any of ``nifti`` (``CASE.nii.gz``), ``rtstruct`` (``CASE_rtstruct.dcm``), ``seg``
    (``CASE_seg.dcm``); a DICOM output for a non-DICOM case fails that case before inference.
    Organ statistics are always computed (``report.json`` per case, ``statistics.csv``).
    """
    outputs = parse_outputs(list(outputs))
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise InvalidInputError(f"input folder {input_dir} does not exist or is not a folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    listing = scan_input_folder(input_dir)
    cases = listing.cases
    if segmenter is None:
        segmenter = Segmenter(settings)  # the model is loaded once for the whole batch
    report = BatchReport(str(input_dir), str(output_dir), segmenter.manifest.name)
    report.cases.extend(_not_a_case(entry, reason) for entry, reason in listing.skipped)
    log.info("batch: %d case(s) in %s with model %s on %s", len(cases), input_dir, report.model, segmenter.device)
    claimed: set[str] = set()
    iterator = progress(cases) if progress else cases
    for case_path in iterator:
        case = _run_case(case_path, output_dir, segmenter, settings, claimed, skip_existing=skip_existing,
                         preview=preview, overlap=overlap, outputs=outputs)
        report.cases.append(case)
        report.total_seconds = time.perf_counter() - started
        write_report(report, output_dir)
    report.total_seconds = time.perf_counter() - started
    write_report(report, output_dir)
    return report


def _run_case(case_path: Path, output_dir: Path, segmenter: Segmenter, settings: Settings, claimed: set[str], *,
              skip_existing: bool, preview: bool, overlap: float | None, outputs: tuple[str, ...]) -> CaseReport:
    out_path = output_path_for(case_path, output_dir)
    case = CaseReport(case=case_name_for(case_path), input=str(case_path), output=str(out_path))
    case_start = time.perf_counter()
    if out_path.name in claimed:
        return _fail(case, SwinxsegError(
            f"another input already produces {out_path.name}; rename one of them", code="duplicate_case_name"))
    claimed.add(out_path.name)
    if skip_existing and out_path.exists():
        problem = existing_mask_problem(out_path, case_path)
        if problem is None:
            case.status = "skipped"
            case.error = "output exists and is a readable mask"
            log.info("case %s: skipped (output exists)", case.case)
            return case
        log.warning("case %s: existing %s is not a usable mask (%s); segmenting again", case.case, out_path.name, problem)
    try:
        load_start = time.perf_counter()
        volume = add_input_warnings(
            read_volume(
                case_path,
                max_voxels=settings.max_input_voxels,
                work_dir=settings.work_dir,
                max_zip_members=settings.max_zip_members,
            )
        )
        # Recorded before a refusal, so the report says why the case was refused.
        case.warnings = as_dicts(warnings_of(volume))
        enforce_refusals(volume, settings.refuse_warnings)
        check_outputs_possible(volume, outputs)  # before inference: refuse what cannot be written
        load_s = time.perf_counter() - load_start
        result = segmenter.segment(volume, overlap=overlap)
        case.metrics = result.metrics
        case.metrics.seconds["load"], write_start = round(load_s, 4), time.perf_counter()
        _write_case_outputs(case, volume, result.mask, segmenter, outputs, out_path)  # + statistics
        if preview:
            from service.preview import render_preview  # matplotlib only when asked for

            preview_path = render_preview(volume, result.mask, output_dir / f"{case.case}_preview.png", title=case.case)
            os.chmod(preview_path, OUTPUT_FILE_MODE)
        case.metrics.seconds["write"] = round(time.perf_counter() - write_start, 4)
        case.metrics.total_seconds = round(time.perf_counter() - case_start, 4)
        case.metrics.peak_rss_mb = round(peak_rss_mb(), 1)
        case.status = "ok"
        m = case.metrics
        log.info(
            "case %s: ok %s -> %s in %.2f s (windows %d run, %d skipped; peak GPU %s; RSS %.0f MB; %d warnings)",
            case.case, "x".join(map(str, m.input_shape)), out_path.name, m.total_seconds,
            m.windows_run, m.windows_skipped, gpu_peak_text(m), m.peak_rss_mb, len(case.warnings),
        )
    except SwinxsegError as exc:
        _fail(case, exc)
    except MemoryError:
        _fail(case, SwinxsegError("out of host memory while processing this case", code="host_out_of_memory"))
    except Exception as exc:  # a bug must not stop the other cases; the log keeps the traceback
        log.exception("case %s: unexpected error", case.case)
        _fail(case, SwinxsegError(f"internal error: {type(exc).__name__}: {exc}", code="internal_error"))
    case.metrics.total_seconds = round(time.perf_counter() - case_start, 4)
    return case


def _write_case_outputs(case: CaseReport, volume, mask, segmenter: Segmenter, outputs: tuple[str, ...],
                        out_path: Path) -> None:
    labels = segmenter.manifest.labels
    stem = out_path.with_name(out_path.name.removesuffix(SUFFIXES["nifti"]))
    paths = write_outputs(outputs, volume, mask, labels, model_info(segmenter.manifest), stem=stem)
    case.outputs = {kind: str(path) for kind, path in paths.items()}
    case.output = case.outputs.get("nifti", "")
    case.statistics = [s.to_dict() for s in organ_statistics(volume, mask, labels)]


def _not_a_case(entry: Path, reason: str) -> CaseReport:
    log.info("input %s: not a case: %s", entry.name, reason)
    return CaseReport(case=entry.name, input=str(entry), output="", status="skipped", error=reason,
                      error_code="not_a_case")


def existing_mask_problem(mask_path: Path, case_path: Path) -> str | None:
    """Why an existing output cannot stand for the case (None: it can): it must decompress and
    parse completely as a 3D uint8 NIfTI, on the input's grid when the input is NIfTI (the only
    format whose shape is known without reading it)."""
    try:
        image = nib.load(str(mask_path), mmap=False)
        data = np.asanyarray(image.dataobj)  # reads every byte: a truncated gzip fails here
    except Exception as exc:  # nibabel, gzip, zlib and OS errors alike mean "not usable"
        return f"unreadable: {type(exc).__name__}: {exc}"[:300]
    if data.ndim != 3 or data.dtype != np.uint8:
        return f"not a 3D uint8 mask (shape {data.shape}, dtype {data.dtype})"
    if case_path.name.lower().endswith((".nii", ".nii.gz")):
        try:
            shape = tuple(nib.load(str(case_path)).shape[:3])
        except Exception as exc:
            return f"the input's header cannot be read to compare shapes: {exc}"[:300]
        if shape != data.shape:
            return f"shape {data.shape} differs from the input's {shape}"
    return None


def _fail(case: CaseReport, exc: SwinxsegError) -> CaseReport:
    case.status = "failed"
    case.error = exc.message
    case.error_code = exc.code
    log.error("case %s: failed: %s", case.case, exc.message)
    return case
