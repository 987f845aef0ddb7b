"""The orchestrator: a Volume in, a mask Volume on the same grid out, with what it cost.

Knows nothing about HTTP or the command line. One instance holds one loaded model; it is not
re-entrant (callers serialise access: one inference per GPU process).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch

from service.errors import InferenceError, InvalidInputError
from service.geometry import preprocess, restore_labels
from service.inference.openvino_cache import openvino_cache_dir
from service.inference.predictors import Predictor, load_predictor, resolve_device
from service.inference.stitcher import StitchOutOfMemory, sliding_window_labels
from service.labels import FLARE23_LABELS
from service.manifest import ArchitectureConfig, ModelManifest, load_manifest
from service.memory import GpuMemoryTracker, apply_gpu_memory_cap, peak_rss_mb
from service.metrics_types import CaseMetrics, SegmentationResult
from service.progress import ProgressCallback
from service.settings import Settings
from service.volume import Volume
from service.work_limits import check_model_grid, check_window_count

log = logging.getLogger(__name__)

# Rough device bytes one 96^3 window needs per decoder channel through the forward pass, used
# only to size the window batch under the cap; an out-of-memory error still halves the batch.
_BYTES_PER_WINDOW_CHANNEL_VOXEL = 24
_MAX_AUTO_BATCH = 4


# The stitching accumulator's dtype per ``Settings.accumulate_precision``. Why float16 for auto: it
# halves the stitching slab (the largest buffer after the model's own) on either device; on the
# CPU it costs ~0.01 s per 96^3 window, next to ~1 s for the network.
_ACCUMULATE_DTYPES = {"auto": torch.float16, "float16": torch.float16, "float32": torch.float32}


def _openvino_cache(settings: Settings, device: torch.device):
    """The compile cache folder when OpenVINO may run (a CPU with backend auto/openvino), else None,
    so other backends never create it."""
    if device.type != "cpu" or settings.backend not in ("auto", "openvino"):
        return None
    return openvino_cache_dir(settings)


class Segmenter:
    """Runs the whole flow for one model.

    Args:
        settings: the service settings (model folder, device, cap, overlap...).
        predictor: inject a ready predictor (tests use formula predictors); default loads
            the exported artifact named by ``settings.model_dir``.
        manifest: the model's contract; default read from ``settings.model_dir``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        predictor: Predictor | None = None,
        manifest: ModelManifest | None = None,
    ) -> None:
        self.settings = settings
        self.manifest = manifest if manifest is not None else load_manifest(settings.model_dir)
        self.device = predictor.device if predictor is not None else resolve_device(settings.device)
        if settings.cpu_threads:
            torch.set_num_threads(settings.cpu_threads)
        apply_gpu_memory_cap(self.device, settings.gpu_mem_cap_mb)
        self.accumulate_dtype = _ACCUMULATE_DTYPES[settings.accumulate_precision]
        if predictor is None:
            predictor = load_predictor(
                settings.model_dir,
                self.manifest,
                backend=settings.backend,
                device=self.device,
                precision=settings.inference_precision,  # resolved once, by the predictor
                gpu_mem_cap_mb=settings.gpu_mem_cap_mb,
                threads=settings.cpu_threads,
                openvino_cache_dir=_openvino_cache(settings, self.device),
            )
        self.predictor = predictor
        self.backend = predictor.name
        # What really runs, as the predictor resolved it, not what was asked for.
        self.precision = str(getattr(predictor, "precision", "float32"))
        log.info("model %s: %s on %s in %s (asked for %s)", self.manifest.name, self.backend, self.device,
                 self.precision, settings.inference_precision)
        self.roi = tuple(int(r) for r in self.manifest.roi_size)
        self._tracker = GpuMemoryTracker(self.device)
        self.warmed_up = False

    @classmethod
    def from_predictor(
        cls, settings: Settings, predictor: Predictor, manifest: ModelManifest | None = None
    ) -> Segmenter:
        """A segmenter around an in-memory predictor (no model folder): for tests and tools."""
        if manifest is None:
            manifest = ModelManifest(
                name=getattr(predictor, "name", "formula"),
                preset="formula",
                architecture=ArchitectureConfig(out_channels=predictor.out_channels),
                labels={i: FLARE23_LABELS.get(i, f"label_{i}") for i in range(predictor.out_channels)},
            )
        return cls(settings, predictor=predictor, manifest=manifest)

    # ------------------------------------------------------------------ public
    def warmup(self) -> None:
        """One window through the predictor so the first request pays no start-up cost."""
        with torch.inference_mode():
            window = torch.zeros((1, 1, *self.roi), dtype=torch.float32, device=self.device)
            self.predictor(window)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.warmed_up = True
        log.info("model %s warmed up on %s (%s, %s)", self.manifest.name, self.device, self.backend, self.precision)

    def segment(
        self,
        volume: Volume,
        *,
        overlap: float | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: ProgressCallback | None = None,
    ) -> SegmentationResult:
        """Segment one CT. Returns a uint8 mask with exactly ``volume``'s shape and affine.

        ``should_stop`` is polled between window batches (a deleted job). ``progress`` is called
        as ``progress("preprocessing", 0, 0)``, then ``progress("inference", done, total)``
        before the first window batch and after each (:mod:`service.progress`). Raises
        InputTooLargeError (the model grid is over ``max_model_grid_voxels``, checked before it
        is allocated), InvalidInputError (bad overlap; more than ``max_windows_per_case``
        windows, checked before any runs), CaseCancelledError, InferenceError.
        """
        overlap = self.settings.overlap if overlap is None else float(overlap)
        if not 0.0 <= overlap < 1.0:
            raise InvalidInputError(f"overlap must be in [0, 1), got {overlap}")
        check_model_grid(
            volume.shape, volume.affine, self.manifest.target_spacing_mm, self.settings.max_model_grid_voxels
        )
        metrics = CaseMetrics(
            input_shape=volume.shape,
            input_spacing_mm=tuple(round(s, 6) for s in volume.spacing),
            device=str(self.device),
            backend=self.backend,
            precision=self.precision,
        )
        started = time.perf_counter()
        self._tracker.reset()
        with self._tracker:
            if progress is not None:
                progress("preprocessing", 0, 0)
            with self._stage(metrics, "preprocess"):
                prepared = preprocess(
                    volume,
                    self.manifest.preprocess,  # what the model was trained with
                    body_threshold_hu=self.settings.body_threshold_hu,  # None: the spec's rule
                    body_margin_mm=self.settings.body_margin_mm,
                    crop_to=self.settings.crop_to,
                    device=self.device,
                )
                metrics.model_grid_shape = tuple(int(s) for s in prepared.image.shape)
            check_window_count(prepared.image.shape, self.roi, overlap, self.settings.max_windows_per_case)
            with self._stage(metrics, "infer"):
                labels = self._infer(prepared, overlap, metrics, should_stop, progress)
                del prepared.image
            with self._stage(metrics, "postprocess"):
                restored = restore_labels(labels, prepared.record)
                mask = self._as_mask(volume, restored)
        metrics.total_seconds = round(time.perf_counter() - started, 4)
        peaks = self._tracker.peaks()
        metrics.peak_gpu_mb_torch_allocated = peaks.get("torch_allocated_mb")
        metrics.peak_gpu_mb_torch_reserved = peaks.get("torch_reserved_mb")
        metrics.peak_gpu_mb_nvml = peaks.get("nvml_process_mb")
        metrics.peak_rss_mb = round(peak_rss_mb(), 1)
        return SegmentationResult(mask=mask, metrics=metrics)

    # ------------------------------------------------------------------ steps
    @contextmanager
    def _stage(self, metrics: CaseMetrics, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            metrics.seconds[name] = round(time.perf_counter() - start, 4)

    def _window_batch_size(self) -> int:
        if self.settings.sw_batch_size:
            return self.settings.sw_batch_size
        if self.device.type != "cuda":
            return 1  # on the CPU a bigger batch only adds memory, not speed
        features = self.manifest.architecture.feature_size
        per_window = _BYTES_PER_WINDOW_CHANNEL_VOXEL * features * int(np.prod(self.roi))
        budget = self.settings.gpu_mem_cap_mb * 2**20 // 2  # half the cap for activations
        return int(max(1, min(_MAX_AUTO_BATCH, budget // per_window)))

    def _infer(
        self,
        prepared,
        overlap: float,
        metrics: CaseMetrics,
        should_stop: Callable[[], bool] | None,
        progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        options = dict(
            should_stop=should_stop,
            on_windows=None if progress is None else lambda done, total: progress("inference", done, total),
            roi=self.roi,
            overlap=overlap,
            sw_batch_size=self._window_batch_size(),
            sigma_scale=self.settings.gaussian_sigma_scale,
            accumulate_dtype=self.accumulate_dtype,
            body=prepared.body if self.settings.skip_empty_windows else None,
        )
        try:
            result = sliding_window_labels(prepared.image, self.predictor, **options)
        except StitchOutOfMemory as exc:
            # The window batch is already down to 1: keep running windows on the GPU but
            # stitch on the host, which trades speed for device memory.
            log.warning("out of GPU memory at window batch 1 (%s); stitching on the host instead", exc)
            metrics.fallbacks.extend(getattr(exc, "fallbacks", []))
            metrics.fallbacks.append("oom: stitching moved to the host")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            options["sw_batch_size"] = 1  # already halved down to 1 on the first attempt
            try:
                result = sliding_window_labels(
                    prepared.image, self.predictor, accumulate_device=torch.device("cpu"), **options
                )
            except StitchOutOfMemory as again:
                raise InferenceError(
                    f"out of GPU memory under the {self.settings.gpu_mem_cap_mb} MB cap even with one "
                    f"window at a time and host stitching: {again}"
                ) from None
        metrics.windows_run = result.windows_run
        metrics.windows_skipped = result.windows_skipped
        metrics.sw_batch_size = result.sw_batch_size_used
        metrics.stitch_buffer_mb = round(result.stitch_buffer_bytes / 2**20, 3)
        metrics.fallbacks.extend(result.fallbacks)
        return result.labels

    @staticmethod
    def _as_mask(volume: Volume, labels: np.ndarray) -> Volume:
        # The last line of defence for the product's one non-negotiable: same grid as the input.
        if labels.shape != volume.shape:
            raise InferenceError(f"internal error: mask shape {labels.shape} != input shape {volume.shape}")
        return volume.with_array(labels.astype(np.uint8, copy=False))
