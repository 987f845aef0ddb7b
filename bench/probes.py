"""Memory and time probes shared by both benchmark children (baseline and ours).

Both sides are measured by this one module, not by their own bookkeeping, so a difference in the
table is a difference in the pipelines and never in how they were measured.

- Peak RSS: ``ru_maxrss`` of the child process itself (Linux reports KiB), which covers every
  allocation of the process: Python, numpy, torch, ONNX Runtime, MONAI.
- GPU: NVML sampled every 0.1 s on a thread (the FLARE protocol samples "total minus free" at the
  same rate; the CUDA context counts), plus torch's own allocator peaks.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any

from service.memory import peak_rss_mb  # the one peak-RSS figure, for both children

log = logging.getLogger(__name__)

MB = 2**20
# Marks the one stdout line the parent parses, so stray library output cannot break the protocol.
RESULT_PREFIX = "BENCH_RESULT "


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads) so far.

    Less sensitive than wall time to other work on a shared machine, though not immune (threads
    that spin-wait for a core still burn CPU); the benchmark reports both.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_average() -> float | None:
    """The 1-minute load average, to tell a quiet machine's figures from a busy one's."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def process_figures(load_at_start: float | None) -> dict[str, Any]:
    """What every child reports about itself at the end: RSS, CPU time, load before and after."""
    return {
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "cpu_seconds": round(cpu_seconds(), 2),
        "load_avg_start": load_at_start,
        "load_avg_end": load_average(),
    }


def emit_result(result: dict[str, Any]) -> None:
    """Write the child's result as one prefixed JSON line on stdout (the parent's protocol)."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result, default=_json_default) + "\n")
    sys.stdout.flush()


def parse_result(stdout: str) -> dict[str, Any] | None:
    """The last result line a child printed, or None when it printed none (it crashed)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return None


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)


class NvmlSampler:
    """Samples this process's GPU memory (and the device's used memory) every ``interval_s``.

    Use as a context manager started *before* the first CUDA call, so the device baseline
    excludes this process and ``device_delta_mb`` includes the CUDA context, as FLARE measures.
    Without a GPU or without NVML every figure stays None and nothing fails.
    """

    def __init__(self, interval_s: float = 0.1) -> None:
        self.interval_s = interval_s
        self.process_peak_mb: float | None = None
        self.device_delta_peak_mb: float | None = None
        self._baseline_used: int | None = None
        self._handle = None
        self._nvml = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> NvmlSampler:
        self._handle = self._open_device()
        if self._handle is not None:
            self._baseline_used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used
            self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=2.0)
            self._sample()  # one last reading after the work finished
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutting NVML down must never fail the benchmark
                pass

    def figures(self) -> dict[str, float | None]:
        return {
            "nvml_process_mb": _round(self.process_peak_mb),
            "nvml_device_delta_mb": _round(self.device_delta_peak_mb),
        }

    # -------------------------------------------------------------- internals
    def _open_device(self):
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - no driver / no library: no GPU figures
            log.debug("NVML unavailable: %s", exc)
            return None
        self._nvml = pynvml
        try:
            return _device_handle(pynvml)
        except Exception as exc:  # noqa: BLE001
            log.debug("NVML has no usable device: %s", exc)
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        nvml, handle = self._nvml, self._handle
        try:
            used = nvml.nvmlDeviceGetMemoryInfo(handle).used
            delta = (used - (self._baseline_used or 0)) / MB
            self.device_delta_peak_mb = max(self.device_delta_peak_mb or 0.0, delta)
            mine = _process_usage(nvml, handle, os.getpid())
            if mine is not None:
                self.process_peak_mb = max(self.process_peak_mb or 0.0, mine / MB)
        except Exception as exc:  # noqa: BLE001 - a missed sample is not worth a failed run
            log.debug("NVML sample failed: %s", exc)


def _device_handle(pynvml):
    # CUDA_VISIBLE_DEVICES decides which physical GPU torch calls cuda:0; follow it to NVML.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if visible.startswith(("GPU-", "MIG-")):
        return pynvml.nvmlDeviceGetHandleByUUID(visible)
    return pynvml.nvmlDeviceGetHandleByIndex(int(visible) if visible.isdigit() else 0)


def _process_usage(nvml, handle, pid: int) -> int | None:
    # In a container the PIDs NVML reports can be the host's, so "not found" is common: the
    # device delta is then the figure to read.
    for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
        if proc.pid == pid and proc.usedGpuMemory is not None:
            return int(proc.usedGpuMemory)
    return None


def torch_gpu_peaks(device: str) -> dict[str, float | None]:
    """torch's caching-allocator peaks (allocated and reserved) in MB; None off the GPU."""
    if not str(device).startswith("cuda"):
        return {"torch_allocated_mb": None, "torch_reserved_mb": None}
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {"torch_allocated_mb": None, "torch_reserved_mb": None}
    return {
        "torch_allocated_mb": _round(torch.cuda.max_memory_allocated() / MB),
        "torch_reserved_mb": _round(torch.cuda.max_memory_reserved() / MB),
    }


@contextmanager
def stage(seconds: dict[str, float], name: str, *, sync_cuda: bool = False):
    """Time a block into ``seconds[name]``; waits for queued CUDA work so GPU time lands here."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if sync_cuda:
            import torch

            torch.cuda.synchronize()
        seconds[name] = round(time.perf_counter() - start, 4)


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(float(value), digits)
