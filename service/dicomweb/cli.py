"""``swinxseg dicomweb --url URL --study UID [--series UID] --output rtstruct,seg``: one study from a
PACS, segmented, its RTSTRUCT/SEG stored back into the same study (STOW-RS).

Credentials are never flags (a command line is visible to every user of the machine): they come
from ``SWINXSEG_DICOMWEB_USERNAME`` / ``_PASSWORD`` or ``SWINXSEG_DICOMWEB_TOKEN`` (docs/PACS.md).
"""

from __future__ import annotations

import argparse
import json
import sys

from service.cli_flags import MODEL_FLAGS, Flag, add_settings_flags, settings_from_args

HELP = "segment a study's CT series from a PACS (DICOMweb) and store the RTSTRUCT/SEG back into it"

FLAGS = (
    Flag("dicomweb_url", dest="url", help="DICOMweb base URL, e.g. http://orthanc:8042/dicom-web "
                                         "(default SWINXSEG_DICOMWEB_URL)"),
    Flag("dicomweb_store_url", dest="store_url"),
    Flag("dicomweb_timeout_s", dest="timeout_s"),
    Flag("dicomweb_retries", dest="retries"),
    *MODEL_FLAGS,
    Flag("overlap", help="sliding-window overlap in [0, 1), default 0.5"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, metavar="UID", help="Study Instance UID")
    parser.add_argument("--series", metavar="UID",
                        help="Series Instance UID to segment (default: the documented choice, docs/PACS.md)")
    parser.add_argument("--output", default="rtstruct", metavar="KINDS",
                        help="comma-separated: rtstruct (default), seg")
    add_settings_flags(parser, FLAGS)


def run(args: argparse.Namespace) -> int:
    """Prints the result as JSON (chosen series, stored Series/SOP Instance UIDs, seconds) on stdout.
    Typed errors reach ``service.cli`` (one line, exit code of the error: 6 for a DICOMweb failure)."""
    from service.dicomweb.pipeline import dicom_outputs, segment_study
    from service.segmenter import Segmenter

    settings = settings_from_args(args, FLAGS)
    outputs = dicom_outputs(args.output)  # a bad --output fails before the model loads
    segmenter = Segmenter(settings)
    result = segment_study(settings, segmenter, study_uid=args.study, series_uid=args.series, outputs=outputs)
    json.dump(result.to_dict(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    stored = ", ".join(f"{o.modality} {o.sop_instance_uid}" for o in result.stored)
    print(f"swinxseg dicomweb: series {result.series.uid} -> stored {stored} in study {result.study_uid} "
          f"on {result.store_url}", file=sys.stderr)
    return 0
