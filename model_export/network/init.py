"""Deterministic, non-trivial weights for ``--random-init`` exports and tests.

Every tensor is drawn from one local ``torch.Generator`` in module order, so the same seed gives
the same weights whatever the global RNG state; biases, norms and BatchNorm statistics are perturbed
too so that every path of the arithmetic is exercised by a parity check.
"""

import math

import torch
from torch import nn

HEAD = "out.conv.conv"  # the 1x1x1 output convolution of SwinXSeg
HEAD_GAIN = 0.05


@torch.no_grad()
def seeded_init(model: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter and buffer of ``model`` in place from ``seed``; returns ``model``."""
    gen = torch.Generator().manual_seed(int(seed))
    for name, module in model.named_modules():
        _init_module(module, gen)
        if name == HEAD:
            # The decoder's residual sums grow activations to ~55 at full resolution; a small head keeps
            # random logits O(1), so an absolute parity tolerance means the same as for a trained model.
            module.weight.mul_(HEAD_GAIN)
    return model


def _normal(shape: torch.Size, std: float, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * std


def _init_module(module: nn.Module, gen: torch.Generator) -> None:
    if isinstance(module, nn.Linear):
        # Swin's init (std 0.02) keeps the residual stream close to identity, as in training.
        module.weight.copy_(_normal(module.weight.shape, 0.02, gen).clamp_(-0.04, 0.04))
        if module.bias is not None:
            module.bias.copy_(_normal(module.bias.shape, 0.02, gen))
    elif isinstance(module, nn.Conv3d | nn.ConvTranspose3d):
        # He-normal for LeakyReLU; a transposed 2x2x2/2 conv sums over input channels only.
        weight = module.weight
        fan_in = weight.shape[0] if isinstance(module, nn.ConvTranspose3d) else weight[0].numel()
        module.weight.copy_(_normal(weight.shape, math.sqrt(2.0 / fan_in), gen))
        if module.bias is not None:
            module.bias.copy_(_normal(module.bias.shape, 0.02, gen))
    elif isinstance(module, nn.LayerNorm):
        module.weight.copy_(1.0 + _normal(module.weight.shape, 0.1, gen))
        module.bias.copy_(_normal(module.bias.shape, 0.05, gen))
    elif isinstance(module, nn.BatchNorm3d):
        module.weight.copy_(1.0 + _normal(module.weight.shape, 0.1, gen))
        module.bias.copy_(_normal(module.bias.shape, 0.05, gen))
        module.running_mean.copy_(_normal(module.running_mean.shape, 0.05, gen))
        module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) * 0.4 + 0.8)
        module.num_batches_tracked.zero_()
    elif hasattr(module, "relative_position_bias_table"):
        table = module.relative_position_bias_table
        table.copy_(_normal(table.shape, 0.02, gen))
