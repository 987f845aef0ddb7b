"""The ``swinxseg`` console script: a thin shell over the library.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
this file only wires them, sets up logging, and maps typed errors to one line and an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from service.errors import SwinxsegError
from service.heap import return_large_blocks_to_the_os

log = logging.getLogger("swinxseg")

# name -> (module, one-line help). Modules are imported only when the subcommand runs, so
# `swinxseg --help` stays fast and a serving image needs no training code.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "batch": ("service.batch_cli", "segment every case in a folder (FLARE docker contract)"),
    "serve": ("service.api.serve_cli", "run the HTTP service"),
    "preview": ("service.preview_cli", "render a PNG preview of a CT and its mask"),
    "export": ("model_export.export_cli", "export a checkpoint to TorchScript/ONNX with a manifest"),
    "phantom": ("model_export.phantom_cli", "write a synthetic abdominal CT phantom and its labels"),
    "train": ("model_export.train_cli", "fine-tune Swin-X Seg on labelled CTs"),
}


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="swinxseg", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Only the chosen subcommand's module is imported to declare its arguments.
    chosen = next((a for a in argv if a in SUBCOMMANDS), None)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(sub_parser)
            sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    return_large_blocks_to_the_os()
    try:
        return int(args._run(args) or 0)
    except SwinxsegError as exc:
        print(f"swinxseg {args.command}: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"swinxseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
