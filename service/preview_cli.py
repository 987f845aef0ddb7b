"""``swinxseg preview CT MASK|RTSTRUCT OUT.png``: a PNG of a mask over its CT (three planes), or of
an RT Structure Set's contours as lines over axial CT slices."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

HELP = "render a PNG preview of a CT with its mask or its RTSTRUCT contours"
log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ct", type=Path, help="the CT (any format the service reads; a DICOM series folder or zip)")
    parser.add_argument("mask", type=Path, help="the label mask on the CT's grid, or an RTSTRUCT .dcm file whose "
                        "contours are drawn as lines over axial slices")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--title", help="title above the panels (default: the CT's case name)")


def is_rtstruct(path: Path) -> bool:
    """A single DICOM file whose Modality is RTSTRUCT (header only)."""
    from service.io.formats import looks_like_dicom

    if not path.is_file() or not looks_like_dicom(path):
        return False
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
    except (InvalidDicomError, OSError):
        return False  # not DICOM after all: read as a mask, whose reader says what is wrong
    return header.get("Modality") == "RTSTRUCT"


def run(args: argparse.Namespace) -> int:
    from service.io.cases import case_name_for
    from service.io.readers import read_volume

    ct = read_volume(args.ct)
    title = args.title if args.title is not None else case_name_for(args.ct)
    if is_rtstruct(args.mask):
        from service.contour_preview import render_contour_preview

        out = render_contour_preview(ct, args.mask, args.out, title=title)
    else:
        from service.preview import render_preview

        out = render_preview(ct, read_volume(args.mask), args.out, title=title)
    print(f"wrote {out}")
    return 0
