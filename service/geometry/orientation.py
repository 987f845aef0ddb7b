"""Reorientation to RAS by axis permutation and flips only, and its exact undo.

Only whole axes are swapped and reversed (nibabel ``io_orientation`` picks, for each voxel axis,
the world axis it is closest to), so no voxel value is ever interpolated and ``from_ras`` is an
exact inverse. Whatever rotation is left (an oblique acquisition) stays in the returned affine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from nibabel.orientations import aff2axcodes, io_orientation

from service.errors import InvalidInputError
from service.geometry._arrays import ArrayLike, flip, permute, spatial_axis, spatial_shape

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrientationRecord:
    """How an array was laid out before ``to_ras``.

    ``source_axes[a]`` is the original voxel axis that became RAS axis ``a`` (0=R, 1=A, 2=S);
    ``flipped[a]`` says whether it was reversed on the way. ``original_shape`` is the spatial
    shape before reorientation, ``original_codes`` the axis codes (e.g. ``"LPS"``) for logs.
    """

    original_shape: tuple[int, int, int]
    source_axes: tuple[int, int, int]
    flipped: tuple[bool, bool, bool]
    original_codes: str

    @property
    def is_identity(self) -> bool:
        return self.source_axes == (0, 1, 2) and not any(self.flipped)

    @property
    def ras_shape(self) -> tuple[int, int, int]:
        """Spatial shape after reorientation."""
        return tuple(self.original_shape[axis] for axis in self.source_axes)  # type: ignore[return-value]

    def voxel_map(self) -> np.ndarray:
        """4x4 matrix taking a RAS-array voxel index to the original array's voxel index."""
        matrix = np.zeros((4, 4))
        matrix[3, 3] = 1.0
        for ras_axis, source in enumerate(self.source_axes):
            if self.flipped[ras_axis]:
                matrix[source, ras_axis] = -1.0
                matrix[source, 3] = self.original_shape[source] - 1
            else:
                matrix[source, ras_axis] = 1.0
        return matrix


def ras_orientation(affine: np.ndarray, shape: tuple[int, int, int]) -> OrientationRecord:
    """The permutation and flips that bring voxel axes closest to R, A, S.

    ``affine``: 4x4 voxel -> RAS+ world mm. ``shape``: spatial shape (I, J, K).
    Raises ``InvalidInputError`` when the affine is degenerate (an axis with no direction).
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InvalidInputError(f"affine must be a finite 4x4 matrix, got {affine.tolist()}")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InvalidInputError(f"affine is singular (zero-size voxel axis): {affine[:3, :3].tolist()}")
    ornt = io_orientation(affine)  # row i: (world axis of voxel axis i, +1 or -1)
    if np.isnan(ornt).any():
        raise InvalidInputError(f"cannot assign voxel axes to world axes for affine {affine.tolist()}")
    source_axes = [0, 0, 0]
    flipped = [False, False, False]
    for voxel_axis, (world_axis, direction) in enumerate(ornt):
        source_axes[int(world_axis)] = voxel_axis
        flipped[int(world_axis)] = bool(direction < 0)
    return OrientationRecord(
        original_shape=tuple(int(s) for s in shape),  # type: ignore[arg-type]
        source_axes=tuple(source_axes),  # type: ignore[arg-type]
        flipped=tuple(flipped),  # type: ignore[arg-type]
        original_codes="".join(aff2axcodes(affine)),
    )


def apply_to_ras(array: ArrayLike, record: OrientationRecord) -> ArrayLike:
    """Lay ``array (..., I, J, K)`` out along RAS axes: ``(..., X, Y, Z)``.

    numpy input gives a view (negative strides where flipped); torch input gives a copy when an
    axis is flipped (torch has no negative strides), a view otherwise.
    """
    if spatial_shape(array) != record.original_shape:
        raise ValueError(f"array spatial shape {spatial_shape(array)} != recorded {record.original_shape}")
    lead = array.ndim - 3
    flip_axes = [spatial_axis(array, record.source_axes[a]) for a in range(3) if record.flipped[a]]
    order = list(range(lead)) + [lead + source for source in record.source_axes]
    return permute(flip(array, flip_axes), order)


def to_ras(array: ArrayLike, affine: np.ndarray) -> tuple[ArrayLike, np.ndarray, OrientationRecord]:
    """Reorient ``array (..., I, J, K)`` to the closest RAS axes without interpolation.

    Returns ``(array_ras (..., X, Y, Z), affine_ras 4x4, record)``; ``affine_ras`` maps every RAS
    voxel to the same world point (mm) as ``affine`` maps the voxel it came from.
    """
    record = ras_orientation(affine, spatial_shape(array))
    if not record.is_identity:
        log.debug("reorienting %s -> RAS (axes %s, flips %s)", record.original_codes, record.source_axes,
                  record.flipped)
    affine_ras = np.asarray(affine, dtype=np.float64) @ record.voxel_map()
    return apply_to_ras(array, record), affine_ras, record


def from_ras(array_ras: ArrayLike, record: OrientationRecord) -> ArrayLike:
    """Exact inverse of ``to_ras`` on ``array_ras (..., X, Y, Z)``: back to ``(..., I, J, K)``."""
    if spatial_shape(array_ras) != record.ras_shape:
        raise ValueError(f"array spatial shape {spatial_shape(array_ras)} != RAS shape {record.ras_shape}")
    lead = array_ras.ndim - 3
    inverse = [0, 0, 0]
    for ras_axis, source in enumerate(record.source_axes):
        inverse[source] = ras_axis
    restored = permute(array_ras, list(range(lead)) + [lead + a for a in inverse])
    flip_axes = [lead + record.source_axes[a] for a in range(3) if record.flipped[a]]
    return flip(restored, flip_axes)
