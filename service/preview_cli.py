"""``swinxseg preview CT MASK OUT.png``: a three-plane PNG of a mask over its CT."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "render a PNG preview of a CT and its mask"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ct", type=Path, help="the CT (any format the service reads)")
    parser.add_argument("mask", type=Path, help="the label mask on the CT's grid")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--title", help="title above the panels (default: the CT's case name)")


def run(args: argparse.Namespace) -> int:
    from service.io.cases import case_name_for
    from service.io.readers import read_volume
    from service.preview import render_preview

    ct = read_volume(args.ct)
    mask = read_volume(args.mask)
    title = args.title if args.title is not None else case_name_for(args.ct)
    out = render_preview(ct, mask, args.out, title=title)
    print(f"wrote {out}")
    return 0
