"""Prometheus metrics of one app, in the app's OWN registry.

A per-app :class:`~prometheus_client.CollectorRegistry` (not the global default) keeps two apps in
one process (tests, or a future multi-model server) from sharing or double-registering series.
Everything is created in :class:`ServiceMetrics.__init__`; nothing is registered at import time.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from service.memory import peak_rss_mb
from service.metrics_types import CaseMetrics

# A CT case takes from about a second (small crop on a GPU) to minutes (whole body on a CPU):
# buckets spread over that range rather than the client default's web-request millisecond range.
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 180, 300, 600, 1200)
# Peak device memory per case; the dense part sits around the usual 4 GB cap.
GPU_MB_BUCKETS = (256, 512, 1024, 1536, 2048, 2560, 3072, 3584, 4096, 5120, 6144, 8192, 12288, 16384, 24576, 32768, 49152, 81920)

CONTENT_TYPE = CONTENT_TYPE_LATEST

# CaseMetrics field -> the ``source`` label of the GPU memory series.
_GPU_SOURCES = {
    "torch_allocated": "peak_gpu_mb_torch_allocated",
    "torch_reserved": "peak_gpu_mb_torch_reserved",
    "nvml": "peak_gpu_mb_nvml",
}


class ServiceMetrics:
    """All series of the service. ``render()`` gives the Prometheus text exposition."""

    def __init__(self, *, gpu_mem_cap_mb: int) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.http_requests = Counter(
            "swinxseg_http_requests", "HTTP requests by route template, method and status",
            ["route", "method", "status"], registry=registry,
        )
        self.http_duration = Histogram(
            "swinxseg_http_request_duration_seconds", "HTTP request latency (seconds)",
            ["route", "method"], buckets=SECONDS_BUCKETS, registry=registry,
        )
        self.stage_seconds = Histogram(
            "swinxseg_inference_stage_seconds", "Seconds per pipeline stage of one case",
            ["stage"], buckets=SECONDS_BUCKETS, registry=registry,
        )
        self.case_seconds = Histogram(
            "swinxseg_case_seconds", "Seconds to process one case (decode + segment + encode, no queue wait)",
            buckets=SECONDS_BUCKETS, registry=registry,
        )
        self.queue_wait_seconds = Histogram(
            "swinxseg_queue_wait_seconds", "Seconds a case waited for the inference slot",
            buckets=SECONDS_BUCKETS, registry=registry,
        )
        self.peak_gpu_mb = Histogram(
            "swinxseg_peak_gpu_memory_mb", "Peak GPU memory of one case (MB) by measurement source",
            ["source"], buckets=GPU_MB_BUCKETS, registry=registry,
        )
        self.last_peak_gpu_mb = Gauge(
            "swinxseg_last_peak_gpu_memory_mb", "Peak GPU memory of the last case (MB) by measurement source",
            ["source"], registry=registry,
        )
        self.gpu_cap_mb = Gauge(
            "swinxseg_gpu_memory_cap_mb", "Configured per-process GPU memory cap (MB)", registry=registry
        )
        self.gpu_cap_mb.set(gpu_mem_cap_mb)
        self.queue_depth = Gauge(
            "swinxseg_queue_depth", "Admitted cases waiting for the inference slot", registry=registry
        )
        self.in_flight = Gauge(
            "swinxseg_inference_in_flight", "Cases running inference now (0 or 1)", registry=registry
        )
        self.jobs_stored = Gauge("swinxseg_jobs_stored", "Jobs held by the job store", registry=registry)
        self.windows_run = Counter(
            "swinxseg_windows_run", "Sliding windows sent through the network", registry=registry
        )
        self.windows_skipped = Counter(
            "swinxseg_windows_skipped", "Sliding windows skipped as empty (outside the body)", registry=registry
        )
        self.cases = Counter("swinxseg_cases", "Cases segmented successfully", registry=registry)
        self.failures = Counter(
            "swinxseg_failures", "Error responses and failed jobs by reason (the error code)",
            ["reason"], registry=registry,
        )
        self.peak_rss_mb = Gauge(
            "swinxseg_peak_rss_mb", "Peak resident memory of the server process (MB)", registry=registry
        )
        self.peak_rss_mb.set_function(peak_rss_mb)
        self.model_info = Info("swinxseg_model", "The served model", registry=registry)

    def watch(self, *, queue_depth: Callable[[], float], in_flight: Callable[[], float],
              jobs_stored: Callable[[], float]) -> None:
        """Read the live gauges from their owners at scrape time (no bookkeeping to drift)."""
        self.queue_depth.set_function(queue_depth)
        self.in_flight.set_function(in_flight)
        self.jobs_stored.set_function(jobs_stored)

    def watch_job_queue(self, *, depth: Callable[[], float], oldest_wait_s: Callable[[], float]) -> None:
        """Queue mode: the Celery queue's length and its oldest job's wait, read from Redis at scrape
        time (NaN while Redis is unreachable)."""
        Gauge("swinxseg_job_queue_depth", "Jobs on the Celery queue not yet taken by a worker",
              registry=self.registry).set_function(depth)
        Gauge("swinxseg_job_queue_oldest_seconds", "Seconds the oldest job on the Celery queue has waited",
              registry=self.registry).set_function(oldest_wait_s)

    def set_model(self, *, name: str, backend: str, device: str, precision: str | None = None) -> None:
        """The ``swinxseg_model_info`` labels: what really runs (backend, device and, when known, precision)."""
        labels = {"name": name, "backend": backend, "device": device}
        if precision is not None:
            labels["precision"] = str(precision)
        self.model_info.info(labels)

    def observe_case(self, metrics: CaseMetrics, *, case_seconds: float, queue_seconds: float) -> None:
        """Record one successfully segmented case."""
        self.cases.inc()
        self.case_seconds.observe(case_seconds)
        self.queue_wait_seconds.observe(queue_seconds)
        for stage, seconds in metrics.seconds.items():
            self.stage_seconds.labels(stage=stage).observe(seconds)
        self.windows_run.inc(metrics.windows_run)
        self.windows_skipped.inc(metrics.windows_skipped)
        for source, attribute in _GPU_SOURCES.items():
            value = getattr(metrics, attribute)
            if value is not None:
                self.peak_gpu_mb.labels(source=source).observe(value)
                self.last_peak_gpu_mb.labels(source=source).set(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)
