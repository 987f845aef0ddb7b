"""``swinxseg batch INPUT_DIR OUTPUT_DIR``: the FLARE ``docker run`` contract."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from service.cli_flags import MODEL_FLAGS, Flag, add_settings_flags
from service.cli_flags import settings_from_args as settings_from
from service.settings import Settings

HELP = "segment every case in a folder (FLARE docker contract)"

# The flags that set Settings fields (type, choices and range come from the field).
FLAGS = (
    *MODEL_FLAGS,
    Flag("overlap", help="sliding-window overlap in [0, 1), default 0.5"),
    Flag("sw_batch_size", help="windows per forward pass (0 = sized to the cap)"),
    Flag("queue_url", dest="queue", help="send the cases to queue-mode workers through this Redis "
         "(redis://host:6379/0) instead of segmenting here; cases that have a mask are not sent again"),
    Flag("storage_dir", help="with --queue: the jobs folder the workers share (their SWINXSEG_STORAGE_DIR)"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input_dir", type=Path, help="folder of CTs (NIfTI, NRRD, MHA, DICOM folders or zips)")
    parser.add_argument("output_dir", type=Path, help="where CASE.nii.gz masks and report.json/csv go")
    add_settings_flags(parser, FLAGS)
    parser.add_argument("--skip-existing", action="store_true", help="leave cases whose mask already exists")
    parser.add_argument("--preview", action="store_true", help="also write CASE_preview.png")
    parser.add_argument(
        "--output", default="nifti", metavar="KINDS",
        help="comma-separated outputs: nifti (CASE.nii.gz, default), rtstruct (CASE_rtstruct.dcm), "
             "seg (CASE_seg.dcm); rtstruct and seg need DICOM series inputs",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--in-flight", type=int, default=32, metavar="N",
                        help="with --queue: at most N cases out on the cluster at once (default 32)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment first, flags on top; a refused value is a ``UsageError`` naming the flag."""
    return settings_from(args, FLAGS)


def run(args: argparse.Namespace) -> int:
    from service.batch import run_batch
    from service.errors import InvalidInputError
    from service.outputs.selection import parse_outputs

    settings = settings_from_args(args)
    try:
        outputs = parse_outputs(args.output)
    except InvalidInputError as exc:
        print(f"swinxseg batch: --output: {exc.message}", file=sys.stderr)
        return 2
    if args.queue:  # only when asked on the command line: SWINXSEG_QUEUE_URL alone is the servers' setting
        return _run_on_queue(args, settings, outputs)
    progress = None
    if not args.no_progress and sys.stderr.isatty():
        from tqdm import tqdm

        def progress(items):
            return tqdm(items, desc="cases", unit="case")

    report = run_batch(
        args.input_dir, args.output_dir, settings,
        skip_existing=args.skip_existing, preview=args.preview, progress=progress, outputs=outputs,
    )
    return _summary(report, args.output_dir)


def _run_on_queue(args: argparse.Namespace, settings: Settings, outputs: tuple[str, ...]) -> int:
    from service.queue.batch import run_queue_batch

    if args.in_flight < 1:
        print("swinxseg batch: --in-flight must be at least 1", file=sys.stderr)
        return 2
    report = run_queue_batch(args.input_dir, args.output_dir, settings, preview=args.preview, overlap=args.overlap,
                             in_flight=args.in_flight, progress_bar=not args.no_progress and sys.stderr.isatty(),
                             outputs=outputs)
    return _summary(report, args.output_dir)


def _summary(report, output_dir: Path) -> int:
    counts = report.to_dict()["counts"]
    print(
        f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped in "
        f"{report.total_seconds:.1f} s; report: {Path(output_dir) / 'report.json'}"
    )
    return 1 if report.failed else 0
