"""Checkpoint loading: accepted layouts, and one clear CheckpointError for every broken file."""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from model_export import export_cli
from model_export.checkpoint import load_checkpoint, load_into
from model_export.config import preset
from model_export.network import SwinXSeg, seeded_init
from service.errors import CheckpointError

REPO = Path(__file__).resolve().parents[2]


class _Evil:
    """Unpickling this would run a shell command that leaves a marker file."""

    marker: Path

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return seeded_init(SwinXSeg(preset("tiny", out_channels=3)), 0).state_dict()


def test_bare_wrapped_and_prefixed_checkpoints(tmp_path, tiny_state):
    variants = {
        "bare.pt": tiny_state,
        "wrapped.pt": {"state_dict": tiny_state, "epoch": 3},
        "model.pt": {"model": tiny_state},
        "dp.pt": {"state_dict": {f"module.{k}": v for k, v in tiny_state.items()}},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        loaded = load_checkpoint(tmp_path / name)
        assert list(loaded) == list(tiny_state), name
        assert all(torch.equal(loaded[k], tiny_state[k]) for k in tiny_state), name


def test_float16_values_become_float32_and_load(tmp_path, tiny_state):
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in tiny_state.items()}
    torch.save({"state_dict": half}, tmp_path / "half.pt")
    loaded = load_checkpoint(tmp_path / "half.pt")
    assert loaded["out.conv.conv.weight"].dtype == torch.float32
    assert loaded["transformer.layers.0.blocks.0.attn.relative_position_index"].dtype == torch.int64
    model = load_into(SwinXSeg(preset("tiny", out_channels=3)), loaded)
    weight = model.state_dict()["encoder0.layer.conv1.conv.weight"]
    assert torch.allclose(weight, tiny_state["encoder0.layer.conv1.conv.weight"], atol=1e-3)


def test_wrong_keys_and_shapes_are_named(tiny_state):
    state = dict(tiny_state)
    del state["out.conv.conv.bias"]
    state["extra.weight"] = torch.zeros(1)
    state["encoder0.layer.conv1.conv.weight"] = torch.zeros(3, 1, 3, 3, 3)
    with pytest.raises(CheckpointError) as info:
        load_into(SwinXSeg(preset("tiny", out_channels=3)), state)
    message = str(info.value)
    assert "1 missing key (out.conv.conv.bias)" in message
    assert "1 unexpected key (extra.weight)" in message
    assert "encoder0.layer.conv1.conv.weight (checkpoint [3, 1, 3, 3, 3], model [12, 1, 3, 3, 3])" in message
    assert "\n" not in message


def test_many_mismatches_are_counted(tiny_state):
    with pytest.raises(CheckpointError, match=r"305 missing keys \(.*and 300 more\)"):
        load_into(SwinXSeg(preset("tiny")), {})
    with pytest.raises(CheckpointError, match="wrong-shape keys"):
        load_into(
            SwinXSeg(preset("tiny", out_channels=3)),
            {k: v[..., :1] if v.dim() else v for k, v in tiny_state.items()},
        )


def _broken_files(tmp_path: Path, tiny_state) -> dict[str, Path]:
    good = tmp_path / "good.pt"
    torch.save({"state_dict": tiny_state}, good)
    data = good.read_bytes()
    files = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "text": b"model weights are at https://example.org/weights\n",
        "binary": bytes(range(256)) * 8,
    }
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.pt"
        paths[name].write_bytes(content)
    with zipfile.ZipFile(tmp_path / "foreign.zip", "w") as archive:
        archive.writestr("notes.txt", "not a checkpoint")
    paths["foreign zip"] = tmp_path / "foreign.zip"
    paths["missing"] = tmp_path / "missing.pt"
    paths["folder"] = tmp_path
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "nostate.pt")
    paths["no state_dict"] = tmp_path / "nostate.pt"
    return paths


def test_broken_files_raise_one_clear_sentence(tmp_path, tiny_state):
    for name, path in _broken_files(tmp_path, tiny_state).items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert str(path) in message, name
        assert "\n" not in message and "Traceback" not in message, name


@pytest.mark.parametrize("as_torch_save", [False, True])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, as_torch_save):
    marker = tmp_path / "PWNED"
    evil = _Evil()
    evil.marker = marker
    path = tmp_path / "evil.pt"
    if as_torch_save:
        torch.save({"state_dict": {"a": torch.zeros(1)}, "payload": evil}, path)
    else:
        path.write_bytes(pickle.dumps(evil))
    with pytest.raises(CheckpointError, match="refused by the safe loader"):
        load_checkpoint(path)
    assert not marker.exists()


def _cli_args(**overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    export_cli.add_arguments(parser)
    argv = []
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return parser.parse_args(argv)


def test_export_cli_raises_typed_errors(tmp_path):
    text = tmp_path / "weights.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="text file"):
        export_cli.run(_cli_args(checkpoint=text, preset="tiny", out=tmp_path / "out"))
    with pytest.raises(export_cli.ExportUsageError, match="--checkpoint CKPT or --random-init"):
        export_cli.run(_cli_args(out=tmp_path / "out"))
    with pytest.raises(export_cli.ExportUsageError, match="unknown export format"):
        export_cli.run(_cli_args(random_init=True, preset="tiny", out=tmp_path / "out", format="tflite"))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_export_cli_wrong_preset_names_the_right_one(tmp_path, tiny_state):
    ckpt = tmp_path / "tiny.pt"
    torch.save({"state_dict": tiny_state}, ckpt)
    with pytest.raises(CheckpointError, match="embed_dim 12 but preset 'full' has 48; use --preset tiny"):
        export_cli.run(_cli_args(checkpoint=ckpt, preset="full", out=tmp_path / "out"))


@pytest.mark.skipif(not (REPO / "service" / "cli.py").is_file(), reason="service/cli.py not present")
def test_cli_prints_one_line_for_a_broken_checkpoint(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 truncated")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "export",
            "--checkpoint",
            str(broken),
            "--preset",
            "tiny",
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == CheckpointError.exit_code
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("swinxseg export: error:") and str(broken) in lines[0]
    assert result.stdout == ""
