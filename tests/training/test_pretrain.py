"""SMIT pre-training: losses, the EMA teacher, exact resume, and the encoder checkpoint in Swin-X Seg."""

from __future__ import annotations

import math

import pytest
import torch

from service.errors import CheckpointError
from training.data import PreprocessParams, phantom_cases
from training.pretrain import PretrainConfig, PretrainTrainer, prepare_images


@pytest.fixture(scope="module")
def phantom_images():
    return prepare_images(phantom_cases(1, 1000, varied=False), PreprocessParams.service_defaults())


def _config(**changes):
    values = dict(patch_size=32, batch_size=2, steps=30, warmup_steps=3, lr=1e-3, log_interval=5,
                  checkpoint_interval=100, preprocess=PreprocessParams.service_defaults())
    return PretrainConfig(**{**values, **changes})


@pytest.mark.slow
def test_thirty_steps_lower_the_loss_and_the_teacher_follows_the_ema_rule(tmp_path, phantom_images):
    trainer = PretrainTrainer(_config(), phantom_images, tmp_path)
    records = [trainer.train_step() for _ in range(29)]
    # The EMA rule on one parameter, over one step: teacher' = m * teacher + (1 - m) * student'.
    name = "transformer.layers.0.blocks.0.attn.qkv.weight"
    before = dict(trainer.teacher.named_parameters())[name].detach().clone()
    records.append(trainer.train_step())
    student = dict(trainer.student.named_parameters())[name].detach()
    teacher = dict(trainer.teacher.named_parameters())[name].detach()
    m = trainer.config.ema
    assert not torch.equal(teacher, before)
    torch.testing.assert_close(teacher, m * before + (1 - m) * student, rtol=0, atol=1e-7)
    for record in records:
        assert all(math.isfinite(record[k]) for k in ("total", "recon", "patch", "global"))
        assert 0.0 <= record["teacher_batch_entropy"] <= 1.0 and 0.0 <= record["teacher_sample_entropy"] <= 1.0
    print("teacher entropy per image / over the batch at steps 1, 30:",
          [(r["teacher_sample_entropy"], r["teacher_batch_entropy"]) for r in (records[0], records[-1])])
    start = sum(r["total"] for r in records[:5]) / 5
    end = sum(r["total"] for r in records[-5:]) / 5
    assert end < start, (start, end)


@pytest.mark.slow
def test_cli_pretrains_resumes_exactly_and_train_loads_the_encoder(tmp_path, capsys):
    from model_export.config import preset
    from model_export.network import SwinXSeg
    from service.cli import main
    from training.smit import load_encoder

    common = ["--phantoms", "1", "--patch-size", "32", "--batch-size", "1", "--warmup-steps", "1",
              "--checkpoint-interval", "2", "--threads", "1", "--device", "cpu"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["pretrain", *common, "--steps", "4", "--out", str(whole)]) == 0
    assert main(["pretrain", *common, "--steps", "2", "--out", str(parts)]) == 0
    assert main(["pretrain", "--resume", str(parts), "--steps", "4"]) == 0
    a = torch.load(whole / "last.pt", weights_only=True)
    b = torch.load(parts / "last.pt", weights_only=True)
    assert [r["total"] for r in a["history"]] == [r["total"] for r in b["history"]]
    for key, value in a["teacher"].items():
        assert torch.equal(value, b["teacher"][key]), key
    # The encoder checkpoint fills every encoder key of Swin-X Seg and nothing else.
    model = SwinXSeg(preset("tiny"))
    report = load_encoder(model, whole / "encoder.pt")
    encoder_keys = [k for k in model.state_dict() if k.startswith("transformer.")]
    assert sorted(report.loaded) == sorted(encoder_keys)
    assert report.left and not any(k.startswith("transformer.") for k in report.left)
    saved = torch.load(whole / "encoder.pt", weights_only=True)["state_dict"]
    for key in encoder_keys:
        assert torch.equal(model.state_dict()[key], saved[key]), key
    with pytest.raises(CheckpointError, match="wrong-shape"):
        load_encoder(SwinXSeg(preset("full")), whole / "encoder.pt")
    # swinxseg train --init-from reports what it loaded and left.
    argv = ["train", "--phantoms", "1", "--val-phantoms", "0", "--phantom-grid", "default", "--patch-size", "32",
            "--batch-size", "2", "--steps", "1", "--warmup-steps", "1", "--threads", "1",
            "--init-from", str(whole / "encoder.pt"), "--out", str(tmp_path / "ft")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"loaded {len(encoder_keys)} encoder key(s)" in printed
    assert "decoder1" in printed and "out)" in printed


def test_collapse_measures_tell_the_two_collapses_from_healthy_targets():
    from training.smit import collapse_measures

    k, zero = 64, torch.zeros(64)
    uniform = collapse_measures(torch.zeros(8, k), zero, 0.04)
    assert uniform["sample_entropy"] == pytest.approx(1.0, abs=1e-5)  # every target flat
    one_peak = torch.zeros(8, k)
    one_peak[:, 3] = 10.0
    single = collapse_measures(one_peak, zero, 0.04)
    assert single["sample_entropy"] < 0.01 and single["batch_entropy"] < 0.01  # every target the same peak
    spread = torch.zeros(8, k)
    spread[torch.arange(8), torch.arange(8) * 7] = 10.0
    healthy = collapse_measures(spread, zero, 0.04)
    assert healthy["sample_entropy"] < 0.01 and healthy["batch_entropy"] == pytest.approx(math.log(8) / math.log(k), abs=1e-3)
    # Centring is part of the targets: subtracting the peak's own column flattens it again.
    centred = collapse_measures(one_peak, one_peak[0], 0.04)
    assert centred["sample_entropy"] == pytest.approx(1.0, abs=1e-5)


def test_a_collapsed_teacher_is_reported(caplog):
    from training.pretrain import _warn_if_collapsed

    with caplog.at_level("WARNING", logger="training.pretrain"):
        _warn_if_collapsed({"step": 5, "teacher_sample_entropy": 0.999, "teacher_batch_entropy": 1.0})
        _warn_if_collapsed({"step": 6, "teacher_sample_entropy": 0.01, "teacher_batch_entropy": 0.001})
        _warn_if_collapsed({"step": 7, "teacher_sample_entropy": 0.5, "teacher_batch_entropy": 0.6})
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "step 5" in messages[0] and "uniform" in messages[0]
    assert "step 6" in messages[1] and "one prototype" in messages[1]
