"""Phantom CTs on the grids of the paper's Table 4, for ``bench/gpu_check.sh``.

Eight cases of 512 x 512 voxels in-plane at 0.8 mm and 55 ... 554 slices at 1-2.5 mm, named
``pNN_sSSS_FLAREXXXX_0000.nii.gz`` (FLARE input naming; ``NN`` keeps them sorted by size,
``SSS`` is the slice count and ``XXXX`` the paper's case id). The grids match the paper's; the anatomy does not: a phantom
is about 250 x 210 x 155 mm of body centred in the field of view, the rest is air, so runtimes
are comparable in grid size only.

    python -m bench.gpu_cases OUT_DIR [--slices 55 100 ...] [--inplane 512] [--workers 8]

Cases are made in parallel processes; one that fails is reported and the others still come.
"""

from __future__ import annotations

import argparse
import logging
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

log = logging.getLogger("bench.gpu_cases")

# Paper Table 4: (case id, slices, our choice of slice spacing in mm within the stated 1-2.5 mm).
TABLE4 = (
    ("0001", 55, 2.5), ("0051", 100, 2.5), ("0017", 150, 2.5), ("0019", 215, 2.0),
    ("0099", 334, 1.5), ("0063", 448, 1.25), ("0048", 499, 1.0), ("0029", 554, 1.0),
)
INPLANE_SPACING_MM = 0.8
PHANTOM_SEED = 777002  # not a training seed


def case_name(index: int, case_id: str, slices: int) -> str:
    """``p01_s055_FLARE0001_0000.nii.gz``: sorts by size, names the slices and the paper's case."""
    return f"p{index:02d}_s{slices:03d}_FLARE{case_id}_0000.nii.gz"


def make_case(out_dir: Path, index: int, case_id: str, slices: int, z_mm: float, inplane: int) -> Path:
    """Write one phantom CT (int16 HU, qform = sform = the phantom's affine); return its path."""
    from phantoms.generator import make_phantom
    from service.io.writers import write_ct

    ct, _labels = make_phantom(seed=PHANTOM_SEED, shape=(inplane, inplane, slices),
                               spacing=(INPLANE_SPACING_MM, INPLANE_SPACING_MM, z_mm))
    path = out_dir / case_name(index, case_id, slices)
    # write_ct writes under a hidden name and renames, so a step killed by its timeout leaves no
    # truncated case for the batch to trip over.
    write_ct(ct, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_cases", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--slices", type=int, nargs="+", help="subset of Table 4's slice counts (default: all)")
    parser.add_argument("--inplane", type=int, default=512, help="voxels in-plane (smaller for a smoke run)")
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    wanted = [(i, cid, n, z) for i, (cid, n, z) in enumerate(TABLE4, start=1)
              if not args.slices or n in args.slices]
    failures = 0
    with ProcessPoolExecutor(max_workers=max(1, args.workers)) as pool:
        # Largest first, so the longest phantom starts at once and bounds the wall time.
        jobs = {pool.submit(make_case, args.out_dir, i, cid, n, z, args.inplane): (cid, n)
                for i, cid, n, z in sorted(wanted, key=lambda w: -w[2])}
        for job in as_completed(jobs):
            cid, slices = jobs[job]
            try:
                log.info("case %s (%d slices): %s", cid, slices, job.result())
            except Exception as exc:  # noqa: BLE001 - one bad case must not cost the others
                failures += 1
                log.error("case %s (%d slices) failed: %s: %s", cid, slices, type(exc).__name__, exc)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
