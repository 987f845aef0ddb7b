"""Long-scan memory curve: the same in-plane size at z = 100, 300 and 600 slices.

    python -m bench.long_scan [--model weights/demo] [--slices 100 300 600] [--backend auto] [--out bench_out/long_scan]

The scans are a phantom's central 60 x 60 voxels in-plane (2 mm: 120 x 120 mm, all body, so the
crop keeps it whole) tiled along z by mirroring to z slices of 1 mm: windows grow with z (4 per
48 mm of z at 50 % overlap), the in-plane size does not. Each scan runs through ``bench.ours``
(the real model and backend, ``swinxseg batch``'s path) in its own process; the table gives peak
RSS, seconds and windows per z, and the peak RSS growth from the first z to the last (target:
<= 15 %). Runnable in a few minutes with the tiny demo weights on 2 cores.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.run_bench import PHANTOM_SEED, resolve_model, run_child

log = logging.getLogger("bench.long_scan")

IN_PLANE = 60  # voxels at 2 mm
SPACING = (2.0, 2.0, 1.0)


def write_long_scan(folder: Path, slices: int) -> Path:
    """A ``(60, 60, slices)`` int16 CT of 2 x 2 x 1 mm voxels: a phantom's centre, mirrored along z."""
    from phantoms.generator import make_phantom
    from service.io.writers import write_ct
    from service.volume import Volume

    ct, _ = make_phantom(seed=PHANTOM_SEED, spacing=SPACING)
    ci, cj = (s // 2 for s in ct.shape[:2])
    half = IN_PLANE // 2
    core = np.asarray(ct.array)[ci - half : ci + half, cj - half : cj + half, :]
    # Mirror-tile along z (k, 2k-1, ..., 0, 1, ...): anatomy without a seam, any length.
    period = np.concatenate([np.arange(core.shape[2]), np.arange(core.shape[2] - 1, -1, -1)])
    array = np.ascontiguousarray(core[:, :, np.resize(period, slices)])
    affine = np.diag([*SPACING, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"long_scan_{IN_PLANE}x{IN_PLANE}x{slices}.nii.gz"
    write_ct(Volume(array, affine), path)
    return path


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| slices (z) | scan | model grid | windows run | s | peak RSS MB | RSS x first |", "|---|---|---|---|---|---|---|"]
    first = next((r["peak_rss_mb"] for r in rows if "peak_rss_mb" in r), None)
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['slices']} | failed: {r['error']} | | | | | |")
            continue
        grid = "x".join(map(str, r.get("model_grid_shape", [])))
        lines.append(f"| {r['slices']} | {IN_PLANE}x{IN_PLANE}x{r['slices']} | {grid} | {r.get('windows_run')} | "
                     f"{r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / first:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.long_scan", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="exported model folder (default: weights/demo)")
    parser.add_argument("--slices", type=int, nargs="+", default=[100, 300, 600])
    parser.add_argument("--backend", default="auto", choices=["auto", "torchscript", "onnx", "openvino"])
    parser.add_argument("--out", type=Path, default=Path("bench_out/long_scan"))
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    out_dir = args.out.resolve()
    model, note = resolve_model(args.model, out_dir)
    rows = []
    for slices in args.slices:
        case = write_long_scan(out_dir / "cases", slices)
        result = run_child("bench.ours", case, out_dir / "masks" / case.name, model=model.resolve(), device="cpu",
                           timeout_s=args.timeout, extra=["--backend", args.backend])
        rows.append({"slices": slices, **result})
    ran = next((f"{r['backend']} {r['precision']}" for r in rows if "backend" in r), "?")
    loads = ", ".join(f"{r['slices']}: {r.get('load_avg_start')}->{r.get('load_avg_end')}" for r in rows)
    print(f"# Long-scan memory curve ({note}; {ran})\n\n{table(rows)}\n\n"
          f"Load average (1 min) per run, {os.cpu_count()} CPUs: {loads}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
