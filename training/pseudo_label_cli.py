"""``swinxseg pseudo-label``: a teacher's labels for a datalist's images, and the datalist to train on.

Example::

    swinxseg pseudo-label --model weights/demo --datalist data/dataset.json --out runs/pseudo
    swinxseg train --datalist runs/pseudo/datalist.json --partial refine --out runs/ft

The images go through the batch engine (``service.batch.run_batch``), so a pseudo label gets every
guarantee a ``swinxseg batch`` mask has: written on the image's own grid, refused or warned inputs
reported per case, an atomic write. ``OUT`` receives ``CASE.nii.gz`` per case, the batch
``report.json``/``report.csv``, and ``datalist.json``: the input datalist with absolute paths and a
``"pseudo_label"`` on every entry that got one. By default only partially annotated training entries
(those with an ``"annotated"`` list) are labelled; ``--all`` labels every training entry.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from service.cli_flags import MODEL_FLAGS, add_settings_flags, settings_from_args
from service.errors import InvalidInputError

log = logging.getLogger(__name__)

HELP = "run a teacher model over a datalist's images and write pseudo labels plus a new datalist"

DATALIST_NAME = "datalist.json"
STAGING = ".pseudo-label-inputs"  # hidden: never taken for a case of a later batch over OUT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--datalist", type=Path, required=True, help="Decathlon-style JSON (training/validation)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the pseudo labels and datalist.json")
    parser.add_argument("--all", action="store_true", help="label every training entry, not only partial ones")
    add_settings_flags(parser, MODEL_FLAGS)


def _entries_to_label(datalist: Path, label_all: bool) -> tuple[dict, list[tuple[dict, Path]]]:
    """(the datalist with absolute paths, [(training entry, image path)] to label). Reading it with
    ``read_datalist`` first refuses a malformed datalist with the training command's own messages."""
    from training.data import _relative_to, read_datalist

    read_datalist(datalist)
    data = json.loads(datalist.read_text())
    for key in ("training", "validation"):
        for entry in data.get(key) or []:
            for field in ("image", "label", "pseudo_label"):
                if entry.get(field):
                    entry[field] = str(_relative_to(datalist.parent, entry[field]).resolve())
    chosen = [(e, Path(e["image"])) for e in data["training"] if label_all or e.get("annotated") is not None]
    if not chosen:
        raise InvalidInputError(
            f'datalist {datalist} has no training entry with an "annotated" list; use --all to label every entry'
        )
    return data, chosen


def _stage(chosen: list[tuple[dict, Path]], staging: Path) -> None:
    """Symlink each image into ``staging`` under its own name (the batch engine reads a folder)."""
    staging.mkdir(parents=True, exist_ok=True)
    for old in staging.iterdir():
        old.unlink()
    for _, image in chosen:
        link = staging / image.name
        if link.is_symlink():
            raise InvalidInputError(f"two datalist images are both named {image.name}; rename one")
        os.symlink(image, link)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``swinxseg pseudo-label``; 0 when every chosen image got a pseudo label, else 1."""
    from service.batch import output_path_for, run_batch

    settings = settings_from_args(args, MODEL_FLAGS)
    data, chosen = _entries_to_label(args.datalist, args.all)
    out = args.out.resolve()
    staging = out / STAGING
    _stage(chosen, staging)
    report = run_batch(staging, out, settings)
    by_input = {Path(c.input).name: c for c in report.cases}
    failed = []
    for entry, image in chosen:
        case = by_input.get(image.name)
        if case is not None and case.status == "ok":
            entry["pseudo_label"] = str(output_path_for(staging / image.name, out))
        else:
            entry.pop("pseudo_label", None)
            failed.append(f"{image.name}: {case.error if case else 'not processed'}")
    (out / DATALIST_NAME).write_text(json.dumps(data, indent=2) + "\n")
    for old in staging.iterdir():
        old.unlink()
    staging.rmdir()
    print(f"swinxseg pseudo-label: {len(chosen) - len(failed)} of {len(chosen)} image(s) labelled by "
          f"{report.model}; datalist: {out / DATALIST_NAME}")
    for line in failed:
        print(f"  failed: {line}")
    return 1 if failed else 0
