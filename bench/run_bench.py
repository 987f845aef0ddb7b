"""Side-by-side benchmark: the authors' pipeline (``bench.baseline``) against swinxseg (``bench.ours``).

Both run the same exported weights on the same cases, alternating (baseline case 1, ours case 1,
baseline case 2, ...), each in a fresh process so that peak RSS and the CUDA context belong to
one run only. Usage::

    python -m bench.run_bench [--model weights/demo] [--cases A.nii.gz B.nii.gz] \
        [--device cpu|cuda] [--repeats 1] [--out bench_out/]

What the table's columns mean (one row per case; with ``--repeats N`` seconds are the median of
the N runs and memory the maximum):

- ``case``, ``image size``: the input file's name and voxel grid (I x J x K).
- ``windows ours run/skip``: 96^3 windows our sliding window ran / skipped as empty (outside the
  body); ``windows base``: windows MONAI ran over the baseline's padded foreground crop (the
  authors' grid: all of them run).
- ``s base``, ``s ours``, ``s x``: wall-clock seconds inside each process from model load to mask
  written (model load, read, preprocess, inference, undo, write), and ours / baseline.
  ``proc s`` pairs are the same runs measured by this parent around the whole child process
  (interpreter start and imports included: what FLARE's ``docker run`` clock would see).
  ``cpu s`` pairs: user + system CPU seconds of each child (all threads); on a shared machine
  they move less than wall time does, and the 1-minute load averages under the table tell how
  busy the machine was.
- ``RSS base``, ``RSS ours``, ``RSS x``: peak resident memory of each process in MB
  (``ru_maxrss``), and ours / baseline.
- ``GPU base``, ``GPU ours`` (only with ``--device cuda``): peak GPU memory in MB as
  ``nvml/torch``: NVML's figure for the process (its usage if NVML can attribute it, else the
  device's used-memory rise since the process started; the CUDA context counts), and torch's peak
  reserved memory.
- ``agree %``: percentage of voxels where the two masks carry the same label.
- ``Dice min (label)``, ``Dice mean``: Dice between the two masks per label present in either
  (labels 1-14), its minimum (with that label) and mean; the per-label values follow in a
  second table with each label's voxel count in baseline/ours (a Dice over a few voxels is noise). These measure agreement between the pipelines, not accuracy.
- ``geometry``: ``ok`` when both masks have exactly the input's shape and affine.

Targets (printed beside the table, not asserted): on the CPU ours <= 0.5x the baseline's wall
time and <= 0.3x its peak RSS, voxel agreement >= 99.5 %, per-organ Dice >= 0.98.
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.probes import parse_result

log = logging.getLogger("bench")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_WEIGHTS = REPO_ROOT / "weights" / "demo"
SHARED_CT = REPO_ROOT.parent / "shared" / "data" / "ct" / "example_ct_sm.nii.gz"
# A seed no training run uses, so the phantom is unseen data for the demo weights.
PHANTOM_SEED = 777001

TARGETS = {"time_ratio": 0.5, "rss_ratio": 0.3, "agreement_pct": 99.5, "organ_dice": 0.98}
ORGAN_LABELS = tuple(range(1, 14))
ALL_LABELS = tuple(range(1, 15))


# --------------------------------------------------------------------------- rows and formatting
@dataclass
class BenchRow:
    """One case's figures, as the table shows them (None = not measured / failed)."""

    case: str
    image_size: str
    windows_ours_run: int | None = None
    windows_ours_skipped: int | None = None
    windows_base: int | None = None
    seconds_base: float | None = None
    seconds_ours: float | None = None
    process_seconds_base: float | None = None
    process_seconds_ours: float | None = None
    cpu_seconds_base: float | None = None
    cpu_seconds_ours: float | None = None
    rss_base_mb: float | None = None
    rss_ours_mb: float | None = None
    gpu_base: tuple[float | None, float | None] | None = None  # (nvml MB, torch reserved MB)
    gpu_ours: tuple[float | None, float | None] | None = None
    agreement_pct: float | None = None
    dice: dict[int, float] = field(default_factory=dict)
    voxels_base: dict[int, int] = field(default_factory=dict)
    voxels_ours: dict[int, int] = field(default_factory=dict)
    geometry_ok: bool | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def time_ratio(self) -> float | None:
        return _ratio(self.seconds_ours, self.seconds_base)

    @property
    def rss_ratio(self) -> float | None:
        return _ratio(self.rss_ours_mb, self.rss_base_mb)

    @property
    def dice_min(self) -> tuple[int, float] | None:
        return min(self.dice.items(), key=lambda item: item[1]) if self.dice else None

    @property
    def dice_mean(self) -> float | None:
        return statistics.fmean(self.dice.values()) if self.dice else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _gpu(pair: tuple[float | None, float | None] | None) -> str:
    if pair is None:
        return "–"
    return f"{_num(pair[0], 0)}/{_num(pair[1], 0)}"


def _windows(run: int | None, skipped: int | None) -> str:
    return "–" if run is None else f"{run}/{skipped if skipped is not None else 0}"


def table_header(*, gpu: bool) -> list[str]:
    columns = ["case", "image size", "windows ours run/skip", "windows base",
               "s base", "s ours", "s x", "proc s base", "proc s ours", "cpu s base", "cpu s ours",
               "RSS base", "RSS ours", "RSS x"]
    if gpu:
        columns += ["GPU base", "GPU ours"]
    return columns + ["agree %", "Dice min (label)", "Dice mean", "geometry"]


def row_cells(row: BenchRow, *, gpu: bool) -> list[str]:
    """The table cells of one row, in ``table_header`` order."""
    dice_min = row.dice_min
    cells = [
        row.case, row.image_size,
        _windows(row.windows_ours_run, row.windows_ours_skipped),
        "–" if row.windows_base is None else str(row.windows_base),
        _num(row.seconds_base), _num(row.seconds_ours), _num(row.time_ratio, 2),
        _num(row.process_seconds_base), _num(row.process_seconds_ours),
        _num(row.cpu_seconds_base), _num(row.cpu_seconds_ours),
        _num(row.rss_base_mb, 0), _num(row.rss_ours_mb, 0), _num(row.rss_ratio, 2),
    ]
    if gpu:
        cells += [_gpu(row.gpu_base), _gpu(row.gpu_ours)]
    cells += [
        _num(row.agreement_pct, 2),
        "–" if dice_min is None else f"{dice_min[1]:.3f} ({dice_min[0]})",
        _num(row.dice_mean, 3),
        {True: "ok", False: "MISMATCH", None: "–"}[row.geometry_ok],
    ]
    return cells


def format_row(row: BenchRow, *, gpu: bool = False) -> str:
    """One markdown table line."""
    return "| " + " | ".join(row_cells(row, gpu=gpu)) + " |"


def format_table(rows: list[BenchRow], *, gpu: bool = False) -> str:
    header = table_header(gpu=gpu)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + [format_row(row, gpu=gpu) for row in rows])


def format_dice_table(rows: list[BenchRow]) -> str:
    """Per-label Dice between the two masks, with each label's voxels in baseline/ours.

    Labels absent from both masks are blank.
    """
    lines = ["| case | " + " | ".join(str(label) for label in ALL_LABELS) + " |",
             "|" + "---|" * (len(ALL_LABELS) + 1)]
    for row in rows:
        cells = [_dice_cell(row, label) if label in row.dice else "" for label in ALL_LABELS]
        lines.append(f"| {row.case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _dice_cell(row: BenchRow, label: int) -> str:
    if not row.voxels_base and not row.voxels_ours:
        return f"{row.dice[label]:.3f}"
    return f"{row.dice[label]:.3f} ({row.voxels_base.get(label, 0)}/{row.voxels_ours.get(label, 0)})"


def format_targets(rows: list[BenchRow], *, device: str) -> str:
    """Each row against the targets (informative only; nothing is asserted)."""
    lines = [f"Targets ({device}): time <= {TARGETS['time_ratio']}x, RSS <= {TARGETS['rss_ratio']}x, "
             f"agreement >= {TARGETS['agreement_pct']} %, organ Dice >= {TARGETS['organ_dice']}"]
    for row in rows:
        organ_dice = [v for k, v in row.dice.items() if k in ORGAN_LABELS]
        checks = [
            _check("time", row.time_ratio, TARGETS["time_ratio"], below=True),
            _check("RSS", row.rss_ratio, TARGETS["rss_ratio"], below=True),
            _check("agreement", row.agreement_pct, TARGETS["agreement_pct"], below=False),
            _check("organ Dice min", min(organ_dice) if organ_dice else None, TARGETS["organ_dice"], below=False),
        ]
        lines.append(f"- {row.case}: " + "; ".join(checks))
        lines += [f"  - error: {error}" for error in row.errors]
    return "\n".join(lines)


def _check(name: str, value: float | None, target: float, *, below: bool) -> str:
    if value is None:
        return f"{name} n/a"
    met = value <= target if below else value >= target
    return f"{name} {value:.3g} {'met' if met else 'MISSED'}"


# --------------------------------------------------------------------------- running the children
def run_child(module: str, case: Path, mask: Path, *, model: Path, device: str, timeout_s: float,
              extra: list[str] | None = None) -> dict[str, Any]:
    """Run ``python -m module CASE MASK --model M --device D`` and return its result JSON.

    Adds ``process_seconds`` (the parent's clock around the child). A crash or timeout gives
    ``{"error": ...}`` with the tail of the child's stderr instead of raising.
    """
    command = [sys.executable, "-m", module, str(case), str(mask), "--model", str(model),
               "--device", device, *(extra or [])]
    log.info("running %s", " ".join(command))
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"{module} timed out after {timeout_s:.0f} s"}
    elapsed = round(time.perf_counter() - started, 3)
    result = parse_result(done.stdout)
    if done.returncode != 0 or result is None:
        tail = (done.stderr or "").strip().splitlines()[-5:]
        return {"error": f"{module} exited {done.returncode}: " + " / ".join(tail), "process_seconds": elapsed}
    result["process_seconds"] = elapsed
    return result


def compare_masks(base_mask: Path, ours_mask: Path, input_path: Path) -> dict[str, Any]:
    """Per-label Dice (labels 1-14), voxel agreement (%) and whether both masks sit on the input's grid."""
    import nibabel as nib
    import numpy as np

    from service.evaluation import defined, dice_per_label, voxel_agreement

    reference = nib.load(str(input_path))
    base, ours = nib.load(str(base_mask)), nib.load(str(ours_mask))
    geometry_ok = all(
        image.shape[:3] == reference.shape[:3] and np.allclose(image.affine, reference.affine, atol=1e-4)
        for image in (base, ours)
    )
    if base.shape != ours.shape:
        return {"geometry_ok": False, "dice": {}, "agreement_pct": None}
    base_labels = np.asarray(base.dataobj, dtype=np.uint8)
    ours_labels = np.asarray(ours.dataobj, dtype=np.uint8)
    return {
        "geometry_ok": bool(geometry_ok),
        # Labels absent from both masks (nan) are left out of the table.
        "dice": defined(dice_per_label(ours_labels, base_labels, labels=ALL_LABELS)),
        "agreement_pct": 100.0 * voxel_agreement(ours_labels, base_labels),
        # A Dice over a handful of voxels swings between 0 and 1; the counts say how much to trust it.
        "voxels_base": _label_counts(base_labels),
        "voxels_ours": _label_counts(ours_labels),
    }


def _label_counts(labels) -> dict[int, int]:
    import numpy as np

    counts = np.bincount(labels.ravel(), minlength=len(ALL_LABELS) + 1)
    return {label: int(counts[label]) for label in ALL_LABELS if counts[label]}


def build_row(case: Path, runs: list[dict[str, Any]]) -> BenchRow:
    """Fold the repeats of one case (dicts with ``base``, ``ours``, ``compare``) into one row."""
    bases = [r["base"] for r in runs if "error" not in r["base"]]
    ours = [r["ours"] for r in runs if "error" not in r["ours"]]
    shape = next((r.get("input_shape") for r in bases + ours if r.get("input_shape")), None)
    row = BenchRow(case=case.name, image_size="x".join(map(str, shape)) if shape else "?")
    row.errors = [r[side]["error"] for r in runs for side in ("base", "ours") if "error" in r[side]]
    if bases:
        row.windows_base = bases[-1].get("windows")
        row.seconds_base = _median(bases, "seconds")
        row.process_seconds_base = _median(bases, "process_seconds")
        row.cpu_seconds_base = _median(bases, "cpu_seconds")
        row.rss_base_mb = max(b["peak_rss_mb"] for b in bases)
        row.gpu_base = _gpu_pair(bases)
    if ours:
        row.windows_ours_run = ours[-1].get("windows_run")
        row.windows_ours_skipped = ours[-1].get("windows_skipped")
        row.seconds_ours = _median(ours, "seconds")
        row.process_seconds_ours = _median(ours, "process_seconds")
        row.cpu_seconds_ours = _median(ours, "cpu_seconds")
        row.rss_ours_mb = max(o["peak_rss_mb"] for o in ours)
        row.gpu_ours = _gpu_pair(ours)
    comparison = next((r["compare"] for r in reversed(runs) if r.get("compare")), None)
    if comparison:
        row.agreement_pct = comparison["agreement_pct"]
        row.dice = {int(k): float(v) for k, v in comparison["dice"].items()}
        row.voxels_base = {int(k): int(v) for k, v in comparison.get("voxels_base", {}).items()}
        row.voxels_ours = {int(k): int(v) for k, v in comparison.get("voxels_ours", {}).items()}
        row.geometry_ok = comparison["geometry_ok"]
    return row


def _median(results: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(values) if values else None


def _gpu_pair(results: list[dict[str, Any]]) -> tuple[float | None, float | None] | None:
    def peak(key: str) -> float | None:
        values = [r[key] for r in results if r.get(key) is not None]
        return max(values) if values else None

    nvml = peak("nvml_process_mb")
    if nvml is None:
        nvml = peak("nvml_device_delta_mb")
    torch_reserved = peak("torch_reserved_mb")
    return None if nvml is None and torch_reserved is None else (nvml, torch_reserved)


# --------------------------------------------------------------------------- inputs
def resolve_model(model: Path | None, out_dir: Path) -> tuple[Path, str]:
    """The model folder to benchmark and a note saying which weights those are."""
    if model is None and (DEMO_WEIGHTS / "manifest.json").is_file():
        model = DEMO_WEIGHTS
    if model is None:
        from model_export.export import export_model

        model = out_dir / "model_tiny_random"
        if not (model / "manifest.json").is_file():
            log.info("no demo weights: exporting a tiny random-init model to %s", model)
            export_model(checkpoint=None, preset="tiny", out_dir=model, random_init=True, seed=0)
        return model, "weights: tiny preset, random init (seed 0): no demo weights were present"
    return model, f"weights: {model} ({describe_model(model)})"


def describe_model(model: Path) -> str:
    """Name, preset and provenance from the manifest, so the table says which weights ran."""
    from service.manifest import load_manifest

    manifest = load_manifest(model, verify_checksums=False)
    source = manifest.notes.split(";")[0] if manifest.notes else "no notes"
    return f"{manifest.name}, preset {manifest.preset}, {source}"


def default_cases(out_dir: Path, phantom_shape: tuple[int, int, int] | None) -> list[Path]:
    """The shared small real CT (when present) and an unseen phantom written to ``out_dir``."""
    cases = [SHARED_CT] if SHARED_CT.is_file() else []
    return cases + [write_phantom(out_dir / "cases", seed=PHANTOM_SEED, shape=phantom_shape)]


def write_phantom(folder: Path, *, seed: int, shape: tuple[int, int, int] | None = None,
                  spacing: tuple[float, float, float] | None = None) -> Path:
    """Write ``make_phantom(seed)``'s CT as int16 NIfTI (and its labels beside it); returns the CT path."""
    from phantoms.generator import make_phantom
    from service.io.writers import write_ct, write_mask

    kwargs: dict[str, Any] = {"seed": seed, "shape": shape}
    if spacing is not None:
        kwargs["spacing"] = spacing
    ct, labels = make_phantom(**kwargs)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "x".join(map(str, ct.shape))
    path = folder / f"phantom_{seed}_{suffix}.nii.gz"
    write_ct(ct, path)
    write_mask(labels, folder / f"phantom_{seed}_{suffix}_labels.nii.gz")
    return path


# --------------------------------------------------------------------------- the run
def run_benchmark(cases: list[Path], *, model: Path, device: str, repeats: int, out_dir: Path,
                  backend: str, timeout_s: float,
                  on_run: Callable[[list[dict[str, Any]]], None] | None = None,
                  ) -> tuple[list[BenchRow], list[dict[str, Any]]]:
    """Alternate baseline and ours over the cases ``repeats`` times; rows plus the raw results.

    ``on_run(raw)`` is called after every case so that an interrupted benchmark leaves its
    finished runs on disk.
    """
    raw: list[dict[str, Any]] = []
    masks = out_dir / "masks"
    for repeat in range(repeats):
        for case in cases:
            stem = case.name.removesuffix(".gz").removesuffix(".nii")
            base_mask, ours_mask = masks / f"{stem}_baseline.nii.gz", masks / f"{stem}_ours.nii.gz"
            common = {"model": model, "device": device, "timeout_s": timeout_s}
            base = run_child("bench.baseline", case, base_mask, **common)
            ours = run_child("bench.ours", case, ours_mask, extra=["--backend", backend], **common)
            entry = {"case": str(case), "repeat": repeat, "base": base, "ours": ours, "compare": None}
            if "error" not in base and "error" not in ours:
                entry["compare"] = compare_masks(base_mask, ours_mask, case)
            raw.append(entry)
            if on_run is not None:
                on_run(raw)
            log.info("case %s repeat %d: baseline %s s, ours %s s", case.name, repeat,
                     base.get("seconds"), ours.get("seconds"))
    rows = [build_row(case, [r for r in raw if r["case"] == str(case)]) for case in cases]
    return rows, raw


def format_load(raw: list[dict[str, Any]]) -> str:
    """1-minute load average at the start and end of each child: how busy the machine was."""
    def span(result: dict[str, Any]) -> str:
        return f"{_num(result.get('load_avg_start'), 1)}->{_num(result.get('load_avg_end'), 1)}"

    runs = [f"{Path(r['case']).name} #{r['repeat']}: baseline {span(r['base'])}, ours {span(r['ours'])}"
            for r in raw]
    return f"Load average (1 min) during each run, on {os.cpu_count()} CPUs: " + "; ".join(runs)


def render_report(rows: list[BenchRow], *, note: str, device: str, raw: list[dict[str, Any]] | None = None) -> str:
    gpu = device.startswith("cuda")
    parts = [
        f"# swinxseg vs the authors' pipeline ({device}; {note})",
        format_table(rows, gpu=gpu),
        "Per-label Dice between the two masks:\n\n" + format_dice_table(rows),
        format_targets(rows, device=device),
    ]
    if raw:
        parts.append(format_load(raw))
    return "\n\n".join(parts) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run_bench",
                                     description="side-by-side benchmark against the authors' pipeline")
    parser.add_argument("--model", type=Path, help="exported model folder (default: weights/demo, else a tiny random export)")
    parser.add_argument("--cases", type=Path, nargs="+", help="NIfTI CTs (default: example_ct_sm + a phantom)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backend", default="auto", choices=["auto", "torchscript", "onnx", "openvino"],
                        help="our backend")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--phantom-shape", type=int, nargs=3, metavar=("I", "J", "K"),
                        help="shape of the default phantom (default: make_phantom's own)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per child run")
    parser.add_argument("--render", type=Path, metavar="RAW_JSON",
                        help="only print the report of an earlier (possibly interrupted) run's bench_raw.json")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def render_saved(raw_json: Path) -> str:
    """The report of a saved ``bench_raw.json``, complete or not."""
    record = json.loads(raw_json.read_text())
    raw = record["runs"]
    cases = list(dict.fromkeys(r["case"] for r in raw))
    rows = [build_row(Path(case), [r for r in raw if r["case"] == case]) for case in cases]
    note = record.get("note", "") + ("" if record.get("complete") else "; INCOMPLETE run")
    return render_report(rows, note=note, device=record.get("device", "cpu"), raw=raw)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        print(render_saved(args.render))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    model, note = resolve_model(args.model, out_dir)
    cases = [c.resolve() for c in args.cases] if args.cases else default_cases(
        out_dir, tuple(args.phantom_shape) if args.phantom_shape else None)
    meta = {"model": str(model), "note": note, "device": args.device, "backend": args.backend,
            "repeats": args.repeats}

    def save_raw(raw: list[dict[str, Any]], rows: list[BenchRow] | None = None) -> None:
        record = {**meta, "complete": rows is not None, "runs": raw,
                  "rows": [asdict(r) for r in rows or []]}
        (out_dir / "bench_raw.json").write_text(json.dumps(record, indent=2, default=str) + "\n")

    rows, raw = run_benchmark(cases, model=model.resolve(), device=args.device, repeats=args.repeats,
                              out_dir=out_dir, backend=args.backend, timeout_s=args.timeout, on_run=save_raw)
    save_raw(raw, rows)
    report = render_report(rows, note=note, device=args.device, raw=raw)
    (out_dir / "bench_table.md").write_text(report)
    print(report)
    print(f"written: {out_dir / 'bench_table.md'}, {out_dir / 'bench_raw.json'}")
    return 1 if any(row.errors for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
