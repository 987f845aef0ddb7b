"""Convolutional blocks of the UNETR-style decoder.

Plain re-implementations of the MONAI blocks the published network uses, with the same module
names so the state_dict keys match (``layer.conv1.conv.weight``, ``conv_block.norm3.running_var``, ...).
All convolutions are bias-free except the output head; LeakyReLU has slope 0.01; BatchNorm3d uses
eps 1e-5 (run in eval mode at inference).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def lrelu(x: Tensor) -> Tensor:
    """LeakyReLU with the published slope 0.01 (a literal: TorchScript cannot read float globals)."""
    return F.leaky_relu(x, 0.01)


class ConvUnit(nn.Module):
    """Holder whose only child is ``conv``: MONAI's ``Convolution`` wrapper, reduced to its keys."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


def conv3d(in_ch: int, out_ch: int, kernel: int, *, bias: bool = False) -> ConvUnit:
    """Stride-1 'same' convolution, ``(B, in, X, Y, Z) -> (B, out, X, Y, Z)``."""
    return ConvUnit(nn.Conv3d(in_ch, out_ch, kernel, stride=1, padding=kernel // 2, bias=bias))


class BasicBlock(nn.Module):
    """MONAI ``UnetBasicBlock``: ``lrelu(norm2(conv2(lrelu(norm1(conv1(x))))))``, both 3^3."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = conv3d(in_ch, out_ch, 3)
        self.conv2 = conv3d(out_ch, out_ch, 3)
        self.norm1 = nn.BatchNorm3d(out_ch)
        self.norm2 = nn.BatchNorm3d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in, X, Y, Z) -> (B, out, X, Y, Z)``."""
        x = lrelu(self.norm1(self.conv1(x)))
        return lrelu(self.norm2(self.conv2(x)))


class ReduceBlock(nn.Module):
    """Skip reducer: ``y = lrelu(norm1(conv1_3^3(x)) + x)``; ``lrelu(norm2(conv2_1^3(y)))`` to ``out`` channels."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = conv3d(in_ch, in_ch, 3)
        self.conv2 = conv3d(in_ch, out_ch, 1)
        self.norm1 = nn.BatchNorm3d(in_ch)
        self.norm2 = nn.BatchNorm3d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in, r, r, r) -> (B, out, r, r, r)``."""
        y = lrelu(self.norm1(self.conv1(x)) + x)
        return lrelu(self.norm2(self.conv2(y)))


class ResBlock(nn.Module):
    """MONAI ``UnetResBlock``: two 3^3 conv+norm with a 1^3 conv+norm projection on the residual."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = conv3d(in_ch, out_ch, 3)
        self.conv2 = conv3d(out_ch, out_ch, 3)
        self.norm1 = nn.BatchNorm3d(out_ch)
        self.norm2 = nn.BatchNorm3d(out_ch)
        # Declared after norm1/norm2, as in MONAI, so the state_dict order matches.
        self.conv3 = conv3d(in_ch, out_ch, 1)
        self.norm3 = nn.BatchNorm3d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in, X, Y, Z) -> (B, out, X, Y, Z)``."""
        out = lrelu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return lrelu(out + self.norm3(self.conv3(x)))


class LayerWrapper(nn.Module):
    """Adds the ``layer.`` level of the published key names (``encoder1.layer.conv1...``)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class UpBlock(nn.Module):
    """``transp_conv`` (2x up, F -> F) then ``conv_block`` ResBlock on ``[up, skip]`` (2F -> F)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.transp_conv = ConvUnit(nn.ConvTranspose3d(channels, channels, 2, stride=2, bias=False))
        self.conv_block = ResBlock(2 * channels, channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """``x``: ``(B, F, r, r, r)``, ``skip``: ``(B, F, 2r, 2r, 2r)`` -> ``(B, F, 2r, 2r, 2r)``."""
        return self.conv_block(torch.cat([self.transp_conv(x), skip], dim=1))


class OutBlock(nn.Module):
    """MONAI ``UnetOutBlock``: 1^3 convolution with bias, ``F -> classes``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = conv3d(in_ch, out_ch, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)
