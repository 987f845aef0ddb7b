"""Body crop: where the sliding windows go, and which of them can be skipped.

The body is the largest connected component above a HU threshold; the CT table, separated from
the patient by air (mattress, gap), is another component. Two crop boxes are offered:

- ``foreground`` (the service default): the box of everything above the threshold, table
  included. That is the reference pipeline's ``CropForeground`` box, so the sliding-window grid
  is the reference's grid and the masks are the same masks; the windows that do not touch the
  body (table and air only) are still skipped, which is where the time goes otherwise.
- ``body``: the box of the body component alone: fewer voxels and windows when a table is in
  view, but a window grid shifted against the reference's, so a network's predictions near organ
  borders can differ from it where they depend on the window's context.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from scipy import ndimage

from service.geometry._arrays import ArrayLike, spatial_shape, zeros

log = logging.getLogger(__name__)


class CropBox(NamedTuple):
    """A box in voxel indices: ``start`` inclusive, ``stop`` exclusive, per spatial axis."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]

    @classmethod
    def full(cls, shape: Sequence[int]) -> CropBox:
        return cls((0, 0, 0), tuple(int(s) for s in shape))  # type: ignore[arg-type]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))  # type: ignore[return-value]

    def is_full(self, shape: Sequence[int]) -> bool:
        return self.start == (0, 0, 0) and tuple(self.stop) == tuple(shape)


def _cell_of(voxel, k: int):
    """Coarse cell whose sample (voxel ``c * k``) is nearest to full-resolution ``voxel``.

    Works on ints and integer arrays; round half up, so it is monotonic and exact in integers.
    """
    return (2 * voxel + k) // (2 * k)


@dataclass(frozen=True, eq=False)
class BodyMask:
    """Where the body is, on a coarse grid, for deciding which sliding windows to run.

    ``coarse[c]`` is the coarse cell around full-resolution voxel ``c * factors`` of the
    uncropped volume (a voxel belongs to the cell of its nearest sample); the body component is
    dilated by one coarse voxel so that ``touches`` errs on the side of running a window.
    ``offset`` is the crop box start: ``touches`` takes coordinates in the cropped volume.
    """

    coarse: np.ndarray
    factors: tuple[int, int, int]
    offset: tuple[int, int, int]

    def touches(self, start: Sequence[int], stop: Sequence[int]) -> bool:
        """Whether the box ``[start, stop)`` (cropped full-resolution voxels) may contain body.

        Boxes may reach past the volume (padded border windows); the part outside is ignored.
        """
        lows, highs = [], []
        for axis in range(3):
            k, shift = self.factors[axis], self.offset[axis]
            low = max(0, _cell_of(int(start[axis]) + shift, k))
            high = min(self.coarse.shape[axis], _cell_of(int(stop[axis]) + shift - 1, k) + 1)
            if low >= high:
                return False
            lows.append(low)
            highs.append(high)
        return bool(self.coarse[lows[0] : highs[0], lows[1] : highs[1], lows[2] : highs[2]].any())

    @property
    def fraction(self) -> float:
        """Share of coarse voxels marked as body (after dilation): a cheap log figure."""
        return float(self.coarse.mean())

    def cells(self, start: int, stop: int, axis: int, device: torch.device) -> torch.Tensor:
        """Coarse cell of each full-resolution voxel ``start..stop-1`` along ``axis`` (no offset)."""
        cells = _cell_of(np.arange(start, stop), self.factors[axis])
        return torch.as_tensor(np.minimum(cells, self.coarse.shape[axis] - 1), device=device)

    def voxel_range(self, axis: int, length: int) -> tuple[int, int]:
        """Full-resolution voxels ``[start, stop)`` along ``axis`` whose cells hold any body."""
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(self.coarse.any(axis=other))
        k = self.factors[axis]
        # Inverse of _cell_of: cell c holds voxels k*c - k//2 .. k*(c+1) - k//2 - 1; the last cell
        # also holds every voxel past its sample (cells are clamped).
        start = max(0, k * int(hits[0]) - k // 2)
        last_cell = int(hits[-1]) == self.coarse.shape[axis] - 1
        stop = length if last_cell else min(length, k * (int(hits[-1]) + 1) - k // 2)
        return start, stop


def coarse_factors(spacing_mm: Sequence[float], coarse_mm: float) -> tuple[int, int, int]:
    """Per-axis subsampling step so coarse voxels are at most ``coarse_mm`` (and at least 1 voxel)."""
    return tuple(max(1, int(math.floor(coarse_mm / s + 1e-9))) for s in spacing_mm)  # type: ignore[return-value]


def _largest_component(mask: np.ndarray) -> np.ndarray | None:
    """The largest face-connected component of a bool mask, or None when the mask is empty.

    Face (6-)connectivity, not 26: a table touching the body only along a diagonal stays apart.
    """
    labelled, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    if count > 1:
        log.debug("body threshold: %d components, keeping the largest (%d of %d coarse voxels)",
                  count, int(sizes.max()), int(sizes.sum()))
    return labelled == int(sizes.argmax())


def _body_extent(image: torch.Tensor, threshold: float, body: BodyMask) -> list[tuple[int, int]]:
    """Per axis, first and last full-resolution voxel above ``threshold`` inside the body region.

    Done at full resolution so the box is exact (the coarse samples can miss the body's extremes
    by up to a coarse voxel), only over the region's bounding box and in slabs along axis 0 so
    the temporary bool volumes stay small.
    """
    device = image.device
    ranges = [body.voxel_range(axis, n) for axis, n in enumerate(spatial_shape(image))]
    image = image[tuple(slice(a, b) for a, b in ranges)]
    shape = spatial_shape(image)
    coarse = torch.from_numpy(body.coarse).to(device)
    rows, cols, slices = (body.cells(a, b, axis, device) for axis, (a, b) in enumerate(ranges))
    seen = [torch.zeros(n, dtype=torch.bool, device=device) for n in shape]
    step = max(1, (1 << 24) // (shape[1] * shape[2]))
    for start in range(0, shape[0], step):
        stop = min(shape[0], start + step)
        region = coarse.index_select(0, rows[start:stop]).index_select(1, cols).index_select(2, slices)
        hits = region & (image[start:stop] > threshold)
        seen[0][start:stop] = hits.any(2).any(1)
        seen[1] |= hits.any(2).any(0)
        seen[2] |= hits.any(1).any(0)
    extent = []
    for (offset, _), flags in zip(ranges, seen, strict=True):
        index = torch.nonzero(flags).flatten().cpu()
        extent.append((offset + int(index[0]), offset + int(index[-1])))
    return extent


CROP_MODES = ("foreground", "body")


def body_bounding_box(
    image: torch.Tensor,
    *,
    threshold: float,
    spacing_mm: Sequence[float],
    margin_mm: float,
    coarse_mm: float = 4.0,
    box_of: str = "body",
) -> tuple[CropBox, BodyMask]:
    """Bounding box of the body in ``image (X, Y, Z)`` and a coarse body mask.

    ``threshold`` is in the image's own units (HU for a raw CT; -500 HU lets air fall away).
    ``spacing_mm`` is the voxel size, ``margin_mm`` the margin added on every side (clipped to
    the volume). The largest connected component is found on every k-th voxel (``coarse_mm``
    voxels): ``scipy.ndimage.label`` on a full 1 mm 400x400x1000 grid takes seconds and an int32
    label volume of 640 MB, while 4 mm voxels make it 64x smaller and still separate the table
    from the patient. The box itself is then measured at full resolution inside that component's
    (dilated) region. An empty mask gives the whole volume (and a warning). ``box_of="foreground"``
    measures the box over every voxel above ``threshold`` instead (see the module docstring); the
    body mask is the same either way.

    Returns ``(box, body)``; ``body.touches`` takes coordinates inside ``box``.
    """
    shape = spatial_shape(image)
    factors = coarse_factors(spacing_mm, coarse_mm)
    sampled = image[:: factors[0], :: factors[1], :: factors[2]]
    component = _largest_component((sampled > threshold).cpu().numpy())
    if component is None:
        log.warning("no voxel above the body threshold %.1f: keeping the whole volume %s", threshold, shape)
        box = CropBox.full(shape)
        return box, BodyMask(np.ones(sampled.shape, dtype=bool), factors, box.start)
    if box_of not in CROP_MODES:
        raise ValueError(f"box_of must be one of {', '.join(CROP_MODES)}, got {box_of!r}")
    region = ndimage.binary_dilation(component, structure=np.ones((3, 3, 3), dtype=bool))
    # The foreground box is the same full-resolution scan over a region that is everywhere.
    measured = region if box_of == "body" else np.ones_like(region)
    extent = _body_extent(image, threshold, BodyMask(measured, factors, (0, 0, 0)))
    margin = [int(math.ceil(margin_mm / s - 1e-9)) for s in spacing_mm]
    box = CropBox(
        tuple(max(0, first - m) for (first, _), m in zip(extent, margin, strict=True)),  # type: ignore[arg-type]
        tuple(min(n, last + 1 + m) for (_, last), m, n in zip(extent, margin, shape, strict=True)),  # type: ignore[arg-type]
    )
    log.debug("body box %s..%s of %s (coarse factors %s)", box.start, box.stop, shape, factors)
    return box, BodyMask(region, factors, box.start)


def crop(image: ArrayLike, box: CropBox) -> ArrayLike:
    """``image (..., X, Y, Z)`` restricted to ``box``: a view (copy it to free the rest)."""
    for axis, (a, b) in enumerate(zip(box.start, box.stop, strict=True)):
        if not 0 <= a < b <= image.shape[image.ndim - 3 + axis]:
            raise ValueError(f"crop box {box} does not fit spatial shape {spatial_shape(image)}")
    return image[(..., *box.slices)]


def uncrop_labels(labels: ArrayLike, box: CropBox, full_shape: Sequence[int]) -> ArrayLike:
    """Place ``labels (..., x, y, z)`` (the crop) into a background (0) volume of ``full_shape``."""
    if spatial_shape(labels) != box.shape:
        raise ValueError(f"labels spatial shape {spatial_shape(labels)} != crop box shape {box.shape}")
    if box.is_full(full_shape):
        return labels
    out = zeros((*labels.shape[:-3], *full_shape), like=labels)
    out[(..., *box.slices)] = labels
    return out
