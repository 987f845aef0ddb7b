"""Memory helpers: no-ops without CUDA/NVML, never raising; the NVML sampler keeps the peak."""

from __future__ import annotations

import time

import pytest
import torch

from service.memory import GpuMemoryTracker, apply_gpu_memory_cap, current_rss_mb, peak_rss_mb

PEAK_KEYS = {"torch_allocated_mb", "torch_reserved_mb", "nvml_process_mb", "nvml_source"}


def test_cap_is_a_no_op_on_cpu() -> None:
    assert apply_gpu_memory_cap(torch.device("cpu"), 4096) is None
    assert apply_gpu_memory_cap("cpu", 4096) is None


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_tracker_returns_none_without_cuda(device: str) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with GpuMemoryTracker(device) as tracker:
        torch.zeros(1000).sum()
        assert tracker.sample() is None
    peaks = tracker.peaks()
    assert set(peaks) == PEAK_KEYS
    assert all(value is None for value in peaks.values())
    tracker.reset()
    tracker.close()


def test_rss_figures_are_positive_megabytes() -> None:
    current, peak = current_rss_mb(), peak_rss_mb()
    assert current is not None and 1 < current < 1e6
    assert 1 < peak < 1e6
    assert current <= peak * 1.05  # the peak can only lag the current figure by a sampling hair


class FakeProbe:
    """Stands in for NVML: reports a rising then falling usage."""

    def __init__(self, values: list[float], source: str = "process") -> None:
        self.values, self.source, self.calls = list(values), source, 0

    def read(self) -> tuple[float, str]:
        value = self.values[min(self.calls, len(self.values) - 1)]
        self.calls += 1
        return value, self.source

    def close(self) -> None:
        pass


def test_background_sampler_keeps_the_nvml_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = GpuMemoryTracker("cpu", interval_s=0.005)
    probe = FakeProbe([100.0, 900.0, 300.0])
    monkeypatch.setattr(tracker, "_get_probe", lambda: probe)
    with tracker:
        deadline = time.monotonic() + 5
        while probe.calls < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
    assert probe.calls >= 4
    peaks = tracker.peaks()
    assert peaks["nvml_process_mb"] == 900.0 and peaks["nvml_source"] == "process"
    tracker.reset()
    assert tracker.peaks()["nvml_process_mb"] is None


def test_failing_nvml_read_returns_none(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken(FakeProbe):
        def read(self) -> tuple[float, str]:
            raise RuntimeError("driver went away")

    tracker = GpuMemoryTracker("cpu")
    monkeypatch.setattr(tracker, "_get_probe", lambda: Broken([]))
    assert tracker.sample() is None
    assert tracker.peaks()["nvml_process_mb"] is None
