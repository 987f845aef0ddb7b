"""``swinxseg`` subcommands come from the ``swinxseg.commands`` entry points, not from names in
``service``; a command whose package is not installed is one line, and the others still run."""

from __future__ import annotations

import importlib
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from service import cli, commands
from service.commands import GROUP, Command, CommandUnavailable, declared_in_pyproject, discover

REPO = Path(__file__).resolve().parents[1]
EXPECTED = {
    "batch", "serve", "worker", "preview", "export", "train", "phantom", "demo", "pretrain", "pseudo-label", "dicomweb",
}


def test_pyproject_declares_every_subcommand_as_a_module_with_help_arguments_and_run():
    declared = declared_in_pyproject(REPO / "pyproject.toml")
    assert set(declared) == EXPECTED
    for name, target in declared.items():
        module = importlib.import_module(target)
        assert module.HELP and callable(module.add_arguments) and callable(module.run), name
    # service's own commands are the only ones its modules provide.
    assert {n for n, t in declared.items() if t.startswith("service.")} == {"batch", "serve", "worker", "preview", "dicomweb"}


def test_every_declared_package_is_packaged():
    with open(REPO / "pyproject.toml", "rb") as handle:
        include = tomllib.load(handle)["tool"]["setuptools"]["packages"]["find"]["include"]
    for target in declared_in_pyproject(REPO / "pyproject.toml").values():
        assert f"{target.split('.')[0]}*" in include, target


def test_installed_entry_points_are_used(monkeypatch, tmp_path):
    fake = [metadata.EntryPoint(name="hello", value="service.preview_cli", group=GROUP)]
    monkeypatch.setattr(commands.metadata, "entry_points", lambda group: fake if group == GROUP else [])
    assert discover(tmp_path / "missing.toml") == {"hello": Command("hello", "service.preview_cli")}


def test_a_stale_install_gains_the_commands_only_the_source_declares(monkeypatch, tmp_path):
    fake = [metadata.EntryPoint(name="batch", value="service.batch_cli", group=GROUP)]
    monkeypatch.setattr(commands.metadata, "entry_points", lambda group: fake if group == GROUP else [])
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(f'[project.entry-points."{GROUP}"]\nbatch = "other.module"\nnew = "service.preview_cli"\n')
    assert discover(pyproject) == {
        "batch": Command("batch", "service.batch_cli"),  # the installed declaration wins
        "new": Command("new", "service.preview_cli"),
    }


def test_without_installed_entry_points_the_source_pyproject_is_read(monkeypatch, tmp_path):
    monkeypatch.setattr(commands.metadata, "entry_points", lambda group: [])
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(f'[project.entry-points."{GROUP}"]\nbatch = "service.batch_cli"\n')
    assert discover(pyproject) == {"batch": Command("batch", "service.batch_cli")}
    assert discover(tmp_path / "missing.toml") == {}


def test_a_command_whose_package_is_missing_is_one_line_and_exit_2(monkeypatch, capsys):
    registry = {
        "preview": Command("preview", "service.preview_cli"),
        "train": Command("train", "training_not_installed.cli"),
    }
    monkeypatch.setattr(cli, "discover", lambda: registry)
    with pytest.raises(CommandUnavailable, match="'training_not_installed' package"):
        registry["train"].load()
    assert cli.main(["train", "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["swinxseg train: error: the 'train' command needs the 'training_not_installed' package, "
                   "which is not installed here"]
    # The serving commands are unaffected; `--help` lists the missing one as such.
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "(not installed here)" in out and "render a PNG preview" in out
