"""What a case will cost, computed from its shape, spacing and overlap before anything is spent.

The input's voxel count is checked by the readers from the header; this module bounds what the
pipeline makes of it: a 2x2x2 volume with 1e5 mm voxels is 71 bytes on the wire but a
~20-billion-voxel grid at the model's spacing, and ``overlap=0.99`` turns 35 windows into
tens of thousands. Both are refused with the sizes in the message, before any allocation or
window runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from service.errors import InputTooLargeError, InvalidInputError
from service.geometry.orientation import ras_orientation
from service.geometry.resample import resampled_shape


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(n)) for n in shape)


def planned_model_grid(
    shape: Sequence[int], affine: np.ndarray, target_spacing: Sequence[float]
) -> tuple[tuple[int, int, int], int]:
    """The model grid's shape (RAS axes) and the voxel count of the largest resampling pass.

    Resampling runs one axis at a time, so an intermediate array can be larger than both the
    input and the output; ``prod(max(in, out))`` per axis bounds every pass.
    """
    orientation = ras_orientation(affine, tuple(int(n) for n in shape))
    ras_affine = affine @ orientation.voxel_map()
    spacing = np.linalg.norm(ras_affine[:3, :3], axis=0)
    ras_shape = orientation.ras_shape
    grid = resampled_shape(ras_shape, spacing, target_spacing)
    peak = math.prod(max(a, b) for a, b in zip(ras_shape, grid, strict=True))
    return grid, peak


def check_model_grid(
    shape: Sequence[int], affine: np.ndarray, target_spacing: Sequence[float], max_voxels: int
) -> tuple[int, int, int]:
    """Refuse a case whose resampled grid (or a resampling pass) exceeds ``max_voxels``.

    Returns the planned grid shape. Raises InputTooLargeError (HTTP 413) naming the input
    shape, its spacing (mm), the grid and the limit (``max_model_grid_voxels``).
    """
    grid, peak = planned_model_grid(shape, affine, target_spacing)
    if peak > max_voxels:
        spacing = ", ".join(f"{s:.4g}" for s in np.linalg.norm(affine[:3, :3], axis=0))
        raise InputTooLargeError(
            f"the input {_shape_text(shape)} with spacing ({spacing}) mm becomes a {_shape_text(grid)} grid "
            f"at the model's {_shape_text_f(target_spacing)} mm spacing: {peak:,} voxels while resampling, "
            f"the limit is {max_voxels:,} (max_model_grid_voxels); check the header's voxel spacing"
        )
    return grid


def _shape_text_f(values: Sequence[float]) -> str:
    return "x".join(f"{float(v):g}" for v in values)


def windows_along(size: int, roi: int, overlap: float) -> int:
    """Window count along one axis, as :func:`service.inference.windows.window_starts` lays
    them out, without building the list: ``ceil((size - roi) / interval) + 1``."""
    if size <= roi:
        return 1
    interval = max(int(roi * (1 - overlap)), 1)
    return math.ceil((size - roi) / interval) + 1


def window_count(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Windows of the sliding-window grid over ``shape`` (before empty ones are skipped)."""
    return math.prod(windows_along(int(n), int(r), overlap) for n, r in zip(shape, roi, strict=True))


def check_window_count(shape: Sequence[int], roi: Sequence[int], overlap: float, max_windows: int) -> int:
    """Refuse a case needing more than ``max_windows`` windows (InvalidInputError, HTTP 422,
    with the crop shape, the overlap and both counts); returns the count."""
    count = window_count(shape, roi, overlap)
    if count > max_windows:
        at_half = window_count(shape, roi, 0.5)
        raise InvalidInputError(
            f"overlap {overlap:g} on the {_shape_text(shape)} crop needs {count:,} windows of "
            f"{_shape_text(roi)}, more than the {max_windows:,} allowed per case (max_windows_per_case); "
            f"overlap 0.5 would need {at_half:,}"
        )
    return count
