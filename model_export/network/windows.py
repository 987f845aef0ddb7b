"""Window partitioning, the shifted-window mask and the relative position index.

Pure tensor functions (no Python loops over windows) so that TorchScript scripting and ONNX export
see a handful of reshape/permute ops. Grids are channels-last: ``(B, A, B', C', channels)`` with the
three spatial axes in the input's order.
"""

import torch
from torch import Tensor


def window_partition(x: Tensor, window: list[int]) -> Tensor:
    """Cut a padded grid into non-overlapping windows.

    Args:
        x: ``(B, Hp, Wp, Tp, C)`` with each spatial side a multiple of its window side.
        window: ``[wa, wb, wc]``.

    Returns:
        ``(B * nW, wa * wb * wc, C)``; windows in raster order of the window grid, tokens in raster
        order inside each window.
    """
    hp, wp, tp, c = x.size(1), x.size(2), x.size(3), x.size(4)
    x = x.view(-1, hp // window[0], window[0], wp // window[1], window[1], tp // window[2], window[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, window[0] * window[1] * window[2], c)


def window_reverse(windows: Tensor, window: list[int], padded: list[int]) -> Tensor:
    """Put attention windows back on the grid exactly as the published network does.

    The published ``window_reverse`` views the windows as ``(B, nA, nB, nC, wa, wb, wc, d)`` and then
    applies the *partition's* permutation ``(0, 1, 3, 5, 2, 4, 6, 7)`` again instead of its inverse
    ``(0, 1, 4, 2, 5, 3, 6, 7)``, so tokens come back scrambled across the grid. Every published
    checkpoint was trained with that scramble and the golden reference reproduces it (with the true
    inverse the stage outputs differ by up to 18 %), so it is part of the arithmetic we must keep.
    See :func:`window_unpartition` for the true inverse.

    Args:
        windows: ``(B * nW, wa * wb * wc, C)``.
        window: ``[wa, wb, wc]``.
        padded: ``[Hp, Wp, Tp]``, the grid the windows were cut from.

    Returns:
        ``(B, Hp, Wp, Tp, C)``.
    """
    c = windows.size(-1)
    hp, wp, tp = padded[0], padded[1], padded[2]
    x = windows.view(
        -1, hp // window[0], wp // window[1], tp // window[2], window[0], window[1], window[2], c
    )
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, hp, wp, tp, c)


def window_unpartition(windows: Tensor, window: list[int], padded: list[int]) -> Tensor:
    """The true inverse of :func:`window_partition` (not used by the network; kept for tests).

    ``(B * nW, wa * wb * wc, C) -> (B, Hp, Wp, Tp, C)``.
    """
    c = windows.size(-1)
    hp, wp, tp = padded[0], padded[1], padded[2]
    x = windows.view(
        -1, hp // window[0], wp // window[1], tp // window[2], window[0], window[1], window[2], c
    )
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(-1, hp, wp, tp, c)


def shift_window_mask(
    padded: list[int],
    window: list[int],
    shift: list[int],
    device: torch.device,
    dtype: torch.dtype,
    mask_value: float = -100.0,
) -> Tensor:
    """The additive attention mask of shifted windows.

    Each axis of the padded grid is split into ``[0, -window)``, ``[-window, -shift)``, ``[-shift, end)``
    (27 regions in all); tokens of one window that come from different regions may not attend to each
    other. As in the published network the mask is built on the padded grid and ignores the padding.

    Returns:
        ``(nW, N, N)`` with ``N = wa * wb * wc``: 0 where allowed, ``mask_value`` elsewhere (the
        published -100: finite, so it stays NaN-free and exact in float16 too).
    """
    regions: list[Tensor] = []
    for axis in range(3):
        size = padded[axis]
        index = torch.arange(size, device=device)
        # region id 0, 1 or 2 of every coordinate along this axis, without Python slicing loops
        regions.append((index >= size - window[axis]).long() + (index >= size - shift[axis]).long())
    label = regions[0].view(-1, 1, 1) * 9 + regions[1].view(1, -1, 1) * 3 + regions[2].view(1, 1, -1)
    label_windows = window_partition(label.view(1, padded[0], padded[1], padded[2], 1), window).squeeze(-1)
    different = label_windows.unsqueeze(1) != label_windows.unsqueeze(2)
    zeros = torch.zeros(different.shape, device=device, dtype=dtype)
    return zeros.masked_fill(different, mask_value)


def relative_position_index(window: list[int]) -> Tensor:
    """``(N, N)`` int64 index into the ``(2wa-1)(2wb-1)(2wc-1)``-row bias table.

    For tokens ``i, j`` at in-window coordinates ``(p, q, s)``:
    ``(p_i - p_j + wa - 1) * (2wb - 1)(2wc - 1) + (q_i - q_j + wb - 1) * (2wc - 1) + (s_i - s_j + wc - 1)``.
    """
    coords = torch.stack(
        torch.meshgrid(
            torch.arange(window[0]), torch.arange(window[1]), torch.arange(window[2]), indexing="ij"
        )
    ).flatten(1)  # (3, N)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # (N, N, 3)
    relative = relative + torch.tensor([window[0] - 1, window[1] - 1, window[2] - 1])
    strides = torch.tensor([(2 * window[1] - 1) * (2 * window[2] - 1), 2 * window[2] - 1, 1])
    return (relative * strides).sum(-1).long()
