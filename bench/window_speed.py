"""Seconds per 96^3 window for each CPU backend, side by side on one model (e.g. the full preset).

    swinxseg export --random-init --seed 0 --preset full --out /tmp/full     # not committed
    python -m bench.window_speed --model /tmp/full [--windows 3] [--rounds 1]

Each (backend, precision) runs in its own process (``--child``): load, warm-up windows (two for TorchScript, one otherwise), then
``--windows`` timed windows of a smooth random field; the parent alternates the backends for
``--rounds`` rounds so they share the same minutes of a shared machine. ``torch`` is the
TorchScript export in float32 (``torch bfloat16`` too with ``--torch-bf16``). Prints one row per
backend: what ran, median seconds per window, ratio to ONNX Runtime float32, peak RSS and load time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.probes import emit_result, parse_result

log = logging.getLogger("bench.window_speed")

VARIANTS = (("torchscript", "float32"), ("onnx", "float32"), ("openvino", "float32"), ("openvino", "bfloat16"))
REPO_ROOT = Path(__file__).resolve().parent.parent


def child(model: Path, backend: str, precision: str, windows: int) -> dict[str, Any]:
    """Time ``windows`` windows through ``load_predictor`` after one warm-up window."""
    import torch

    from service.inference.predictors import load_predictor
    from service.manifest import load_manifest
    from service.memory import peak_rss_mb

    manifest = load_manifest(model, verify_checksums=False)
    started = time.perf_counter()
    predictor = load_predictor(model, manifest, backend=backend, device=torch.device("cpu"), precision=precision)
    load_s = time.perf_counter() - started
    coarse = torch.rand((1, 1, 12, 12, 12), generator=torch.Generator().manual_seed(0))
    window = torch.nn.functional.interpolate(coarse, size=tuple(manifest.roi_size), mode="trilinear")
    # Warm-up: TorchScript's profiling executor optimises after its first two runs; the others set
    # up on the first.
    for _ in range(2 if backend == "torchscript" else 1):
        predictor(window)
    seconds = []
    for _ in range(windows):
        t = time.perf_counter()
        predictor(window)
        seconds.append(round(time.perf_counter() - t, 3))
    return {"backend": predictor.name, "precision": predictor.precision, "load_s": round(load_s, 2),
            "seconds": seconds, "peak_rss_mb": peak_rss_mb(), "load_avg": os.getloadavg()[0]}


def run(model: Path, variants, windows: int, rounds: int, timeout_s: float) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {f"{b} {p}": [] for b, p in variants}
    for _ in range(rounds):
        for backend, precision in variants:
            command = [sys.executable, "-m", "bench.window_speed", "--child", "--model", str(model),
                       "--backend", backend, "--precision", precision, "--windows", str(windows)]
            log.info("running %s", " ".join(command))
            done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
            result = parse_result(done.stdout)
            if done.returncode != 0 or result is None:
                result = {"error": " / ".join((done.stderr or "").strip().splitlines()[-3:])}
            results[f"{backend} {precision}"].append(result)
    return results


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    def per_window(rows: list[dict[str, Any]]) -> float | None:
        seconds = [s for r in rows if "seconds" in r for s in r["seconds"]]
        return statistics.median(seconds) if seconds else None

    reference = per_window(results.get("onnx float32", []))
    lines = ["| asked | ran | s / window (median) | x ONNX Runtime f32 | peak RSS MB | load s |", "|---|---|---|---|---|---|"]
    for asked, rows in results.items():
        ok = [r for r in rows if "error" not in r]
        median = per_window(ok)
        ratio = "–" if median is None or not reference else f"{median / reference:.2f}"
        ran = f"{ok[-1]['backend']} {ok[-1]['precision']}" if ok else "failed: " + rows[-1].get("error", "")
        lines.append(f"| {asked} | {ran} | {'–' if median is None else f'{median:.2f}'} | {ratio} | "
                     f"{max((r['peak_rss_mb'] for r in ok), default=0):.0f} | "
                     f"{statistics.median([r['load_s'] for r in ok]) if ok else 0:.1f} |")
    loads = [f"{a} {r.get('load_avg', 0):.1f}" for a, rows in results.items() for r in rows]
    return "\n".join(lines) + f"\n\nLoad average (1 min) at the end of each child, {os.cpu_count()} CPUs: " + "; ".join(loads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.window_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="exported model folder (model.ts + model.onnx)")
    parser.add_argument("--windows", type=int, default=3, help="timed windows per backend and round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--torch-bf16", action="store_true", help="add TorchScript bfloat16 autocast")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    if args.child:
        emit_result(child(args.model, args.backend, args.precision, args.windows))
        return 0
    variants = VARIANTS + ((("torchscript", "bfloat16"),) if args.torch_bf16 else ())
    results = run(args.model.resolve(), variants, args.windows, args.rounds, args.timeout)
    report = table(results)
    print(json.dumps(results, default=str), file=sys.stderr)
    print(report)
    return 1 if any("error" in r for rows in results.values() for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
