"""The table ``bench/gpu_check.sh`` prints: our batch run on the Table 4 grids beside the paper.

Standard library only, so the table still prints when the project's dependencies are broken.
Reads what the check's steps left in OUT_DIR (any of them may be missing):

- ``steps.tsv``: one line per step: name, status (ok / failed rc=N / timed out), seconds;
- ``batch/report.json``: ``swinxseg batch``'s report (per case: seconds, GPU peaks, windows);
- ``bench/bench_table.md``: the baseline-vs-ours table of ``bench.run_bench`` on two sizes
  (or, when that step was stopped, the runs it saved in ``bench/bench_raw.json``).

    python -m bench.gpu_report OUT_DIR
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

# Paper Table 4 (A100 80 GB, 4096 MB limit): case id -> (image size, runtime s, max GPU MB).
PAPER = {
    "0001": ("512x512x55", 28.01, 3464), "0051": ("512x512x100", 65.86, 3850),
    "0017": ("512x512x150", 73.94, 3896), "0019": ("512x512x215", 48.00, 3616),
    "0099": ("512x512x334", 69.28, 3756), "0063": ("512x512x448", 84.76, 3776),
    "0048": ("512x512x499", 74.73, 3748), "0029": ("512x512x554", 102.5, 4032),
}
HEADER = ("case", "grid", "status", "ours s", "paper s", "GPU nvml MB", "GPU torch reserved MB",
          "paper GPU MB", "windows run/skip", "notes")


def _cell(value, digits: int = 1) -> str:
    if value is None or value == "":
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def case_row(case: dict) -> list[str]:
    """One line of the per-case table from a ``report.json`` case entry."""
    metrics = case.get("metrics") or {}
    match = re.search(r"FLARE(\d{4})", case.get("case", ""))
    paper = PAPER.get(match.group(1)) if match else None
    shape = metrics.get("input_shape") or []
    notes = case.get("error") or "; ".join(metrics.get("fallbacks") or [])
    return [
        case.get("case", "?"),
        "x".join(map(str, shape)) if any(shape) else "–",
        case.get("status", "?"),
        _cell(metrics.get("total_seconds")),
        _cell(paper[1]) if paper else "–",
        _cell(metrics.get("peak_gpu_mb_nvml"), 0),
        _cell(metrics.get("peak_gpu_mb_torch_reserved"), 0),
        _cell(paper[2]) if paper else "–",
        f"{metrics.get('windows_run', 0)}/{metrics.get('windows_skipped', 0)}",
        notes or "",
    ]


def markdown(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows])


def render(out_dir: Path) -> str:
    parts = ["# gpu_check: swinxseg batch on the paper's Table 4 grids (phantoms, random weights)"]
    steps = out_dir / "steps.tsv"
    if steps.is_file():
        rows = [line.split("\t") for line in steps.read_text().splitlines() if line.strip()]
        parts.append("Steps:\n\n" + markdown(("step", "status", "seconds"), rows))
    report = out_dir / "batch" / "report.json"
    if report.is_file():
        try:
            data = json.loads(report.read_text())
            parts.append(markdown(HEADER, [case_row(c) for c in data.get("cases", [])]))
            parts.append(f"batch total {data.get('total_seconds', '?')} s (model loaded once); "
                         "ours s = per case, read + segment + write; GPU nvml includes the CUDA context.")
        except (json.JSONDecodeError, OSError) as exc:
            parts.append(f"batch report unreadable: {exc}")
    else:
        parts.append("no batch report: the batch step did not run or did not finish a case (see logs/).")
    parts.append("Baseline vs ours:\n\n" + baseline_section(out_dir / "bench"))
    return "\n\n".join(parts) + "\n"


def baseline_section(bench_dir: Path) -> str:
    """run_bench's table, or one rebuilt from the runs it saved before it was stopped."""
    table, raw = bench_dir / "bench_table.md", bench_dir / "bench_raw.json"
    if table.is_file():
        return table.read_text()
    if raw.is_file():
        try:
            from bench.run_bench import render_saved  # stdlib-only at import time

            return render_saved(raw)
        except Exception as exc:  # noqa: BLE001 - the report must print whatever happened
            return f"bench_raw.json unreadable: {type(exc).__name__}: {exc}"
    return "no baseline comparison (step failed or was skipped; see logs/)."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python -m bench.gpu_report OUT_DIR\n")
        return 2
    sys.stdout.write(render(Path(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
