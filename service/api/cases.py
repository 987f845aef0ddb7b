"""One case through the service: decode -> (wait for the slot) segment -> encode.

Shared by ``POST /v1/segment`` and the job worker. Every blocking step runs in a worker thread
so the event loop keeps answering health checks and uploads while a case computes. Only
``segment`` needs the inference slot; where decoding happens is the caller's choice (see
:func:`segment_case`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import anyio.to_thread
from starlette.requests import Request

from service.api.gpu_guard import GpuGuard, Ticket
from service.api.job_results import labels_and_model
from service.api.upload_pace import UploadPace
from service.api.uploads import Upload, check_content_length, check_media_type, media_type_of, read_upload
from service.case_warnings import CaseWarning, warnings_of
from service.input_checks import screen_input
from service.io.readers import read_volume_upload
from service.io.writers import mask_to_nifti_bytes
from service.metrics_types import CaseMetrics, SegmentationResult
from service.outputs.selection import check_outputs_possible, output_bytes
from service.progress import ProgressCallback
from service.settings import Settings
from service.volume import Volume

if TYPE_CHECKING:
    import torch

    from service.manifest import ModelManifest

class SegmenterLike(Protocol):
    """What the HTTP layer needs of :class:`service.segmenter.Segmenter` (tests pass fakes)."""

    manifest: ModelManifest | None
    backend: str
    device: torch.device

    def warmup(self) -> None: ...

    def segment(
        self, volume: Volume, *, overlap: float | None = None, should_stop: Callable[[], bool] | None = None,
        progress: ProgressCallback | None = None,
    ) -> SegmentationResult: ...


@dataclass
class CaseOutcome:
    ct: Volume
    result: SegmentationResult
    queue_seconds: float  # waiting for the inference slot
    started: float  # perf_counter at decode start, to time the whole case

    @property
    def metrics(self) -> CaseMetrics:
        return self.result.metrics

    @property
    def warnings(self) -> list[CaseWarning]:
        return warnings_of(self.ct)

    def case_seconds(self) -> float:
        """Decode + segment + encode so far, without the queue wait."""
        return time.perf_counter() - self.started - self.queue_seconds


async def run_blocking(func, /, *args, **kwargs):
    """Run ``func`` in a worker thread. Cancelling the caller waits for the thread to finish,
    so the inference slot is never released while the GPU is still busy."""
    return await anyio.to_thread.run_sync(partial(func, *args, **kwargs))


def decode_upload(
    upload: Upload, *, settings: Settings, work_dir: Path, refuse_warnings: Collection[str] = (),
    outputs: Collection[str] = (),
) -> Volume:
    """The CT in ``upload``'s spool file (blocking), with its warnings (``meta["warnings"]``);
    ``work_dir`` takes a zip's extraction.

    Raises:
        InvalidInputError (and subclasses): unreadable input; ``WarningRefusedError`` when a
        warning's code is in ``refuse_warnings``; ``DicomSeriesError`` or ``InvalidInputError``
        when ``outputs`` holds a DICOM output the input cannot carry (checked before inference).
    """
    volume = read_volume_upload(
        upload.path,
        filename=upload.reader_filename,
        max_voxels=settings.max_input_voxels,
        work_dir=work_dir,
        max_zip_members=settings.max_zip_members,
    )
    volume = screen_input(volume, refuse=refuse_warnings)
    check_outputs_possible(volume, outputs)
    return volume


async def segment_case(
    load: Callable[[], Volume],
    *,
    segmenter: SegmenterLike,
    ticket: Ticket,
    overlap: float | None,
    load_in_slot: bool = False,
    on_running: Callable[[], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: ProgressCallback | None = None,
) -> CaseOutcome:
    """Run the blocking ``load()`` (read + decode the CT), then ``segment`` holding the slot.

    ``load_in_slot=False`` (synchronous requests) decodes before queueing, so a corrupt upload
    is refused without waiting and decoding overlaps the running case. ``True`` (jobs) decodes
    only once the slot is held, so queued jobs wait as files on disk rather than as decoded
    volumes in memory. ``on_running`` is called once the slot is held; ``should_stop`` is handed
    to the segmenter, which polls it between window batches, and so is ``progress``.
    """
    started = time.perf_counter()
    volume = None if load_in_slot else await run_blocking(load)
    waiting_since = time.perf_counter()
    async with ticket.running():
        queue_seconds = time.perf_counter() - waiting_since
        if on_running is not None:
            on_running()
        if volume is None:
            volume = await run_blocking(load)
        load_seconds = time.perf_counter() - started - queue_seconds
        # Only what was given: simpler segmenters (test fakes, tools) need not take every hook.
        hooks = {name: hook for name, hook in (("should_stop", should_stop), ("progress", progress))
                 if hook is not None}
        result = await run_blocking(segmenter.segment, volume, overlap=overlap, **hooks)
    result.metrics.seconds.setdefault("load", round(load_seconds, 4))
    return CaseOutcome(ct=volume, result=result, queue_seconds=queue_seconds, started=started)


def encode_mask(outcome: CaseOutcome) -> bytes:
    """The mask as .nii.gz bytes; the time it took is the case's ``write`` stage."""
    started = time.perf_counter()
    data = mask_to_nifti_bytes(outcome.result.mask)
    outcome.metrics.seconds["write"] = round(time.perf_counter() - started, 4)
    return data


def encode_dicom_output(kind: str, outcome: CaseOutcome, manifest: ModelManifest | None) -> bytes:
    """The RTSTRUCT or SEG file of the case (its time is the ``write`` stage)."""
    started = time.perf_counter()
    labels, model = labels_and_model(manifest)
    data = output_bytes(kind, outcome.ct, outcome.result.mask, labels, model)
    outcome.metrics.seconds["write"] = round(time.perf_counter() - started, 4)
    return data


def render_preview_png(outcome: CaseOutcome, out_png: Path, *, title: str | None = None) -> Path:
    # Imported here: matplotlib costs a second of start-up that only preview requests should pay.
    from service.preview import render_preview

    return render_preview(outcome.ct, outcome.result.mask, out_png, title=title)


def preview_png_bytes(outcome: CaseOutcome, *, work_dir: Path, title: str | None = None) -> bytes:
    """Render the preview to a private temp file in ``work_dir``, return its bytes, remove it."""
    handle = tempfile.NamedTemporaryFile(dir=work_dir, prefix="preview-", suffix=".png", delete=False)
    handle.close()
    path = Path(handle.name)
    try:
        render_preview_png(outcome, path, title=title)
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


def upload_pace(settings: Settings) -> UploadPace:
    return UploadPace(
        idle_timeout_s=settings.upload_idle_timeout_s,
        min_bytes_per_s=settings.upload_min_bytes_per_s,
        grace_s=settings.upload_rate_grace_s,
    )


async def receive_case(
    request: Request, *, guard: GpuGuard, settings: Settings, filename: str | None, spool_dir: Path
) -> tuple[Ticket, Upload]:
    """Cheap refusals first (415, 413 by Content-Length), then a queue place (429), then the body
    (streamed to a spool file in ``spool_dir``; 408 when it stalls or crawls).

    The caller owns the returned ticket and upload and must close both (``with ticket, upload:``).
    """
    limit = settings.max_upload_mb * 2**20
    check_media_type(media_type_of(request))
    check_content_length(request, limit)
    ticket = guard.admit()
    try:
        upload = await read_upload(
            request, limit_bytes=limit, spool_dir=spool_dir, pace=upload_pace(settings), filename=filename
        )
    except BaseException:
        ticket.close()
        raise
    return ticket, upload
