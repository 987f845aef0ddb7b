"""bfloat16 training: the convolution check finds layers whose bf16 gradients are wrong and pins
them to float32. A layer that is deliberately wrong under autocast stands in for a broken kernel,
so these tests do not depend on which kernels this CPU gets wrong."""

from __future__ import annotations

import copy

import pytest
import torch

from training.precision import (
    autocast,
    bf16_gradient_error,
    convolution_inputs,
    guard_bf16_convolutions,
    keep_in_float32,
    unreliable_bf16_convolutions,
)


class WrongUnderAutocast(torch.nn.Conv3d):
    """A convolution whose low-precision path scales its output (and so its gradients) by 100."""

    def forward(self, x):
        y = super().forward(x)
        return y * 100 if torch.is_autocast_enabled("cpu") else y


class AlwaysFloat32(torch.nn.Conv3d):
    """A convolution that ignores autocast: its bf16 gradients equal float32's exactly."""

    def forward(self, x):
        with torch.autocast("cpu", enabled=False):
            return super().forward(x.float())


class TwoLayers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.exact = AlwaysFloat32(1, 4, 3, padding=1, bias=False)
        self.norm = torch.nn.BatchNorm3d(4)
        self.wrong = WrongUnderAutocast(4, 2, 3, padding=1)

    def forward(self, x):
        return self.wrong(self.norm(self.exact(x)))


def test_convolution_inputs_records_each_layer_without_touching_training_state():
    torch.manual_seed(0)
    model = TwoLayers().train()
    stats = model.norm.running_mean.clone()
    rng = torch.get_rng_state()
    shapes = convolution_inputs(model, (2, 1, 6, 5, 4))
    assert shapes == {"exact": torch.Size([2, 1, 6, 5, 4]), "wrong": torch.Size([2, 4, 6, 5, 4])}
    assert model.training and torch.equal(model.norm.running_mean, stats)
    assert torch.equal(torch.get_rng_state(), rng)


def test_gradient_error_is_zero_for_an_exact_layer_and_large_for_a_wrong_one():
    model = TwoLayers()
    assert bf16_gradient_error(model.exact, torch.Size([1, 1, 4, 4, 4])) == 0.0
    assert bf16_gradient_error(model.wrong, torch.Size([1, 4, 4, 4, 4])) == pytest.approx(99.0, rel=1e-3)


def test_guard_pins_only_the_wrong_layer_and_then_every_layer_agrees(caplog):
    model = TwoLayers()
    weights = copy.deepcopy(model.state_dict())
    assert set(unreliable_bf16_convolutions(model, (1, 1, 8, 8, 8))) == {"wrong"}
    with caplog.at_level("WARNING"):
        assert guard_bf16_convolutions(model, (1, 1, 8, 8, 8)) == ["wrong"]
    assert "running wrong in float32" in caplog.text
    assert unreliable_bf16_convolutions(model, (1, 1, 8, 8, 8)) == {}
    # Same parameters, same keys, still a Conv3d; deep copies keep the float32 forward.
    assert model.state_dict().keys() == weights.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert isinstance(model.wrong, torch.nn.Conv3d)
    x = torch.randn(1, 4, 8, 8, 8)
    with autocast("bf16"):
        pinned, copied = model.wrong(x), copy.deepcopy(model).wrong(x)
    assert pinned.dtype == torch.float32 and torch.equal(pinned, copied)
    assert torch.equal(pinned, model.wrong(x))  # outside autocast: the same float32 result


def test_keep_in_float32_runs_a_real_convolution_in_float32_under_autocast():
    convolution = torch.nn.ConvTranspose3d(3, 2, 2, stride=2)
    x = torch.randn(1, 3, 4, 4, 4)
    reference = convolution(x)
    keep_in_float32(convolution)
    keep_in_float32(convolution)  # idempotent
    with autocast("bf16"):
        out = convolution(x.bfloat16())
    assert out.dtype == torch.float32
    assert torch.allclose(out, convolution(x.bfloat16().float()), atol=0, rtol=0)
    assert not torch.equal(reference, torch.zeros_like(reference))
    with autocast("fp32"):
        assert torch.equal(convolution(x), reference)
