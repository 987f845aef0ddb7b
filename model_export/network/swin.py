"""The Swin-transformer encoder of Swin-X Seg (state_dict prefix ``transformer.``).

Tokens are kept on their grid, channels last, ``(B, A, B', C', d)``, for the whole encoder: the
published network flattens them to ``(B, L, d)`` between steps, which is the same memory and the same
arithmetic (LayerNorm and Linear act on the last axis only).
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_export.config import SwinXSegConfig
from model_export.network.windows import (
    relative_position_index,
    shift_window_mask,
    window_partition,
    window_reverse,
)


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` with the exact (erf) GELU; ``(..., d) -> (..., d)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learnt relative position bias."""

    def __init__(self, dim: int, num_heads: int, window: list[int], qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = float((dim // num_heads) ** -0.5)
        table_rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_rows, num_heads))
        # Persistent: published checkpoints store it, so it must be in our state_dict too.
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def relative_position_bias(self) -> Tensor:
        """``(heads, N, N)`` bias added to the attention logits of every window."""
        n = self.relative_position_index.size(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """``x``: ``(B * nW, N, d)``; ``mask``: ``(nW, N, N)`` or None. Returns ``(B * nW, N, d)``."""
        bw, n, d = x.size(0), x.size(1), x.size(2)
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B * nW, heads, N, head_dim)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B * nW, heads, N, N)
        attn = attn + self.relative_position_bias().unsqueeze(0)
        if mask is not None:
            nw = mask.size(0)
            attn = attn.view(-1, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(bw, n, d)
        return self.proj(out)


class SwinBlock(nn.Module):
    """``x + W-MSA(norm1(x))`` then ``x + MLP(norm2(x))``; odd blocks use shifted windows."""

    def __init__(
        self, dim: int, num_heads: int, window: list[int], shift: list[int], mlp_ratio: float, qkv_bias: bool
    ) -> None:
        super().__init__()
        self.window = list(window)
        self.shift = list(shift)
        # The published block shifts only when every axis has a non-zero shift.
        self.shifted = min(shift) > 0
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, self.window, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x``: ``(B, A, B', C', d)``; ``mask``: the stage's shift mask ``(nW, N, N)``. Same shape out."""
        h, w, t = x.size(1), x.size(2), x.size(3)
        y = self.norm1(x)
        # Pad AFTER the norm: the zeros take part in attention (no padding mask), as published.
        pad_h = (self.window[0] - h % self.window[0]) % self.window[0]
        pad_w = (self.window[1] - w % self.window[1]) % self.window[1]
        pad_t = (self.window[2] - t % self.window[2]) % self.window[2]
        if pad_h > 0 or pad_w > 0 or pad_t > 0:
            y = F.pad(y, [0, 0, 0, pad_t, 0, pad_w, 0, pad_h])
        padded = [h + pad_h, w + pad_w, t + pad_t]
        if self.shifted:
            y = torch.roll(y, shifts=[-self.shift[0], -self.shift[1], -self.shift[2]], dims=[1, 2, 3])
            windows = self.attn(window_partition(y, self.window), mask)
        else:
            windows = self.attn(window_partition(y, self.window), None)
        # The published (scrambling) window merge, not the partition's inverse: see window_reverse.
        y = window_reverse(windows, self.window, padded)
        if self.shifted:
            y = torch.roll(y, shifts=[self.shift[0], self.shift[1], self.shift[2]], dims=[1, 2, 3])
        if pad_h > 0 or pad_w > 0 or pad_t > 0:
            y = y[:, :h, :w, :t, :]
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2x downsampling: the 8 tokens of each 2x2x2 cell concatenated, LayerNorm(8d), Linear(8d -> 2d)."""

    def __init__(self, dim: int, reduce_factor: int) -> None:
        super().__init__()
        # Declared before ``norm`` so the state_dict order matches the published checkpoints.
        self.reduction = nn.Linear(8 * dim, (8 // reduce_factor) * dim, bias=False)
        self.norm = nn.LayerNorm(8 * dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, A, B', C', d) -> (B, ceil(A/2), ceil(B'/2), ceil(C'/2), 2d)``."""
        h, w, t = x.size(1), x.size(2), x.size(3)
        if h % 2 == 1 or w % 2 == 1 or t % 2 == 1:
            x = F.pad(x, [0, 0, 0, t % 2, 0, w % 2, 0, h % 2])
        # Offsets along (a, b, c) in the published order; changing it permutes the Linear's inputs.
        parts = [
            x[:, 0::2, 0::2, 0::2, :],
            x[:, 1::2, 0::2, 0::2, :],
            x[:, 0::2, 1::2, 0::2, :],
            x[:, 0::2, 0::2, 1::2, :],
            x[:, 1::2, 1::2, 0::2, :],
            x[:, 0::2, 1::2, 1::2, :],
            x[:, 1::2, 0::2, 1::2, :],
            x[:, 1::2, 1::2, 1::2, :],
        ]
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))


class SwinStage(nn.Module):
    """Swin blocks at one resolution followed by patch merging (key ``layers.i``)."""

    def __init__(self, config: SwinXSegConfig, stage: int) -> None:
        super().__init__()
        dim = config.stage_dim(stage)
        self.window = list(config.window_size)
        self.shift = [w // 2 for w in self.window]
        no_shift = [0, 0, 0]
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                config.num_heads[stage],
                self.window,
                no_shift if i % 2 == 0 else self.shift,
                config.mlp_ratio,
                config.qkv_bias,
            )
            for i in range(config.depths[stage])
        )
        self.downsample = PatchMerging(dim, config.patch_merge_reduce_factor)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, A, B', C', d)`` -> (stage output, same shape; downsampled ``(B, A/2, B'/2, C'/2, 2d)``)."""
        padded = [-(-x.size(i + 1) // self.window[i]) * self.window[i] for i in range(3)]
        # One mask per stage, shared by its shifted blocks; it depends on shapes only.
        mask = shift_window_mask(padded, self.window, self.shift, x.device, x.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return x, self.downsample(x)


class PatchEmbed(nn.Module):
    """``Conv3d(in -> E, kernel = stride = patch)`` then LayerNorm over channels."""

    def __init__(self, config: SwinXSegConfig) -> None:
        super().__init__()
        self.patch = config.patch_size
        self.proj = nn.Conv3d(
            config.in_channels, config.embed_dim, config.patch_size, stride=config.patch_size
        )
        self.norm = nn.LayerNorm(config.embed_dim) if config.patch_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """``(B, in, X, Y, Z) -> (B, X/2, Y/2, Z/2, E)`` (channels last)."""
        pads = [(self.patch - x.size(i) % self.patch) % self.patch for i in (2, 3, 4)]
        if pads[0] > 0 or pads[1] > 0 or pads[2] > 0:
            x = F.pad(x, [0, pads[2], 0, pads[1], 0, pads[0]])
        return self.norm(self.proj(x).permute(0, 2, 3, 4, 1))


class SwinEncoder(nn.Module):
    """Patch embedding, four Swin stages, and a LayerNorm per stage output (``norm0..norm3``)."""

    def __init__(self, config: SwinXSegConfig) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(config)
        self.layers = nn.ModuleList(SwinStage(config, i) for i in range(4))
        self.norm0 = nn.LayerNorm(config.stage_dim(0))
        self.norm1 = nn.LayerNorm(config.stage_dim(1))
        self.norm2 = nn.LayerNorm(config.stage_dim(2))
        self.norm3 = nn.LayerNorm(config.stage_dim(3))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(B, in, R, R, R)`` -> (bottleneck ``(B, 16E, R/32, ...)``, stage outputs ``(B, E*2^i, R/2^(i+1), ...)``)."""
        x = self.patch_embed(x)
        # The norms are named attributes (checkpoint keys), so the four stages are written out.
        out0, x = self.layers[0](x)
        out1, x = self.layers[1](x)
        out2, x = self.layers[2](x)
        out3, x = self.layers[3](x)
        outs = [
            _channels_first(self.norm0(out0)),
            _channels_first(self.norm1(out1)),
            _channels_first(self.norm2(out2)),
            _channels_first(self.norm3(out3)),
        ]
        return _channels_first(x), outs


def _channels_first(x: Tensor) -> Tensor:
    """``(B, A, B', C', d) -> (B, d, A, B', C')``, contiguous for the convolutions that follow."""
    return x.permute(0, 4, 1, 2, 3).contiguous()
