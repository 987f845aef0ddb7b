"""Overlap measures between two masks on the same grid (demo, benchmark, model card)."""

from __future__ import annotations

import numpy as np

from service.labels import ORGAN_LABELS


def dice_per_label(prediction: np.ndarray, truth: np.ndarray, labels=ORGAN_LABELS) -> dict[int, float]:
    """Dice of each label present in either mask; a label absent from both is left out."""
    if prediction.shape != truth.shape:
        raise ValueError(f"masks differ in shape: {prediction.shape} vs {truth.shape}")
    scores: dict[int, float] = {}
    for label in labels:
        pred = prediction == label
        true = truth == label
        total = int(pred.sum()) + int(true.sum())
        if total:
            scores[int(label)] = 2.0 * int(np.logical_and(pred, true).sum()) / total
    return scores


def mean_dice(scores: dict[int, float]) -> float:
    return float(np.mean(list(scores.values()))) if scores else float("nan")


def voxel_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of voxels with the same label."""
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    return float(np.mean(a == b))
