"""Where the ``swinxseg`` subcommands come from: the ``swinxseg.commands`` entry points.

A package adds a subcommand by declaring, in its ``pyproject.toml``::

    [project.entry-points."swinxseg.commands"]
    train = "training.cli"

The target is a module with ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. ``service`` never names another package's modules, so a serving install
without the training or phantom packages simply has fewer subcommands, and nothing in
``service`` depends on them.

Entry points live in the installed distribution's metadata. A source checkout whose editable
install predates a declared command (or that was never installed) falls back to the
``pyproject.toml`` beside the ``service`` package, so ``python -m service.cli`` works there too.
"""

from __future__ import annotations

import importlib
import logging
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

GROUP = "swinxseg.commands"
_SOURCE_PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


class CommandUnavailable(Exception):
    """A declared subcommand whose module is not installed here (e.g. ``train`` in a serving image)."""


@dataclass(frozen=True)
class Command:
    """A declared subcommand: its name and the module (``package.module``) that implements it."""

    name: str
    module: str

    def load(self) -> ModuleType:
        """Import the implementing module; raises ``CommandUnavailable`` when it is not installed."""
        try:
            return importlib.import_module(self.module)
        except ModuleNotFoundError as exc:
            top = self.module.split(".")[0]
            if exc.name is None or not (exc.name == top or exc.name.startswith(top + ".")):
                raise  # the command's own module exists but one of its imports is broken: a bug
            raise CommandUnavailable(
                f"the {self.name!r} command needs the {top!r} package, which is not installed here"
            ) from None

    def help_text(self) -> str:
        """The module's one-line ``HELP``, or a note that the command is not installed here."""
        try:
            return str(getattr(self.load(), "HELP", ""))
        except CommandUnavailable:
            return "(not installed here)"


def discover(pyproject: Path | None = None) -> dict[str, Command]:
    """Name -> ``Command`` for every subcommand declared in the ``swinxseg.commands`` group.

    Installed entry points win; ``pyproject`` (default: the checkout's own ``pyproject.toml``,
    when there is one) adds the commands it declares that the installed metadata lacks: an
    editable install that predates a command (stale metadata), or no install at all.
    """
    declared = {ep.name: ep.value for ep in metadata.entry_points(group=GROUP)}
    source = declared_in_pyproject(_SOURCE_PYPROJECT if pyproject is None else pyproject)
    added = {name: value for name, value in source.items() if name not in declared}
    if added:
        log.debug("%d %s command(s) from the source tree: %s", len(added), GROUP, ", ".join(sorted(added)))
    declared.update(added)
    return {name: Command(name, _module_of(value)) for name, value in sorted(declared.items())}


def declared_in_pyproject(path: Path) -> dict[str, str]:
    """The ``[project.entry-points."swinxseg.commands"]`` table of ``path`` ({} if absent)."""
    if not path.is_file():
        return {}
    with open(path, "rb") as handle:
        project = tomllib.load(handle).get("project", {})
    return dict(project.get("entry-points", {}).get(GROUP, {}))


def _module_of(value: str) -> str:
    # "package.module" or "package.module:attr": subcommands are modules, so any attr is dropped.
    return value.split(":", 1)[0].strip()
