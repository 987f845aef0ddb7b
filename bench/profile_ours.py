"""Where our seconds and memory go on one case: stage times, RSS per stage, a cProfile top list.

    python -m bench.profile_ours CASE.nii.gz --model weights/demo [--device cpu] [--top 25]

RSS is sampled from /proc every 20 ms on a thread; each of the segmenter's stages (preprocess,
sliding window, restore) is wrapped to record the RSS peak reached while it ran and what it held
when it returned, so a peak can be pinned on a stage. numpy allocations are also traced with
``tracemalloc`` (torch's are not visible to it; the RSS figures cover them). This is a
diagnostic for people, not part of the benchmark table.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import sys
import threading
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

from service.memory import current_rss_mb, peak_rss_mb

log = logging.getLogger("bench.profile_ours")


class RssSampler:
    """Highest RSS seen since the last ``reset()``, sampled every ``interval_s``."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def reset(self) -> None:
        self.peak = current_rss_mb()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, current_rss_mb())


def wrap_stage(module, name: str, sampler: RssSampler, rows: list[dict]) -> None:
    """Replace ``module.name`` by a wrapper recording seconds, RSS before/peak/after, numpy peak."""
    original = getattr(module, name)

    def wrapper(*args, **kwargs):
        sampler.reset()
        tracemalloc.reset_peak()
        before, start = current_rss_mb(), time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            rows.append({
                "stage": name, "seconds": time.perf_counter() - start, "rss_before_mb": before,
                "rss_peak_mb": max(sampler.peak, current_rss_mb()), "rss_after_mb": current_rss_mb(),
                "traced_numpy_peak_mb": tracemalloc.get_traced_memory()[1] / 2**20,
            })

    setattr(module, name, wrapper)


@contextmanager
def timed(rows: list[dict], name: str):
    before, start = current_rss_mb(), time.perf_counter()
    yield
    rows.append({"stage": name, "seconds": time.perf_counter() - start, "rss_before_mb": before,
                 "rss_peak_mb": peak_rss_mb(), "rss_after_mb": current_rss_mb(), "traced_numpy_peak_mb": None})


def profile(case: Path, model: Path, device: str, backend: str, top: int, precision: str = "auto") -> str:
    import service.segmenter as segmenter_module
    from service.heap import return_large_blocks_to_the_os
    from service.io.readers import read_volume
    from service.segmenter import Segmenter
    from service.settings import Settings

    return_large_blocks_to_the_os()  # as every ``swinxseg`` command does
    rows: list[dict] = [{"stage": "imports", "seconds": None, "rss_before_mb": None, "rss_peak_mb": peak_rss_mb(),
                         "rss_after_mb": current_rss_mb(), "traced_numpy_peak_mb": None}]
    tracemalloc.start()
    with RssSampler() as sampler:
        for name in ("preprocess", "sliding_window_labels", "restore_labels"):
            wrap_stage(segmenter_module, name, sampler, rows)
        with timed(rows, "model load"):
            segmenter = Segmenter(Settings(model_dir=model, device=device, backend=backend,
                                           inference_precision=precision))
        with timed(rows, "read"):
            volume = read_volume(case)
        profiler = cProfile.Profile()
        profiler.enable()
        result = segmenter.segment(volume)
        profiler.disable()
    metrics = result.metrics
    lines = [f"case {case.name}: input {metrics.input_shape}, model grid {metrics.model_grid_shape}, "
             f"windows {metrics.windows_run} run / {metrics.windows_skipped} skipped, backend {metrics.backend} "
             f"({getattr(metrics, 'precision', '?')}), "
             f"stitch buffer {metrics.stitch_buffer_mb} MB, peak RSS {peak_rss_mb():.0f} MB",
             "", "| stage | s | RSS before | RSS peak | RSS after | numpy traced peak |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row[k]) for k in (
            "stage", "seconds", "rss_before_mb", "rss_peak_mb", "rss_after_mb", "traced_numpy_peak_mb")) + " |")
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(top)
    return "\n".join(lines) + "\n\ncProfile of segment(), by own time:\n" + stream.getvalue()


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_ours", description=__doc__.splitlines()[0])
    parser.add_argument("case", type=Path)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backend", default="auto", choices=["auto", "torchscript", "onnx", "openvino"])
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                        help="inference precision (SWINXSEG_INFERENCE_PRECISION)")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(profile(args.case, args.model, args.device, args.backend, args.top, args.precision))
    return 0


if __name__ == "__main__":
    sys.exit(main())
