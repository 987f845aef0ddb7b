"""The real CT scans we hold, as training and evaluation data for the demo weights.

Two real patients (``../shared/data/ct``, from TotalSegmentator's test files, labels are
TotalSegmentator v2 predictions): ``example_ct.nii.gz`` (train: its labels are used as a teacher's
pseudo labels, the paper's idea) and the DICOM series ``example_ct_dicom`` (held out: evaluated
only, against ``example_seg_dicom.nii.gz``, which is stored in another voxel order, so compared in
world coordinates).

``python -m training.real_ct prepare --out runs/real_data`` writes the mapped labels, training
phantoms and a datalist; ``python -m training.real_ct evaluate --model weights/demo`` prints the
held-out patient's Dice per organ and the model card's fresh phantoms' mean organ Dice per layout.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from service.volume import Volume

log = logging.getLogger(__name__)

# TotalSegmentator v2 class id -> FLARE-23 label; every other id is background. Source: the
# table in ../shared/data/ct/README.md (TotalSegmentator's class map, v2 ids).
TOTALSEG_V2_TO_FLARE23 = {5: 1, 2: 2, 1: 3, 7: 4, 52: 5, 63: 6, 8: 7, 9: 8, 4: 9, 15: 10, 6: 11, 19: 12, 3: 13}
GOAL_ORGANS = (1, 2, 3, 5, 11, 13)  # liver, kidneys, spleen, aorta, stomach: the issue's >= 0.6 list
MIN_ORGAN_VOXELS = 500  # an organ the held-out scan "contains": at least this many reference voxels


def map_totalsegmentator(labels: np.ndarray) -> np.ndarray:
    """TotalSegmentator v2 ids -> FLARE-23 labels (uint8, same shape)."""
    lookup = np.zeros(max(256, int(labels.max()) + 1), dtype=np.uint8)
    for source, target in TOTALSEG_V2_TO_FLARE23.items():
        lookup[source] = target
    return lookup[np.asarray(labels).astype(np.int64)]


def labels_in_world(reference: Volume, labels: Volume) -> np.ndarray:
    """``labels`` sampled on ``reference``'s grid by world position (nearest voxel; 0 outside).

    For label files stored in another voxel order or grid than their CT (LAS vs the DICOM's LPS).
    """
    from scipy import ndimage

    index = np.stack(np.meshgrid(*(np.arange(n) for n in reference.shape), indexing="ij"), axis=0)
    to_labels = np.linalg.inv(labels.affine) @ reference.affine
    coords = np.tensordot(to_labels[:3, :3], index, axes=1) + to_labels[:3, 3, None, None, None]
    return ndimage.map_coordinates(np.asarray(labels.array), coords, order=0, mode="constant", cval=0)


def prepare(shared: Path, out: Path, *, phantoms: int, real_repeats: int, val_phantoms: int) -> Path:
    """Write ``out/``: the real training patient with FLARE-23 labels, ``phantoms`` training and
    ``val_phantoms`` validation phantoms (varied grids), and ``datalist.json``, where the real
    patient is listed ``real_repeats`` times so that about that many patches in
    ``phantoms + real_repeats`` come from it. Returns the datalist path."""
    from service.io.readers import read_volume
    from service.io.writers import write_ct, write_mask
    from training.data import phantom_cases

    out.mkdir(parents=True, exist_ok=True)
    ct = read_volume(shared / "example_ct.nii.gz")
    reference = read_volume(shared / "example_seg_fast_force_split.nii.gz")
    write_ct(ct, out / "real_ct.nii.gz")
    write_mask(reference.with_array(map_totalsegmentator(reference.array)), out / "real_labels.nii.gz")
    real = {"image": "real_ct.nii.gz", "label": "real_labels.nii.gz"}
    lists: dict[str, list] = {"training": [real] * real_repeats, "validation": []}
    for key, cases in (("training", phantom_cases(phantoms, 1000)),
                       ("validation", phantom_cases(val_phantoms, 5000, prefix="val_phantom"))):
        for case in cases:
            image, labels = case.load()
            write_ct(image, out / f"{case.name}.nii.gz")
            write_mask(labels, out / f"{case.name}_labels.nii.gz")
            lists[key].append({"image": f"{case.name}.nii.gz", "label": f"{case.name}_labels.nii.gz"})
    path = out / "datalist.json"
    path.write_text(json.dumps(lists, indent=1))
    log.info("wrote %s: %d training entries, %d validation", path, len(lists["training"]), len(lists["validation"]))
    return path


def held_out_scores(segmenter, shared: Path) -> dict[int, float]:
    """Dice per FLARE-23 organ the held-out DICOM patient contains (>= MIN_ORGAN_VOXELS)."""
    from service.evaluation import dice_per_label
    from service.io.readers import read_volume

    ct = read_volume(shared / "example_ct_dicom")
    truth = map_totalsegmentator(labels_in_world(ct, read_volume(shared / "example_seg_dicom.nii.gz")))
    present = [label for label in range(1, 14) if int((truth == label).sum()) >= MIN_ORGAN_VOXELS]
    prediction = segmenter.segment(ct).mask.array
    return dice_per_label(prediction, truth, labels=present)


def _evaluate(args: argparse.Namespace) -> None:
    from service.labels import FLARE23_LABELS
    from service.segmenter import Segmenter
    from service.settings import Settings

    segmenter = Segmenter(Settings(model_dir=args.model, device="cpu", warmup=False))
    scores = held_out_scores(segmenter, args.shared)
    rows = [f"| {FLARE23_LABELS[label]} | {score:.3f} |" for label, score in scores.items()]
    print("held-out real patient (example_ct_dicom vs example_seg_dicom, world space)")
    print("| organ | Dice |\n|---|---|\n" + "\n".join(rows))
    print(f"mean over the {len(scores)} organs it contains: {np.mean(list(scores.values())):.3f}")
    if args.phantoms:
        # The model card's own held-out phantoms and layouts (RAS, LPS, oblique).
        from service.evaluation import ORGAN_LABELS, mean_dice
        from training.make_demo_weights import evaluate_demo

        for layout, (scores, _) in evaluate_demo(args.model, per_grid=args.phantoms, threads=2).items():
            print(f"fresh phantoms, {layout}: mean organ Dice {mean_dice(scores, ORGAN_LABELS):.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=Path("../shared/data/ct"), help="the real CT folder")
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="mapped real labels + phantoms + datalist.json")
    prep.add_argument("--out", type=Path, required=True)
    prep.add_argument("--phantoms", type=int, default=16)
    prep.add_argument("--real-repeats", type=int, default=8)
    prep.add_argument("--val-phantoms", type=int, default=2)
    evaluate = commands.add_parser("evaluate", help="held-out real patient + fresh phantoms")
    evaluate.add_argument("--model", type=Path, default=Path("weights/demo"))
    evaluate.add_argument("--phantoms", type=int, default=2, help="fresh phantoms per layout (0: none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "prepare":
        prepare(args.shared, args.out, phantoms=args.phantoms, real_repeats=args.real_repeats,
                val_phantoms=args.val_phantoms)
    else:
        _evaluate(args)


if __name__ == "__main__":
    main()
