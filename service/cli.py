"""The ``swinxseg`` console script: a thin shell over the library.

Subcommands are found through the ``swinxseg.commands`` entry points (``service.commands``); each
is a module with ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``. This file only
wires them, sets up logging, and maps typed errors and refused settings to one line and an exit
code (2 for a bad flag value, like argparse's own usage errors).
"""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from service.cli_flags import validation_message
from service.commands import Command, CommandUnavailable, discover
from service.errors import SwinxsegError
from service.heap import return_large_blocks_to_the_os
from service.logs import configure_logging

log = logging.getLogger("swinxseg")

USAGE_EXIT_CODE = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (``swinxseg batch: error: ...``), exit 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(USAGE_EXIT_CODE, f"{self.prog}: error: {message}\n")


def build_parser(argv: list[str], commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only the chosen subcommand's module is imported to declare its options."""
    commands = discover() if commands is None else commands
    parser = OneLineParser(prog="swinxseg", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if a in commands), None)
    for name, command in commands.items():
        if name != chosen:
            # Help texts are read only for `swinxseg --help` (chosen is None), so a run stays fast.
            sub.add_parser(name, help=command.help_text() if chosen is None else None)
            continue
        try:
            module = command.load()
        except CommandUnavailable as exc:
            sub.add_parser(name).set_defaults(_unavailable=str(exc))
            continue
        sub_parser = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "_unavailable", None):  # its options are unknown: the command is not here
        print(f"swinxseg {args.command}: error: {args._unavailable}", file=sys.stderr)
        return USAGE_EXIT_CODE
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    configure_logging(level=args.log_level)
    return_large_blocks_to_the_os()
    try:
        return int(args._run(args) or 0)
    except SwinxsegError as exc:
        print(f"swinxseg {args.command}: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except ValidationError as exc:  # settings refused outside a flag helper, e.g. a bad SWINXSEG_* variable
        print(f"swinxseg {args.command}: error: {validation_message(exc)}", file=sys.stderr)
        return USAGE_EXIT_CODE
    except KeyboardInterrupt:
        print(f"swinxseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
