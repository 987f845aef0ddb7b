"""Is partial-label training worth it? Four ways to train on partially annotated phantoms, one table.

Each training phantom keeps ``--keep`` (4) random organs of the 13 (the others are erased from its
label file, and its datalist entry says ``"annotated"``). Trained with equal steps each:

  (i)   none    the partial labels as if complete (the skipped organs taught as background);
  (ii)  refine  annotated organs from the ground truth, the rest from the demo model's pseudo labels
                (``swinxseg pseudo-label`` through the batch engine);
  (iii) mask    the loss leaves out the classes a case does not annotate;
  (iv)  refine, the encoder started from a short SMIT pre-training (``swinxseg pretrain``).

Printed: held-out mean organ Dice (labels 1-13, complete held-out labels, model grid). The teacher
is the demo model, itself trained on phantoms, so (ii)/(iv) get a strong teacher: read the table
as "what each mode does with a given teacher", not as a claim about real CTs.

    .venv/bin/python -m bench.partial_labels --train 4 --held-out 2 --steps 200 --pretrain-steps 100 \\
        --patch-size 32 --out /tmp/partial-bench
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import nibabel as nib
import numpy as np

log = logging.getLogger(__name__)

ORGANS = tuple(range(1, 14))
# A cut-down field of view at 2 x 2 x 3 mm (about 150 x 130 x 120 mm): pseudo-labelling and
# evaluation stay minutes on a CPU.
SHAPE, SPACING = (76, 66, 40), (2.0, 2.0, 3.0)


def write_cases(folder: Path, seeds, keep: int | None, rng: np.random.Generator) -> list[dict]:
    """Phantoms as NIfTI, labels cut to ``keep`` random organs (None: complete); datalist entries."""
    from phantoms.generator import make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for seed in seeds:
        ct, labels = make_phantom(seed=seed, spacing=SPACING, shape=SHAPE)
        entry = {"image": str(folder / f"p{seed}_0000.nii.gz"), "label": str(folder / f"p{seed}.nii.gz")}
        array = labels.array.astype(np.uint8)
        if keep is not None:
            kept = sorted(int(v) for v in rng.choice(ORGANS, size=keep, replace=False))
            array = np.where(np.isin(array, kept), array, 0).astype(np.uint8)
            entry["annotated"] = kept
        nib.save(nib.Nifti1Image(ct.array, ct.affine), entry["image"])
        nib.save(nib.Nifti1Image(array, labels.affine), entry["label"])
        entries.append(entry)
    return entries


def train_and_score(name, cases, held_out, args, out: Path, **changes) -> tuple[float, float]:
    """(held-out mean organ Dice, seconds) of one run of ``args.steps`` steps."""
    from service.evaluation import mean_dice
    from training.data import PreprocessParams
    from training.evaluate import evaluate_cases
    from training.loop import TrainConfig, Trainer

    started = time.perf_counter()
    config = TrainConfig(
        patch_size=args.patch_size, batch_size=2, steps=args.steps, warmup_steps=max(1, args.steps // 10),
        log_interval=max(1, args.steps // 5), checkpoint_interval=args.steps, seed=0,
        preprocess=PreprocessParams.service_defaults(), data={"kind": "bench"}, **changes,
    )
    trainer = Trainer(config, cases, [], out / name)
    trainer.run()
    trainer.model.eval()
    scores, _ = evaluate_cases(trainer.model, held_out, roi=[args.patch_size] * 3, num_classes=15)
    organ_scores = {k: v for k, v in scores.items() if k in ORGANS}
    return mean_dice(organ_scores), time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=4)
    parser.add_argument("--held-out", type=int, default=2)
    parser.add_argument("--keep", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--pretrain-steps", type=int, default=100)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from service.cli import main as swinxseg
    from training.data import PreprocessParams, load_cases, read_datalist

    rng = np.random.default_rng(0)
    out = args.out
    started = time.perf_counter()
    train_entries = write_cases(out / "data", range(2000, 2000 + args.train), args.keep, rng)
    held_entries = write_cases(out / "data", range(6000, 6000 + args.held_out), None, rng)
    (out / "ds.json").write_text(json.dumps({"training": train_entries, "validation": held_entries}))
    if swinxseg(["pseudo-label", "--datalist", str(out / "ds.json"), "--out", str(out / "pseudo")]) != 0:
        raise SystemExit("pseudo-labelling failed")
    # Pre-training sees the training CTs only, never the held-out ones.
    (out / "ds_pretrain.json").write_text(json.dumps({"training": train_entries}))
    if swinxseg(["pretrain", "--datalist", str(out / "ds_pretrain.json"), "--out", str(out / "smit"), "--patch-size",
                 str(args.patch_size), "--steps", str(args.pretrain_steps), "--warmup-steps", "10",
                 "--checkpoint-interval", str(args.pretrain_steps)]) != 0:
        raise SystemExit("pre-training failed")
    params = PreprocessParams.service_defaults()
    lists = read_datalist(out / "pseudo" / "datalist.json")
    cases = load_cases(lists["training"], params)
    held_out = load_cases(lists["validation"], params)
    setup = time.perf_counter() - started
    rows = [
        ("(i) none: partial labels as complete", train_and_score("none", cases, held_out, args, out, partial="none")),
        ("(ii) refine: demo model as teacher", train_and_score("refine", cases, held_out, args, out, partial="refine")),
        ("(iii) mask: unannotated classes left out", train_and_score("mask", cases, held_out, args, out, partial="mask")),
        ("(iv) refine + SMIT pre-trained encoder", train_and_score(
            "refine_smit", cases, held_out, args, out, partial="refine", init_from=str(out / "smit" / "encoder.pt"))),
    ]
    print(f"\n{args.train} training phantoms keeping {args.keep} of 13 organs, {args.held_out} held out; "
          f"{args.steps} steps each, patch {args.patch_size}^3, batch 2, tiny preset; "
          f"pre-training {args.pretrain_steps} steps; setup {setup:.0f} s")
    print(f"| {'mode':<42} | held-out mean organ Dice | seconds |")
    print(f"|{'-' * 44}|{'-' * 26}|{'-' * 9}|")
    for label, (dice, seconds) in rows:
        shown = "nan" if math.isnan(dice) else f"{dice:.3f}"
        print(f"| {label:<42} | {shown:>24} | {seconds:7.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
