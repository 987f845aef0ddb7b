"""``swinxseg export``: a checkpoint (or seeded random weights) to TorchScript/ONNX plus a manifest.

Prints the parity table on stdout; progress goes to the log (stderr). Errors are raised as
``SwinxsegError`` subclasses, which ``service.cli`` turns into one line and an exit code.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from service.cli_flags import UsageError, error_line

if TYPE_CHECKING:
    from model_export.export import ExportReport


HELP = "export a checkpoint to TorchScript/ONNX with a manifest"

# Arguments that do not make sense together: the shared usage error (exit code 2).
ExportUsageError = UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, help="PyTorch checkpoint (.pt/.pth) to export")
    parser.add_argument(
        "--preset", default="full", choices=["full", "tiny"], help="network size (default: full)"
    )
    parser.add_argument(
        "--classes", type=int, default=None, help="output channels (default: the checkpoint's, else 15)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. weights/NAME")
    parser.add_argument(
        "--format", default="torchscript,onnx", help="comma-separated: torchscript, onnx (default: both)"
    )
    parser.add_argument("--random-init", action="store_true", help="export seeded random weights instead")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random-init and of the parity input")
    parser.add_argument("--name", default=None, help="model name in the manifest (default: the folder name)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 18)")
    parser.add_argument(
        "--tolerance", type=float, default=None, help="max |logit diff| vs eager allowed (default: 1e-4)"
    )


def run(args: argparse.Namespace) -> int:
    # Imported here so `swinxseg export --help` does not load torch.
    from model_export.export import DEFAULT_OPSET, PARITY_TOLERANCE, export_with_report

    if (args.checkpoint is None) == (not args.random_init):
        raise ExportUsageError("give either --checkpoint CKPT or --random-init, not both and not neither")
    try:
        report = export_with_report(
            checkpoint=args.checkpoint,
            preset=args.preset,
            out_dir=args.out,
            formats=args.format.split(","),
            out_channels=args.classes,
            random_init=args.random_init,
            seed=args.seed,
            name=args.name,
            opset=args.opset or DEFAULT_OPSET,
            tolerance=args.tolerance if args.tolerance is not None else PARITY_TOLERANCE,
        )
    except ValueError as exc:
        raise ExportUsageError(error_line(exc)) from None
    print(format_report(report))
    return 0


def format_report(report: ExportReport) -> str:
    """The parity table and the files written, as the command prints them."""
    lines = [f"{'backend':<12} {'max |diff| vs eager':>20} {'seconds':>8}"]
    for check in report.checks:
        diff = "(reference)" if check.max_abs_diff is None else f"{check.max_abs_diff:.2e}"
        lines.append(f"{check.backend:<12} {diff:>20} {check.seconds:>8.1f}")
    manifest = report.manifest
    files = ", ".join([info.file for info in manifest.artifacts.values()] + ["manifest.json"])
    lines.append(
        f"max |logit| {report.max_abs_logit:.3g}, tolerance {report.tolerance:g}; "
        f"wrote {report.out_dir}: {files} ({report.seconds:.0f} s)"
    )
    return "\n".join(lines)
