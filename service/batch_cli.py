"""``swinxseg batch INPUT_DIR OUTPUT_DIR``: the FLARE ``docker run`` contract."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input_dir", type=Path, help="folder of CTs (NIfTI, NRRD, MHA, DICOM folders or zips)")
    parser.add_argument("output_dir", type=Path, help="where CASE.nii.gz masks and report.json/csv go")
    parser.add_argument("--model", type=Path, help="exported model folder (default: the demo weights)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--backend", choices=["auto", "torchscript", "onnx"])
    parser.add_argument("--overlap", type=float, help="sliding-window overlap in [0, 1), default 0.5")
    parser.add_argument("--gpu-mem-cap-mb", type=int, help="hard GPU memory cap in MB (default 4096)")
    parser.add_argument("--sw-batch-size", type=int, help="windows per forward pass (0 = sized to the cap)")
    parser.add_argument("--skip-existing", action="store_true", help="leave cases whose mask already exists")
    parser.add_argument("--preview", action="store_true", help="also write CASE_preview.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {
        "model_dir": args.model, "device": args.device, "backend": args.backend,
        "overlap": args.overlap, "gpu_mem_cap_mb": args.gpu_mem_cap_mb, "sw_batch_size": args.sw_batch_size,
    }
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from service.batch import run_batch

    settings = settings_from_args(args)
    progress = None
    if not args.no_progress and sys.stderr.isatty():
        from tqdm import tqdm

        def progress(items):
            return tqdm(items, desc="cases", unit="case")

    report = run_batch(
        args.input_dir, args.output_dir, settings,
        skip_existing=args.skip_existing, preview=args.preview, progress=progress,
    )
    counts = report.to_dict()["counts"]
    print(
        f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped in "
        f"{report.total_seconds:.1f} s; report: {Path(args.output_dir) / 'report.json'}"
    )
    return 1 if report.failed else 0
