"""The network reproduces the published checkpoints' keys and arithmetic."""

from __future__ import annotations

import json

import pytest
import torch

from model_export.config import SwinXSegConfig, preset
from model_export.network import SwinXSeg, seeded_init
from model_export.network.windows import (
    shift_window_mask,
    window_partition,
    window_reverse,
    window_unpartition,
)


def test_golden_logits_and_encoder_outputs(golden):
    config = SwinXSegConfig.from_dict(golden["config"])
    model = SwinXSeg(config).eval()
    model.load_state_dict(golden["state_dict"], strict=True)
    x = golden["input"]
    with torch.inference_mode():
        logits = model(x)
        bottleneck, stages = model.transformer(x)
    assert logits.shape == golden["logits"].shape
    assert (logits - golden["logits"]).abs().max().item() <= 1e-5
    for ours, ref in zip(stages, golden["encoder_stage_outputs"], strict=True):
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max().item() <= 1e-5
    tokens = bottleneck.flatten(2).transpose(1, 2)  # (B, (R/32)^3, 16E), the published token layout
    assert (tokens - golden["encoder_bottleneck_tokens"]).abs().max().item() <= 1e-5


def test_full_preset_state_dict_matches_the_published_one(full_manifest_path):
    reference = json.loads(full_manifest_path.read_text())
    model = SwinXSeg(preset("full"))
    ours = {
        key: {"shape": list(value.shape), "dtype": str(value.dtype).removeprefix("torch.")}
        for key, value in model.state_dict().items()
    }
    assert list(ours) == list(reference["state_dict"])  # same keys in the same order
    assert ours == reference["state_dict"]
    assert len(ours) == 305
    assert sum(p.numel() for p in model.parameters()) == reference["num_parameters"] == 30_298_677
    assert SwinXSegConfig.from_dict(reference["config"]) == preset("full")


# 64^3: the last stage is 2^3 (padded to one 4^3 window); 128 x 64 x 32: sides 128, 64 and 32 at once
# (a 128^3 cube costs 2.4x a 96^3 window on the CPU and tests nothing more).
@pytest.mark.parametrize("shape", [(64, 64, 64), (128, 64, 32)])
def test_other_input_sides(shape):
    model = seeded_init(SwinXSeg(preset("tiny", out_channels=3)).eval(), 0)
    with torch.inference_mode():
        out = model(torch.rand(1, 1, *shape))
    assert out.shape == (1, 3, *shape)
    assert torch.isfinite(out).all()


def test_non_cubic_input_and_batch_independence():
    model = seeded_init(SwinXSeg(preset("tiny", out_channels=2)).eval(), 1)
    x = torch.rand(2, 1, 32, 64, 32)
    with torch.inference_mode():
        both = model(x)
        first = model(x[:1])
    assert both.shape == (2, 2, 32, 64, 32)
    assert (both[:1] - first).abs().max().item() < 1e-5


def test_side_not_multiple_of_32_is_refused():
    model = SwinXSeg(preset("tiny")).eval()
    with pytest.raises(ValueError, match="multiple of 32"), torch.inference_mode():
        model(torch.zeros(1, 1, 48, 64, 64))


def test_seeded_init_is_deterministic():
    a = seeded_init(SwinXSeg(preset("tiny")), 5).state_dict()
    b = seeded_init(SwinXSeg(preset("tiny")), 5).state_dict()
    c = seeded_init(SwinXSeg(preset("tiny")), 6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_published_window_reverse_is_not_the_inverse():
    """The published network merges windows with the partition's own permutation (kept on purpose)."""
    x = torch.randn(2, 8, 12, 16, 3)
    windows = window_partition(x, [4, 4, 4])
    assert windows.shape == (2 * 2 * 3 * 4, 64, 3)
    assert torch.equal(window_unpartition(windows, [4, 4, 4], [8, 12, 16]), x)
    scrambled = window_reverse(windows, [4, 4, 4], [8, 12, 16])
    assert scrambled.shape == x.shape and not torch.equal(scrambled, x)


def test_shift_mask_matches_the_published_slice_construction():
    padded, window, shift = [8, 12, 8], [4, 4, 4], [2, 2, 2]
    labels = torch.zeros(1, *padded, 1)
    count = 0
    slices = [(slice(0, -w), slice(-w, -s), slice(-s, None)) for w, s in zip(window, shift, strict=True)]
    for a in slices[0]:
        for b in slices[1]:
            for c in slices[2]:
                labels[:, a, b, c, :] = count
                count += 1
    windows = window_partition(labels, window).squeeze(-1)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    expected = diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)
    ours = shift_window_mask(padded, window, shift, torch.device("cpu"), torch.float32)
    assert torch.equal(ours, expected)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_scripted_model_matches_eager_for_batch_two():
    model = seeded_init(SwinXSeg(preset("tiny", out_channels=2)).eval(), 2)
    scripted = torch.jit.script(model)
    x = torch.rand(2, 1, 32, 64, 32)
    with torch.inference_mode():
        assert (scripted(x) - model(x)).abs().max().item() < 1e-6
