"""``make demo`` / ``swinxseg demo``: the main job on the bundled default.

Makes a synthetic abdomen CT (or takes ``--input``), segments it through the batch mode with the
default model (the bundled demo weights), and prints where the mask, report and preview are,
with Dice against the phantom's truth, runtime and peak memory. It lives beside the phantom
generator, not in ``service``, so that the serving package never imports the phantoms.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

from service.cli_flags import Flag, UsageError, add_settings_flags, settings_from_args

log = logging.getLogger("swinxseg.demo")

HELP = "segment a synthetic abdomen CT (or --input) with the bundled demo weights and print Dice"
FLAGS = (Flag("model_dir", dest="model", help="exported model folder (default: bundled demo weights)"),)

DEMO_SEED = 424242  # never used for training (training seeds are 1000-4999, validation 5000+)


def _prepare_input(args: argparse.Namespace, inputs: Path) -> Path | None:
    """Fill ``inputs`` with the case; return the truth label file when there is one."""
    if inputs.exists():
        shutil.rmtree(inputs)
    inputs.mkdir(parents=True)
    if args.input:
        source = Path(args.input).resolve()
        if not source.exists():
            raise UsageError(f"--input {source} does not exist")
        (inputs / source.name).symlink_to(source, target_is_directory=source.is_dir())
        return None
    from phantoms.generator import make_phantom
    from service.io.writers import write_ct, write_mask

    ct, labels = make_phantom(seed=args.seed)
    write_ct(ct, inputs / "phantom_0000.nii.gz")
    truth = inputs.parent / "phantom_truth.nii.gz"
    write_mask(labels, truth)
    return truth


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    parser.add_argument("--input", help="a CT file or DICOM folder to segment instead of a phantom")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="phantom seed")
    add_settings_flags(parser, FLAGS)


def run(args: argparse.Namespace) -> int:
    from service.batch import gpu_peak_text, run_batch

    settings = settings_from_args(args, FLAGS)
    out = args.out.resolve()
    truth_path = _prepare_input(args, out / "inputs")
    report = run_batch(out / "inputs", out / "outputs", settings, preview=True)

    print(f"\nmodel: {report.model}")
    for case in report.cases:
        if case.status != "ok":
            print(f"case {case.case}: FAILED: {case.error}")
            continue
        m = case.metrics
        print(f"case {case.case}: mask    {case.output}")
        print(f"case {case.case}: preview {Path(case.output).with_name(case.case + '_preview.png')}")
        print(f"case {case.case}: {m.total_seconds:.1f} s end to end ({m.windows_run} windows run, "
              f"{m.windows_skipped} skipped) on {m.device}/{m.backend}; peak RSS {m.peak_rss_mb:.0f} MB; "
              f"peak GPU {gpu_peak_text(m)}")
        if truth_path is not None:
            _print_dice(Path(case.output), truth_path, out / "dice.json")
    print(f"report: {out / 'outputs' / 'report.json'}")
    return 1 if report.failed else 0


def _print_dice(mask_path: Path, truth_path: Path, dice_json: Path) -> None:
    import nibabel as nib

    from service.evaluation import dice_per_label, mean_dice
    from service.labels import FLARE23_LABELS

    prediction = nib.load(mask_path)
    truth = nib.load(truth_path)
    # Same grid by construction; checked, because a demo that hides a flipped mask is worse than none.
    if prediction.shape != truth.shape or not (abs(prediction.affine - truth.affine) < 1e-4).all():
        print("mask grid differs from the truth grid!")
        return
    scores = dice_per_label(prediction.get_fdata().astype("uint8"), truth.get_fdata().astype("uint8"))
    print("Dice against the phantom truth:")
    for label, score in scores.items():
        print(f"  {label:2d} {FLARE23_LABELS[label]:<22s} {score:.3f}")
    print(f"  mean organ Dice: {mean_dice(scores):.3f}")
    dice_json.write_text(json.dumps({FLARE23_LABELS[k]: v for k, v in scores.items()}, indent=2))


def main(argv: list[str] | None = None) -> int:
    """``python -m phantoms.demo`` (what ``make demo`` runs): the ``swinxseg demo`` subcommand."""
    from service.cli import main as swinxseg

    return swinxseg(["demo", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
