"""One way to give a subcommand flags for ``Settings`` fields, and to turn them back into ``Settings``.

Each flag's type, choices and default text come from the ``Settings`` field it sets, so a flag
cannot drift from the setting (a new ``Literal`` value, a changed default). Values are checked
by ``Settings`` itself; a value it refuses becomes one ``UsageError`` line naming the flag.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union, get_args, get_origin

from pydantic import ValidationError

from service.errors import SwinxsegError
from service.settings import Settings


class UsageError(SwinxsegError):
    """A flag value or combination that makes no sense (exit code 2, like argparse's own errors)."""

    code = "usage"
    exit_code = 2


@dataclass(frozen=True)
class Flag:
    """``--flag`` (``dest``) setting ``Settings.<field>``; ``help`` defaults to the field's description."""

    field: str
    dest: str | None = None
    help: str | None = None

    @property
    def name(self) -> str:
        return self.dest or self.field

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


# The flags every command that loads a model shares.
MODEL_FLAGS = (
    Flag("model_dir", dest="model", help="exported model folder (default: the demo weights)"),
    Flag("device"),
    Flag("backend"),
    Flag("inference_precision", dest="precision"),
    Flag("gpu_mem_cap_mb", help="hard GPU memory cap in MB (default 4096)"),
)


def add_settings_flags(parser: argparse.ArgumentParser, flags: Iterable[Flag]) -> None:
    """Declare one option per ``Flag``; every option defaults to ``None`` (= keep the setting)."""
    for flag in flags:
        info = Settings.model_fields.get(flag.field)
        if info is None:
            raise ValueError(f"{flag.option}: Settings has no field {flag.field!r}")
        kind, choices = _plain_type(info.annotation)
        help_text = flag.help or info.description or flag.field.replace("_", " ")
        if kind is bool:
            parser.add_argument(
                flag.option, dest=flag.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
            continue
        if info.default is not None and "default" not in help_text:
            help_text += f" (default {info.default})"
        parser.add_argument(flag.option, dest=flag.name, type=kind, choices=choices, help=help_text)


def settings_from_args(args: argparse.Namespace, flags: Iterable[Flag], **fixed: object) -> Settings:
    """``Settings`` from the environment with the given flags (and ``fixed`` values) on top.

    Raises ``UsageError`` naming the flag when ``Settings`` refuses a value.
    """
    flags = list(flags)
    overrides = {f.field: getattr(args, f.name) for f in flags if getattr(args, f.name, None) is not None}
    try:
        return Settings(**overrides, **fixed)
    except ValidationError as exc:
        raise UsageError(validation_message(exc, {f.field: f.option for f in flags})) from None


def validation_message(exc: ValidationError, options: Mapping[str, str] | None = None) -> str:
    """A pydantic error as one line: ``--overlap (overlap=1.5): Input should be less than 1; ...``."""
    options = options or {}
    parts = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error.get("loc", ())) or "settings"
        where = f"{options[field]} ({field}" if field in options else f"setting {field} (SWINXSEG_{field.upper()}"
        parts.append(f"{where}={error.get('input')!r}): {error.get('msg', 'invalid value')}")
    return "invalid value: " + "; ".join(parts)


def error_line(exc: ValueError) -> str:
    """A ``ValueError`` as one line; a pydantic error gives its messages, not its multi-line report."""
    if isinstance(exc, ValidationError):
        return "; ".join(str(e.get("msg", "")).removeprefix("Value error, ") for e in exc.errors())
    return " ".join(str(exc).split())


def _plain_type(annotation: object) -> tuple[type, list[str] | None]:
    """(argparse ``type``, ``choices``) for a field annotation; ``X | None`` counts as ``X``."""
    if get_origin(annotation) in (Union, types.UnionType):
        annotation = next(a for a in get_args(annotation) if a is not type(None))
    if get_origin(annotation) is Literal:
        return str, [str(v) for v in get_args(annotation)]
    if annotation in (bool, int, float, str):
        return annotation, None  # type: ignore[return-value]
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return Path, None
    raise ValueError(f"no command-line form for a setting of type {annotation!r}")
