"""``swinxseg phantom OUT.nii.gz --labels OUT_labels.nii.gz``: write a synthetic CT and its labels."""

from __future__ import annotations

import argparse
from pathlib import Path

from phantoms.generator import DEFAULT_SPACING

HELP = "write a synthetic abdominal CT phantom and its labels"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, help="CT output (.nii.gz or .nii), int16 HU")
    parser.add_argument("--labels", type=Path, required=True, help="label output (.nii.gz or .nii), uint8 FLARE-23")
    parser.add_argument("--seed", type=int, default=0, help="anatomy and noise seed (default 0)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"),
                        help="voxels per axis (default: derived from the ~250x210x155 mm field of view)")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("SX", "SY", "SZ"), default=DEFAULT_SPACING,
                        help=f"voxel size in mm (default {' '.join(map(str, DEFAULT_SPACING))})")
    parser.add_argument("--orientation", default="RAS", help="voxel axis code, e.g. RAS, LPS, PIR (default RAS)")
    parser.add_argument("--oblique-deg", type=float, default=0.0, help="rotate the voxel axes by this angle (degrees)")


def run(args: argparse.Namespace) -> int:
    from phantoms.generator import make_phantom
    from service.io.writers import write_ct, write_mask

    ct, labels = make_phantom(
        seed=args.seed,
        shape=tuple(args.shape) if args.shape else None,
        spacing=tuple(args.spacing),
        orientation=args.orientation,
        oblique_deg=args.oblique_deg,
    )
    write_ct(ct, Path(args.out))
    write_mask(labels, Path(args.labels))
    print(f"wrote {args.out} and {args.labels}: shape {ct.shape}, spacing {tuple(round(s, 3) for s in ct.spacing)} mm")
    return 0
