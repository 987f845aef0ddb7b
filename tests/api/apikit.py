"""Helpers for the HTTP tests: a fake segmenter, small synthetic CTs, a served TestClient."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.errors import CaseCancelledError
from service.labels import FLARE23_LABELS
from service.manifest import ArchitectureConfig, ModelManifest
from service.metrics_types import CaseMetrics, SegmentationResult
from service.settings import Settings
from service.volume import Volume

SHAPE = (24, 20, 16)
AFFINE = np.array([[-1.5, 0, 0, 10.0], [0, -1.5, 0, 20.0], [0, 0, 2.5, -30.0], [0, 0, 0, 1]])


def ct_array(shape=SHAPE) -> np.ndarray:
    """Air around a soft-tissue box with a brighter core: the fake labels whatever is > 50 HU."""
    hu = np.full(shape, -1000, dtype=np.int16)
    hu[4:-4, 4:-4, 3:-3] = 40
    hu[8:-8, 8:-8, 5:-5] = 150
    return hu


def nifti_gz_bytes(array: np.ndarray | None = None, affine: np.ndarray = AFFINE) -> bytes:
    image = nib.Nifti1Image(ct_array() if array is None else array, affine)
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=1)


def manifest() -> ModelManifest:
    return ModelManifest(
        name="fake-swinxseg",
        preset="tiny",
        architecture=ArchitectureConfig(),
        labels=dict(FLARE23_LABELS),
        versions={"torch": torch.__version__},
    )


class FakeSegmenter:
    """Thresholds the CT (label 1 where HU > 50) with plausible metrics.

    ``gate``: segment() waits for it (fill the queue); ``warmup_gate``: warmup() waits for it;
    ``error``: segment() raises it.
    """

    def __init__(self, *, seconds: float = 0.0) -> None:
        self.manifest = manifest()
        self.backend = "fake"
        self.device = torch.device("cpu")
        self.seconds = seconds
        self.gate: threading.Event | None = None
        self.warmup_gate: threading.Event | None = None
        self.error: BaseException | None = None
        self.started = threading.Event()
        self.calls: list[dict] = []
        self.warmups = 0
        self._lock = threading.Lock()
        self.concurrent = 0
        self.max_concurrent = 0
        self.cancelled = 0

    def warmup(self) -> None:
        if self.warmup_gate is not None:
            self.warmup_gate.wait(timeout=30)
        self.warmups += 1

    def segment(
        self, volume: Volume, *, overlap: float | None = None, should_stop: Callable[[], bool] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> SegmentationResult:
        if progress is not None:  # the real engine's sequence, for its 3 windows
            progress("preprocessing", 0, 0)
            progress("inference", 0, 3)
        with self._lock:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            self.calls.append({"shape": volume.shape, "overlap": overlap})
            self.started.set()
            if self.gate is not None:
                # Poll like the real stitcher does between window batches.
                deadline = time.monotonic() + 30
                while not self.gate.wait(timeout=0.02) and time.monotonic() < deadline:
                    if should_stop is not None and should_stop():
                        self.cancelled += 1
                        raise CaseCancelledError("cancelled (fake segmenter)")
            if self.seconds:
                time.sleep(self.seconds)
            if self.error is not None:
                raise self.error
            mask = volume.with_array((volume.array > 50).astype(np.uint8))
            if progress is not None:
                progress("inference", 3, 3)
            metrics = CaseMetrics(
                input_shape=volume.shape,
                input_spacing_mm=volume.spacing,
                windows_run=3,
                windows_skipped=2,
                seconds={"preprocess": 0.01, "infer": 0.02, "postprocess": 0.01},
                total_seconds=0.04,
                peak_rss_mb=100.0,
                device="cpu",
                backend="fake",
            )
            return SegmentationResult(mask=mask, metrics=metrics)
        finally:
            with self._lock:
                self.concurrent -= 1


def wait_until(predicate: Callable[[], bool], *, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextmanager
def serving(settings: Settings, segmenter, *, ready: bool = True) -> Iterator[TestClient]:
    """A TestClient as a context manager (startup and shutdown run), optionally waiting for /readyz."""
    app = create_app(settings, segmenter=segmenter)
    with TestClient(app) as client:
        if ready:
            wait_until(lambda: client.get("/readyz").status_code == 200, what="readiness")
        yield client


def work_files(client: TestClient) -> list[Path]:
    """Files (not folders) left in the app's temp folder and in its job folders, but for the
    owner lock and the job records."""
    from service.api.job_records import DB_NAME
    from service.workdir import LOCK_NAME

    runtime = client.app.state.runtime
    jobs = [p for p in runtime.jobs.root.rglob("*") if p.is_file() and not p.name.startswith(DB_NAME)]
    return jobs + [p for p in runtime.work_dir.rglob("*") if p.is_file() and p.name != LOCK_NAME]


def post_ct(client: TestClient, data: bytes | None = None, *, path: str = "/v1/segment", **kwargs):
    headers = {"Content-Type": "application/gzip", **kwargs.pop("headers", {})}
    return client.post(path, content=nifti_gz_bytes() if data is None else data, headers=headers, **kwargs)


def metric_value(client: TestClient, name: str, **labels: str) -> float:
    """Read one sample from /metrics (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0
