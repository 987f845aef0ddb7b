"""CPU backends side by side: the authors' pipeline against ours on ONNX Runtime and OpenVINO.

    python -m bench.cpu_backends [--model weights/demo] [--cases A.nii.gz ...] [--repeats 1] [--out bench_out/cpu]

For each case, in one run and alternating (baseline, ours onnx float32, ours openvino float32,
ours openvino bfloat16, next case ...), each in its own process (``bench.baseline`` /
``bench.ours``), so ratios come from the same minutes of a shared machine. Default cases are
``run_bench``'s: ``example_ct_sm`` (when present) and the unseen phantom 777001.

Columns: ``asked`` is the backend/precision requested, ``ran`` what the metrics say ran (bfloat16
falls back to float32 on a CPU without it); ``s`` wall seconds from model load to mask written; ``CPU s`` user + system seconds of the child;
``s x`` / ``RSS x`` ours over the baseline of the same case; ``agree %`` and ``Dice min`` compare
the mask with the baseline's (labels 1-13, organs). Targets (printed, not asserted): time <= 0.25x,
RSS <= 0.25x, agreement >= 99.5 %, organ Dice >= 0.98.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from bench.run_bench import ORGAN_LABELS, compare_masks, default_cases, resolve_model, run_child

log = logging.getLogger("bench.cpu_backends")

VARIANTS = (("onnx", "float32"), ("openvino", "float32"), ("openvino", "bfloat16"))
TARGETS = {"time_ratio": 0.25, "rss_ratio": 0.25, "agreement_pct": 99.5, "organ_dice": 0.98}


def run(cases: list[Path], *, model: Path, repeats: int, out_dir: Path, timeout_s: float) -> list[dict[str, Any]]:
    """Every (repeat, case): the baseline then each variant; a list of result records."""
    records: list[dict[str, Any]] = []
    masks = out_dir / "masks"
    common = {"model": model, "device": "cpu", "timeout_s": timeout_s}
    for repeat in range(repeats):
        for case in cases:
            stem = case.name.removesuffix(".gz").removesuffix(".nii")
            base_mask = masks / f"{stem}_baseline.nii.gz"
            base = run_child("bench.baseline", case, base_mask, **common)
            records.append({"case": case.name, "repeat": repeat, "variant": "baseline", "result": base})
            for backend, precision in VARIANTS:
                mask = masks / f"{stem}_{backend}_{precision}.nii.gz"
                ours = run_child("bench.ours", case, mask, extra=["--backend", backend, "--precision", precision],
                                 **common)
                compare = None
                if "error" not in base and "error" not in ours:
                    compare = compare_masks(base_mask, mask, case)
                records.append({"case": case.name, "repeat": repeat, "variant": f"{backend} {precision}",
                                "result": ours, "compare": compare})
            (out_dir / "cpu_backends_raw.json").write_text(json.dumps(records, indent=2, default=str) + "\n")
    return records


def _median(results: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(values) if values else None


def table(records: list[dict[str, Any]]) -> str:
    """One row per (case, pipeline): medians over repeats, RSS maxima, ratios to the baseline."""
    header = ["case", "asked", "ran", "windows", "s", "s x", "CPU s", "CPU s x", "RSS MB", "RSS x", "agree %", "organ Dice min (label)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for case in dict.fromkeys(r["case"] for r in records):
        base = _fold([r for r in records if r["case"] == case and r["variant"] == "baseline"])
        for variant in ["baseline", *(f"{b} {p}" for b, p in VARIANTS)]:
            rows = [r for r in records if r["case"] == case and r["variant"] == variant]
            lines.append("| " + " | ".join(_cells(case, variant, _fold(rows), base)) + " |")
    return "\n".join(lines)


def _fold(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r["result"] for r in rows if "error" not in r["result"]]
    compare = next((r.get("compare") for r in reversed(rows) if r.get("compare")), None)
    return {
        "seconds": _median(ok, "seconds"),
        "cpu": _median(ok, "cpu_seconds"),  # user + system: steadier than wall time on a shared machine
        "rss": max((r["peak_rss_mb"] for r in ok), default=None),
        "ran": f"{ok[-1].get('backend', 'monai-torchscript')} {ok[-1].get('precision', 'float32')}" if ok else "failed",
        "windows": (ok[-1].get("windows_run", ok[-1].get("windows")) if ok else None),
        "compare": compare,
        "errors": [r["result"]["error"] for r in rows if "error" in r["result"]],
    }


def _cells(case: str, variant: str, row: dict[str, Any], base: dict[str, Any]) -> list[str]:
    def num(value: float | None, digits: int) -> str:
        return "–" if value is None else f"{value:.{digits}f}"

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    compare = row["compare"] or {}
    organs = {int(k): v for k, v in compare.get("dice", {}).items() if int(k) in ORGAN_LABELS}
    worst = min(organs.items(), key=lambda kv: kv[1]) if organs else None
    return [
        case, variant, row["ran"], "–" if row["windows"] is None else str(row["windows"]),
        num(row["seconds"], 1), "–" if variant == "baseline" else num(ratio(row["seconds"], base["seconds"]), 2),
        num(row["cpu"], 1), "–" if variant == "baseline" else num(ratio(row["cpu"], base["cpu"]), 2),
        num(row["rss"], 0), "–" if variant == "baseline" else num(ratio(row["rss"], base["rss"]), 2),
        num(compare.get("agreement_pct"), 2), "–" if worst is None else f"{worst[1]:.3f} ({worst[0]})",
    ]


def load_line(records: list[dict[str, Any]]) -> str:
    spans = [f"{r['variant']} {r['result'].get('load_avg_start', '?')}->{r['result'].get('load_avg_end', '?')}"
             for r in records]
    return f"Load average (1 min) at start->end of each run, on {os.cpu_count()} CPUs: " + "; ".join(spans)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_backends", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="exported model folder (default: weights/demo)")
    parser.add_argument("--cases", type=Path, nargs="+", help="NIfTI CTs (default: example_ct_sm + a phantom)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench_out/cpu_backends"))
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per child run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    model, note = resolve_model(args.model, out_dir)
    cases = [c.resolve() for c in args.cases] if args.cases else default_cases(out_dir, None)
    records = run(cases, model=model.resolve(), repeats=max(1, args.repeats), out_dir=out_dir, timeout_s=args.timeout)
    report = "\n\n".join([
        f"# CPU backends vs the authors' pipeline ({note})", table(records),
        "Targets: " + ", ".join(f"{k} {v}" for k, v in TARGETS.items()), load_line(records),
    ]) + "\n"
    (out_dir / "cpu_backends_table.md").write_text(report)
    print(report)
    return 1 if any("error" in r["result"] for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
