"""GPU memory cap and measurement, host RSS.

Three GPU figures, because they answer different questions:
- ``torch_allocated_mb``: peak of tensors torch allocated (``max_memory_allocated``);
- ``torch_reserved_mb``: peak held by torch's caching allocator (what the cap applies to);
- ``nvml_process_mb``: what the driver reports, sampled every 0.1 s like the FLARE challenge.
  It includes the CUDA context and other libraries' memory (cuDNN workspaces, ONNX Runtime's
  arena), which torch cannot see. ``nvml_source`` says whether it is this process's own usage
  (``"process"``) or the whole device's total-minus-free (``"device"``, what FLARE measures; used
  when NVML cannot attribute memory to our PID, e.g. in a container with its own PID namespace).

Nothing here raises on a machine without CUDA or NVML: the figures are ``None``.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import threading

import torch

logger = logging.getLogger(__name__)

_MB = 2**20


def apply_gpu_memory_cap(device: torch.device | str, cap_mb: int) -> float | None:
    """Cap torch's caching allocator on ``device`` at ``cap_mb``; returns the fraction set.

    ``torch.cuda.set_per_process_memory_fraction`` makes allocations beyond the cap raise
    ``torch.cuda.OutOfMemoryError`` (which the stitcher handles) instead of growing. It does not
    cover the CUDA context or non-torch allocators; those are measured by ``GpuMemoryTracker``.
    No-op (``None``) on the CPU.
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    if cap_mb <= 0:
        raise ValueError(f"cap_mb must be positive, got {cap_mb}")
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, cap_mb * _MB / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    logger.info("GPU memory cap %d MB on %s (%.4f of %.0f MB)", cap_mb, device, fraction, total / _MB)
    return fraction


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (ru_maxrss: KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MB if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float | None:
    """Current resident set size in MB from /proc/self/statm; ``None`` where there is no /proc."""
    try:
        with open("/proc/self/statm") as handle:
            resident_pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / _MB


class _NvmlProbe:
    """NVML handle for one torch CUDA device; ``read()`` -> (MB, source) or None."""

    def __init__(self, device: torch.device) -> None:
        import pynvml  # imported here: absent or broken NVML must only disable the figure

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handle = self._handle_for(device)
        self._pid = os.getpid()

    def _handle_for(self, device: torch.device):
        nvml = self._nvml
        index = device.index if device.index is not None else torch.cuda.current_device()
        # torch's index is relative to CUDA_VISIBLE_DEVICES, NVML's is not: match by UUID.
        try:
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            return nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
        except Exception:  # older torch without .uuid, or an NVML error: fall back to the index
            return nvml.nvmlDeviceGetHandleByIndex(index)

    def read(self) -> tuple[float, str]:
        nvml = self._nvml
        try:
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(self._handle):
                if proc.pid == self._pid and proc.usedGpuMemory is not None:
                    return proc.usedGpuMemory / _MB, "process"
        except nvml.NVMLError:
            pass  # per-process accounting unavailable (e.g. vGPU, MIG, container): use the device
        info = nvml.nvmlDeviceGetMemoryInfo(self._handle)
        return (info.total - info.free) / _MB, "device"

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # shutting down a half-initialised NVML must never fail the caller
            pass


class GpuMemoryTracker:
    """Peak GPU memory over a span of work: torch's peaks plus NVML sampled every ``interval_s``.

    Use as a context manager (``with GpuMemoryTracker(device) as t: ...; t.peaks()``) or call
    ``start()`` / ``stop()``. ``reset()`` clears the peaks; ``sample()`` takes one NVML reading now.
    On the CPU, or without NVML, the corresponding figures are ``None``; nothing raises.
    """

    def __init__(self, device: torch.device | str, *, interval_s: float = 0.1) -> None:
        self.device = torch.device(device)
        self.interval_s = interval_s
        self._cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self._probe: _NvmlProbe | None = None
        self._nvml_checked = False
        self._lock = threading.Lock()
        self._nvml_peak: float | None = None
        self._nvml_source: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _get_probe(self) -> _NvmlProbe | None:
        if not self._nvml_checked:
            self._nvml_checked = True
            if self._cuda:
                try:
                    self._probe = _NvmlProbe(self.device)
                except Exception as exc:  # ImportError, NVMLError (no driver), ...: no NVML figure
                    logger.info("NVML unavailable, GPU memory from torch only: %s", exc)
        return self._probe

    def reset(self) -> None:
        """Forget the peaks (torch's and NVML's) so far."""
        if self._cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        with self._lock:
            self._nvml_peak = None
            self._nvml_source = None

    def sample(self) -> float | None:
        """One NVML reading now (MB), folded into the peak; ``None`` without NVML."""
        probe = self._get_probe()
        if probe is None:
            return None
        try:
            value, source = probe.read()
        except Exception as exc:  # a flaky driver query must not fail an inference
            logger.debug("NVML read failed: %s", exc)
            return None
        with self._lock:
            if self._nvml_peak is None or value > self._nvml_peak:
                self._nvml_peak = value
            # "device" wins once seen: then the peak may include other processes' memory.
            self._nvml_source = "device" if "device" in (source, self._nvml_source) else source
        return value

    def peaks(self) -> dict[str, float | str | None]:
        """``torch_allocated_mb``, ``torch_reserved_mb``, ``nvml_process_mb``, ``nvml_source``."""
        allocated = reserved = None
        if self._cuda:
            allocated = torch.cuda.max_memory_allocated(self.device) / _MB
            reserved = torch.cuda.max_memory_reserved(self.device) / _MB
        with self._lock:
            return {
                "torch_allocated_mb": allocated,
                "torch_reserved_mb": reserved,
                "nvml_process_mb": self._nvml_peak,
                "nvml_source": self._nvml_source,
            }

    def start(self) -> GpuMemoryTracker:
        """Reset the peaks and start the background NVML sampler (no thread without NVML)."""
        self.reset()
        if self._get_probe() is not None and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample_loop, name="gpu-memory-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the sampler after one last reading; the peaks stay readable."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.sample()

    def close(self) -> None:
        self.stop()
        if self._probe is not None:
            self._probe.close()
            self._probe = None
            self._nvml_checked = False

    def _sample_loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> GpuMemoryTracker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
