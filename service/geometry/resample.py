"""Resampling to the model's voxel spacing on MONAI ``Spacing``'s grid, and the undo for labels.

The grid (what ``monai.transforms.Spacing(mode="bilinear")`` produces after RAS orientation):
voxel 0 stays where it is; along an axis of ``n`` voxels at spacing ``s`` mm, the output at
spacing ``t`` mm has ``n' = round((n - 1) * s / t + 1)`` voxels (numpy rounding, at least 1) and
output voxel ``j`` reads input index ``x = j * t / s``, clamped to ``[0, n - 1]`` (border).

Trilinear interpolation is the product of three 1D linear interpolations, so it is done one axis
at a time with two index gathers and a lerp: exact, and it never builds the (X', Y', Z', 3)
sampling grid that ``grid_sample`` needs (three float32 copies of the output volume).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from service.errors import InvalidInputError
from service.geometry._arrays import ArrayLike, spatial_axis, spatial_shape, take

# Spacings closer than this (mm) count as equal: that axis is left untouched.
SPACING_TOLERANCE_MM = 1e-6
# Output elements per chunk of one 1D pass: bounds the temporaries to ~3 x 64 MB (float32).
_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class ResampleRecord:
    """Spatial shapes and spacings (mm) on both sides of ``resample_to_spacing``."""

    spacing_in: tuple[float, float, float]
    spacing_out: tuple[float, float, float]
    shape_in: tuple[int, int, int]
    shape_out: tuple[int, int, int]

    def axis_changes(self, axis: int) -> bool:
        """Whether ``axis`` (0..2) is actually resampled."""
        return abs(self.spacing_in[axis] - self.spacing_out[axis]) > SPACING_TOLERANCE_MM


def _check_spacing(spacing: Sequence[float], name: str) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise InvalidInputError(f"{name} must be three positive finite mm values, got {list(spacing)}")
    return values  # type: ignore[return-value]


def resampled_shape(
    shape: Sequence[int], spacing_in: Sequence[float], spacing_out: Sequence[float]
) -> tuple[int, int, int]:
    """Spatial shape on the output grid: ``round((n - 1) * s / t + 1)`` per resampled axis."""
    out = []
    for n, s, t in zip(shape, spacing_in, spacing_out, strict=True):
        if abs(s - t) <= SPACING_TOLERANCE_MM:
            out.append(int(n))
        else:
            # np.round (half to even), as monai.data.utils.compute_shape_offset does.
            out.append(max(1, int(np.round((n - 1) * s / t + 1.0))))
    return tuple(out)  # type: ignore[return-value]


def resampled_affine(
    affine_ras: np.ndarray, spacing_in: Sequence[float], spacing_out: Sequence[float]
) -> np.ndarray:
    """4x4 affine of the resampled grid: same origin (voxel 0 stays), columns scaled by ``t / s``.

    Axes left untouched (spacings equal within ``SPACING_TOLERANCE_MM``) keep their column.
    """
    scale = [
        1.0 if abs(s - t) <= SPACING_TOLERANCE_MM else t / s
        for s, t in zip(spacing_in, spacing_out, strict=True)
    ]
    return np.asarray(affine_ras, dtype=np.float64) @ np.diag([*scale, 1.0])


def _sample_positions(n_in: int, n_out: int, ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For output voxels ``j``: lower index, upper index, weight of the upper one (float64)."""
    position = np.clip(np.arange(n_out, dtype=np.float64) * ratio, 0.0, n_in - 1)
    lower = np.minimum(np.floor(position).astype(np.int64), n_in - 1)
    upper = np.minimum(lower + 1, n_in - 1)
    return lower, upper, position - lower


def _chunk_axis(shape: Sequence[int], axis: int) -> int:
    """The longest axis other than ``axis``: chunking along it gives the fewest, evenest chunks."""
    others = [a for a in range(len(shape)) if a != axis]
    return max(others, key=lambda a: shape[a])


def _resample_axis(image: torch.Tensor, axis: int, n_out: int, ratio: float) -> torch.Tensor:
    """Linear resampling of ``image`` along absolute ``axis`` to ``n_out`` samples at ``j * ratio``."""
    lower, upper, weight = _sample_positions(image.shape[axis], n_out, ratio)
    device = image.device
    lower_t = torch.as_tensor(lower, device=device)
    upper_t = torch.as_tensor(upper, device=device)
    view = [1] * image.ndim
    view[axis] = n_out
    weight_t = torch.as_tensor(weight, dtype=image.dtype, device=device).view(view)

    out_shape = list(image.shape)
    out_shape[axis] = n_out
    out = torch.empty(out_shape, dtype=image.dtype, device=device)
    chunk_axis = _chunk_axis(out_shape, axis)
    per_slice = max(1, math.prod(out_shape) // out_shape[chunk_axis])
    step = max(1, _CHUNK_ELEMENTS // per_slice)
    for start in range(0, out_shape[chunk_axis], step):
        length = min(step, out_shape[chunk_axis] - start)
        source = image.narrow(chunk_axis, start, length)
        below = source.index_select(axis, lower_t)
        below.lerp_(source.index_select(axis, upper_t), weight_t)
        out.narrow(chunk_axis, start, length).copy_(below)
    return out


def resample_to_spacing(
    image: torch.Tensor, spacing_in: Sequence[float], spacing_out: Sequence[float]
) -> tuple[torch.Tensor, ResampleRecord]:
    """Linear resampling of ``image (..., X, Y, Z)`` from ``spacing_in`` to ``spacing_out`` (mm).

    Runs on ``image``'s device; integer input is converted to float32 first. Returns
    ``(image_out (..., X', Y', Z'), record)``; ``image`` itself is returned when no axis changes.
    """
    return resample_consuming([image], spacing_in, spacing_out)


def resample_consuming(
    holder: list[torch.Tensor], spacing_in: Sequence[float], spacing_out: Sequence[float]
) -> tuple[torch.Tensor, ResampleRecord]:
    """``resample_to_spacing`` on the tensor taken out of ``holder`` (a one-element list).

    A caller that hands its only reference over this way lets the input volume be freed after
    the first 1D pass instead of living until the call returns: one volume less at the peak.
    """
    image = holder.pop()
    spacing_in = _check_spacing(spacing_in, "input spacing")
    spacing_out = _check_spacing(spacing_out, "target spacing")
    if not image.is_floating_point():
        image = image.to(torch.float32)
    shape_in = spatial_shape(image)
    record = ResampleRecord(spacing_in, spacing_out, shape_in, resampled_shape(shape_in, spacing_in, spacing_out))
    # Shrinking axes first keeps the intermediate volumes (and the work) as small as possible.
    axes = sorted((a for a in range(3) if record.axis_changes(a)), key=lambda a: spacing_in[a] / spacing_out[a])
    for axis in axes:
        ratio = spacing_out[axis] / spacing_in[axis]
        image = _resample_axis(image, spatial_axis(image, axis), record.shape_out[axis], ratio)
    return image, record


def _normalised_index(n: int) -> np.ndarray:
    """MONAI ``normalize_transform`` in 1D (align_corners=False): index -> [-1, 1] over the voxel edges."""
    return np.array([[2.0 / n, 1.0 / n - 1.0], [0.0, 1.0]])


def nearest_indices(n_in: int, n_out: int, ratio: float) -> np.ndarray:
    """For each original index ``i``: the output voxel nearest to ``i * ratio``, clamped to the grid.

    Ties decide real voxels: a 2.5 mm slice centre falls exactly halfway between two 1 mm
    slices on every other slice, and 0.5 or 1.5 mm grids tie as often. The reference pipeline
    (MONAI ``Invertd`` of ``Spacing``) breaks them by no rule: its float64 normalised-grid
    arithmetic (``to_norm_affine``, ``affine_grid``, ``grid_sample(mode="nearest")``) leaves each
    tie a few ulp to one side, so 2.5 goes to 3 but 12.5 to 12. Round-half-to-even picks the
    other slice on some of those positions, enough to bring a small organ's Dice between the two
    masks below 0.95 on a 2.5 mm scan. So the same arithmetic runs here, on one line of ``n_in``
    points per axis (the transform is diagonal, each axis independent), and masks agree voxel for
    voxel with the reference. Away from ties this equals ``round(i * ratio)``.
    """
    theta_1d = _normalised_index(n_out) @ np.diag([ratio, 1.0]) @ np.linalg.inv(_normalised_index(n_in))
    theta = torch.zeros(1, 3, 4, dtype=torch.float64)
    theta[0, 0, 0], theta[0, 0, 3] = float(theta_1d[0, 0]), float(theta_1d[0, 1])
    grid = torch.nn.functional.affine_grid(theta, [1, 1, 1, 1, n_in], align_corners=False)
    grid[..., 1:] = 0.0  # the two unused axes have one voxel; 0 is its centre
    index_line = torch.arange(n_out, dtype=torch.float64).view(1, 1, 1, 1, n_out)
    # "border" padding, as MONAI Spacing's default: points outside take the edge voxel (a clamp).
    nearest = torch.nn.functional.grid_sample(
        index_line, grid, mode="nearest", padding_mode="border", align_corners=False
    )
    return nearest.view(-1).round().to(torch.int64).numpy()


def restore_labels_nearest(labels: ArrayLike, record: ResampleRecord) -> ArrayLike:
    """Undo ``resample_to_spacing`` for labels ``(..., X', Y', Z')`` -> ``(..., X, Y, Z)``.

    Nearest neighbour by one index gather per axis: original voxel ``i`` takes output voxel
    ``round(i * s / t)`` (the voxel whose centre is closest; exact ties as the reference pipeline
    breaks them, see ``nearest_indices``). numpy in, numpy out; torch stays on its device. The
    dtype is kept.
    """
    if spatial_shape(labels) != record.shape_out:
        raise ValueError(f"labels spatial shape {spatial_shape(labels)} != resampled shape {record.shape_out}")
    for axis in range(3):
        if record.axis_changes(axis):
            ratio = record.spacing_in[axis] / record.spacing_out[axis]
            index = nearest_indices(record.shape_in[axis], record.shape_out[axis], ratio)
            labels = take(labels, index, spatial_axis(labels, axis))
    return labels
