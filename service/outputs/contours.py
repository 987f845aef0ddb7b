"""Closed planar contours of one label on one slice, in pixel coordinates, holes included.

Contours come from contourpy (already installed with matplotlib; C++ marching squares) at level
0.5 of the binary slice, so each polygon passes halfway between inside and outside pixel centres:
filling it at the pixel centres gives back the mask. The slice is padded with one background
pixel so that an organ touching the image edge gets a contour outside the edge rather than one
through its pixel centres. Holes are kept as their own (nested) contours; see
:mod:`service.outputs.rtstruct`. 2D islands smaller than ``MIN_ISLAND_MM2`` are dropped: specks a
planner would have to delete by hand, and a contour of two or three points is not a polygon.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

MIN_ISLAND_MM2 = 4.0  # in-plane area below which a 2D island is not contoured (about 4 pixels at 1 mm)
MIN_POINTS = 3  # a polygon needs three corners; anything less is never written
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Polygon:
    """One closed contour: (N, 2) points as (column, row) pixel coordinates, not repeating the first."""

    points: np.ndarray
    is_hole: bool


def slice_polygons(section: np.ndarray, pixel_area_mm2: float, *, min_island_mm2: float = MIN_ISLAND_MM2) -> list[Polygon]:
    """Contours of the boolean ``section`` (rows, columns): outer boundaries and holes.

    ``pixel_area_mm2`` (row spacing x column spacing) sizes the islands that are dropped.
    """
    from contourpy import FillType, contour_generator

    keep = _drop_small_islands(section, pixel_area_mm2, min_island_mm2)
    if not keep.any():
        return []
    padded = np.pad(keep, 1).astype(np.float32)
    generator = contour_generator(z=padded, fill_type=FillType.OuterOffset, name="serial", corner_mask=False)
    points_list, offsets_list = generator.filled(0.5, 2.0)
    polygons = []
    for points, offsets in zip(points_list, offsets_list, strict=True):
        for n, (start, stop) in enumerate(zip(offsets[:-1], offsets[1:], strict=True)):
            ring = _simplify(points[start:stop] - 1.0)  # undo the padding
            if len(ring) >= MIN_POINTS:
                polygons.append(Polygon(points=ring, is_hole=n > 0))
    return polygons


def _drop_small_islands(section: np.ndarray, pixel_area_mm2: float, min_island_mm2: float) -> np.ndarray:
    labelled, count = ndimage.label(section, structure=_EIGHT_CONNECTED)
    if count == 0:
        return section
    sizes = np.bincount(labelled.ravel())
    small = sizes * pixel_area_mm2 < min_island_mm2
    small[0] = True  # background
    return ~small[labelled]


def _simplify(ring: np.ndarray) -> np.ndarray:
    """Drop the repeated closing point and every point on a straight line between its neighbours
    (exact: the shape does not change)."""
    if len(ring) > 1 and np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    if len(ring) < MIN_POINTS:
        return ring
    before = ring - np.roll(ring, 1, axis=0)
    after = np.roll(ring, -1, axis=0) - ring
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    return ring[np.abs(cross) > 1e-9]
