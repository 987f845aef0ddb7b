"""Overlap measures between two masks on the same grid (demo, benchmark, training, model card)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from service.labels import ORGAN_LABELS


def dice_per_label(prediction, truth, labels: Iterable[int] = ORGAN_LABELS) -> dict[int, float]:
    """Dice ``2|P & T| / (|P| + |T|)`` of each of ``labels`` between two label maps of one shape.

    ``prediction`` and ``truth`` are non-negative integer arrays (numpy, or torch on any device).
    A label absent from both masks gets ``nan``: nothing to find and nothing found is no evidence
    either way, so ``mean_dice`` skips it instead of counting a free 1.0. Raises ``ValueError``
    when the shapes differ.
    """
    prediction, truth = _as_numpy(prediction), _as_numpy(truth)
    if prediction.shape != truth.shape:
        raise ValueError(f"masks differ in shape: {prediction.shape} vs {truth.shape}")
    labels = [int(label) for label in labels]
    size = max(labels, default=0) + 1
    # Three bincounts (no one-hot, no per-label boolean volumes): sizes of P, of T, and of P & T.
    predicted = np.bincount(prediction.ravel(), minlength=size)
    true = np.bincount(truth.ravel(), minlength=size)
    agree = prediction == truth
    both = np.bincount(prediction[agree].ravel(), minlength=size)
    scores: dict[int, float] = {}
    for label in labels:
        total = int(predicted[label]) + int(true[label]) if label < len(predicted) and label < len(true) else 0
        scores[label] = float("nan") if total == 0 else 2.0 * int(both[label]) / total
    return scores


def mean_dice(scores: dict[int, float], labels: Sequence[int] | None = None) -> float:
    """Mean of the defined (non-nan) Dice values, optionally of ``labels`` only; ``nan`` if none is."""
    values = [v for k, v in scores.items() if (labels is None or k in labels) and not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def defined(scores: dict[int, float]) -> dict[int, float]:
    """``scores`` without the labels absent from both masks (the ``nan`` ones)."""
    return {label: value for label, value in scores.items() if not math.isnan(value)}


def voxel_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of voxels with the same label."""
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    return float(np.mean(a == b))


def _as_numpy(mask) -> np.ndarray:
    if hasattr(mask, "detach"):  # a torch tensor, on any device
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.dtype.kind not in "biu":
        mask = mask.astype(np.int64)
    return mask
