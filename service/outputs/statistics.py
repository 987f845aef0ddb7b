"""Organ statistics of a mask on the CT's own grid: size, volume, HU, centroid, box.

Everything is computed on the input grid (the mask as written, the CT values as read: HU after
rescale slope/intercept), never on the model's resampled grid. World coordinates are **RAS+ mm**
(the affine's frame, see ``Volume``; +x points to the patient's right), so a DICOM viewer's LPS
coordinates are these with x and y negated.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from service.volume import Volume

STATISTICS_CSV_COLUMNS = (
    "case", "label", "name", "voxels", "volume_ml", "mean_hu", "median_hu", "std_hu",
    "centroid_ras_mm", "bbox_min_ras_mm", "bbox_max_ras_mm",
)


@dataclass(frozen=True)
class OrganStatistics:
    """One label: voxel count, volume (mL), HU mean/median/std, centroid and the box of its voxel
    centres (RAS+ world mm, axis-aligned in world)."""

    label: int
    name: str
    voxels: int
    volume_ml: float
    mean_hu: float
    median_hu: float
    std_hu: float
    centroid_ras_mm: tuple[float, float, float]
    bbox_min_ras_mm: tuple[float, float, float]
    bbox_max_ras_mm: tuple[float, float, float]

    def to_dict(self) -> dict:
        return asdict(self)


def organ_statistics(ct: Volume, mask: Volume, labels: dict[int, str]) -> list[OrganStatistics]:
    """Statistics of every label of ``labels`` present in ``mask`` (same grid as ``ct``), by label.

    Raises:
        ValueError: ``mask`` and ``ct`` differ in shape.
    """
    if mask.shape != ct.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the CT's {ct.shape}")
    voxel_ml = abs(float(np.linalg.det(ct.affine[:3, :3]))) / 1000.0
    boxes = ndimage.find_objects(np.asarray(mask.array).astype(np.int64, copy=False))
    found = []
    for label, name in sorted(labels.items()):
        if label <= 0 or label > len(boxes) or boxes[label - 1] is None:
            continue
        box = boxes[label - 1]
        inside = mask.array[box] == label
        hu = np.asarray(ct.array[box], dtype=np.float64)[inside]
        index = np.argwhere(inside).astype(np.float64) + [s.start for s in box]
        found.append(_organ(ct.affine, label, name, hu, index, voxel_ml))
    return found


def _organ(affine: np.ndarray, label: int, name: str, hu: np.ndarray, index: np.ndarray, voxel_ml: float) -> OrganStatistics:
    def world(points: np.ndarray) -> np.ndarray:
        return points @ affine[:3, :3].T + affine[:3, 3]

    lo, hi = index.min(axis=0), index.max(axis=0)
    corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))))
    box_world = world(corners)
    return OrganStatistics(
        label=label, name=name, voxels=int(len(hu)), volume_ml=round(len(hu) * voxel_ml, 4),
        mean_hu=round(float(hu.mean()), 3), median_hu=round(float(np.median(hu)), 3), std_hu=round(float(hu.std()), 3),
        centroid_ras_mm=_rounded(world(index.mean(axis=0, keepdims=True))[0]),
        bbox_min_ras_mm=_rounded(box_world.min(axis=0)), bbox_max_ras_mm=_rounded(box_world.max(axis=0)),
    )


def _rounded(values: np.ndarray) -> tuple[float, float, float]:
    return tuple(round(float(v), 3) for v in values)  # type: ignore[return-value]


def csv_rows(case: str, stats: list[OrganStatistics]) -> list[dict]:
    """Rows of ``statistics.csv`` (coordinates as ``x;y;z``)."""
    def xyz(values: tuple[float, ...]) -> str:
        return ";".join(f"{v:g}" for v in values)

    return [{
        "case": case, "label": s.label, "name": s.name, "voxels": s.voxels, "volume_ml": s.volume_ml,
        "mean_hu": s.mean_hu, "median_hu": s.median_hu, "std_hu": s.std_hu,
        "centroid_ras_mm": xyz(s.centroid_ras_mm), "bbox_min_ras_mm": xyz(s.bbox_min_ras_mm),
        "bbox_max_ras_mm": xyz(s.bbox_max_ras_mm),
    } for s in stats]
