"""Every ``swinxseg`` subcommand refuses a bad flag value with one line on stderr and exit code 2,
never a traceback (``service.cli_flags`` maps refused settings; ``OneLineParser`` argparse's own)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.cli import main

REPO = Path(__file__).resolve().parents[1]


def _one_line_exit_2(argv: list[str], capsys) -> str:
    try:
        code = main(argv)
    except SystemExit as refused:  # argparse's own refusals (type, choices) exit from parse_args
        code = refused.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"swinxseg {argv[0]}: error: ")
    return lines[0]


def test_batch_overlap_out_of_range_is_one_line_not_a_pydantic_traceback(tmp_path):
    # The bug: `swinxseg batch IN OUT --overlap 1.5` ended in a pydantic traceback. Run as a user does.
    (tmp_path / "in").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "batch", str(tmp_path / "in"), str(tmp_path / "out"), "--overlap", "1.5"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "swinxseg batch: error: invalid value: --overlap (overlap=1.5): Input should be less than 1"
    ]


def test_batch_bad_environment_value_is_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SWINXSEG_OVERLAP", "1.5")
    line = _one_line_exit_2(["batch", str(tmp_path), str(tmp_path / "out")], capsys)
    assert "overlap" in line


def test_serve(capsys):
    assert "--queue-size (queue_size=0)" in _one_line_exit_2(["serve", "--queue-size", "0"], capsys)


def test_serve_choice_refused_by_argparse_is_one_line(capsys):
    _one_line_exit_2(["serve", "--device", "tpu"], capsys)


def test_preview(tmp_path, capsys):
    assert "missing.nii.gz: no such file" in _one_line_exit_2(
        ["preview", str(tmp_path / "missing.nii.gz"), str(tmp_path / "mask.nii.gz"), str(tmp_path / "p.png")], capsys
    )


def test_export(tmp_path, capsys):
    line = _one_line_exit_2(["export", "--random-init", "--preset", "tiny", "--classes", "0",
                             "--out", str(tmp_path / "m")], capsys)
    assert "out_channels" in line


def test_train(tmp_path, capsys):
    line = _one_line_exit_2(["train", "--phantoms", "1", "--lr", "-1", "--out", str(tmp_path / "run")], capsys)
    assert "lr" in line


def test_phantom(tmp_path, capsys):
    line = _one_line_exit_2(["phantom", str(tmp_path / "ct.nii.gz"), "--labels", str(tmp_path / "l.nii.gz"),
                             "--spacing", "0", "1", "1"], capsys)
    assert "spacing" in line


def test_demo(tmp_path, capsys):
    line = _one_line_exit_2(["demo", "--out", str(tmp_path), "--input", str(tmp_path / "missing.nii.gz")], capsys)
    assert "--input" in line


@pytest.mark.parametrize("command", ["batch", "serve", "preview", "export", "train", "phantom", "demo"])
def test_a_value_argparse_cannot_convert_is_one_line(command, capsys):
    # Every command has at least one typed option; a word where a number goes is refused alike.
    typed = {"batch": ["i", "o", "--overlap", "x"], "serve": ["--port", "x"], "preview": ["a", "b", "c", "--bogus"],
             "export": ["--out", "o", "--seed", "x"], "train": ["--steps", "x"], "phantom": ["o", "--seed", "x"],
             "demo": ["--seed", "x"]}
    with pytest.raises(SystemExit) as info:
        main([command, *typed[command]])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
