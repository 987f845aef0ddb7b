"""Sliding-window geometry and blending weights: small, pure, cached functions.

The placement is MONAI's ``sliding_window_inference`` (``_get_scan_interval`` +
``dense_patch_slices``) and the gaussian is MONAI's
``compute_importance_map(mode="gaussian")``, so a model trained and validated with MONAI's
inferer sees exactly the same windows and weights here. Tests check both against MONAI.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from functools import lru_cache

import torch

Triple = tuple[int, int, int]

# MONAI floors the gaussian at this value so corner voxels of a window never get a weight of 0
# (a voxel covered only by window corners would otherwise divide by ~0).
_MIN_IMPORTANCE = 1e-3


def _check_overlap(overlap: float) -> None:
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")


@lru_cache(maxsize=256)
def window_starts(size: int, roi: int, overlap: float) -> tuple[int, ...]:
    """Start indices of the windows along one axis of length ``size``.

    interval = max(int(roi * (1 - overlap)), 1); count = ceil((size - roi) / interval) + 1 when
    size > roi, else 1; start_i = min(i * interval, size - roi). When ``size <= roi`` the single
    window starts at 0 and is padded by the caller.
    """
    if size < 1 or roi < 1:
        raise ValueError(f"size and roi must be >= 1, got size={size}, roi={roi}")
    _check_overlap(overlap)
    if size <= roi:
        return (0,)
    interval = max(int(roi * (1 - overlap)), 1)
    count = math.ceil((size - roi) / interval) + 1
    starts = (min(i * interval, size - roi) for i in range(count))
    # dict.fromkeys keeps the order and drops duplicates (only the clamped last one can repeat).
    return tuple(dict.fromkeys(starts))


@lru_cache(maxsize=64)
def _window_grid(shape: Triple, roi: Triple, overlap: float) -> tuple[tuple[Triple, Triple], ...]:
    per_axis = [window_starts(s, r, overlap) for s, r in zip(shape, roi, strict=True)]
    grid = []
    # Z outermost: the stitcher streams along Z and needs windows grouped by ascending z start.
    for z0, x0, y0 in itertools.product(per_axis[2], per_axis[0], per_axis[1]):
        start = (x0, y0, z0)
        stop = tuple(min(s + r, n) for s, r, n in zip(start, roi, shape, strict=True))
        grid.append((start, stop))
    return tuple(grid)


def window_grid(shape: Sequence[int], roi: Sequence[int], overlap: float) -> list[tuple[Triple, Triple]]:
    """All windows of a (X, Y, Z) volume as ``(start, stop)`` index triples, Z-major order.

    ``stop`` is clipped to the volume: on an axis shorter than the ROI the window covers
    ``[0, size)`` and the remaining ``roi - size`` voxels are padding. Windows are ordered by
    ascending z start, then x, then y.
    """
    shape_t, roi_t = _as_triple(shape, "shape"), _as_triple(roi, "roi")
    return list(_window_grid(shape_t, roi_t, float(overlap)))


def _as_triple(values: Sequence[int], what: str) -> Triple:
    if len(values) != 3:
        raise ValueError(f"{what} must have three values, got {tuple(values)}")
    return (int(values[0]), int(values[1]), int(values[2]))


@lru_cache(maxsize=16)
def _gaussian(
    roi: Triple, sigma_scale: tuple[float, float, float], device: str, dtype: torch.dtype
) -> torch.Tensor:
    # Same arithmetic as MONAI (float32 on the target device, separable outer product, then a
    # floor), so the weights match bit for bit on the same device.
    dev = torch.device(device)
    importance = None
    for axis, (size, scale) in enumerate(zip(roi, sigma_scale, strict=True)):
        sigma = size * scale
        x = torch.arange(-(size - 1) / 2.0, (size - 1) / 2.0 + 1, dtype=torch.float, device=dev)
        x = torch.exp(x**2 / (-2 * sigma**2))
        importance = x if axis == 0 else importance.unsqueeze(-1) * x[(None,) * axis]
    floor = max(torch.min(importance).item(), _MIN_IMPORTANCE)
    return torch.clamp_(importance, min=floor).to(dtype)


def gaussian_importance(
    roi: Sequence[int],
    sigma_scale: float | Sequence[float] = 0.125,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Gaussian blending weights of shape ``roi`` (Rx, Ry, Rz), peak 1 at the centre.

    sigma = sigma_scale * roi per axis; values below 1e-3 are raised to 1e-3 (MONAI's floor).
    The tensor is cached and shared between callers: treat it as read-only.
    """
    roi_t = _as_triple(roi, "roi")
    scales = (sigma_scale,) * 3 if isinstance(sigma_scale, int | float) else tuple(sigma_scale)
    if len(scales) != 3 or any(s <= 0 for s in scales):
        raise ValueError(f"sigma_scale must be positive (one value or three), got {sigma_scale}")
    dev = str(torch.device(device)) if device is not None else "cpu"
    return _gaussian(roi_t, tuple(float(s) for s in scales), dev, dtype)
