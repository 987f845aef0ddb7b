"""Per-label Dice, on the model grid during training and through the service for the model card."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from service.evaluation import dice_per_label, mean_dice
from service.labels import ORGAN_LABELS

log = logging.getLogger(__name__)


def mean_over_cases(per_case: Iterable[dict[int, float]]) -> dict[int, float]:
    """Label -> mean Dice over the cases where it is defined (``nan`` where it never is)."""
    collected: dict[int, list[float]] = {}
    for scores in per_case:
        for label, value in scores.items():
            collected.setdefault(label, [])
            if not math.isnan(value):
                collected[label].append(value)
    return {label: (float(np.mean(v)) if v else float("nan")) for label, v in sorted(collected.items())}


@torch.no_grad()
def predict_case(
    model: torch.nn.Module,
    image: torch.Tensor,
    *,
    roi: Sequence[int],
    overlap: float = 0.25,
    sw_batch_size: int = 1,
) -> torch.Tensor:
    """Labels ``(X, Y, Z)`` uint8 for a preprocessed ``image (X, Y, Z)`` by Gaussian sliding window.

    Runs ``model`` in eval mode (BatchNorm on running statistics, as exported) and puts back the
    mode it found, so validation never changes the training trajectory.
    """
    from monai.inferers import sliding_window_inference  # heavy import, only when validating

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        logits = sliding_window_inference(
            image.float()[None, None].to(device),
            roi_size=tuple(int(r) for r in roi),
            sw_batch_size=sw_batch_size,
            predictor=model,
            overlap=overlap,
            mode="gaussian",
            sigma_scale=0.125,
        )
    finally:
        model.train(was_training)
    return logits[0].argmax(dim=0).to(torch.uint8).cpu()


def evaluate_cases(
    model: torch.nn.Module, cases: Sequence, *, roi: Sequence[int], num_classes: int, overlap: float = 0.25
) -> tuple[dict[int, float], list[dict[int, float]]]:
    """Whole-case validation on the model grid: (label -> mean Dice, per-case Dice dicts).

    ``cases``: objects with ``image (X, Y, Z)`` and ``labels (X, Y, Z)`` tensors (``PreparedCase``).
    """
    per_case = []
    for case in cases:
        prediction = predict_case(model, case.image, roi=roi, overlap=overlap)
        per_case.append(dice_per_label(prediction, case.labels, labels=range(1, num_classes)))
    return mean_over_cases(per_case), per_case


def evaluate_segmenter(
    segmenter, pairs: Iterable[tuple], *, num_classes: int
) -> tuple[dict[int, float], list]:
    """Dice through the whole service path: ``segmenter.segment(ct)`` against ``labels`` per pair.

    ``pairs``: ``(name, ct Volume, labels Volume)``; the mask comes back on the CT's own grid, so
    the comparison is voxel for voxel on the input grid, as a user would score it.
    Returns (label -> mean Dice, [(name, per-label Dice, seconds)]).
    """
    rows = []
    for name, ct, labels in pairs:
        result = segmenter.segment(ct)
        scores = dice_per_label(result.mask.array, labels.array, labels=range(1, num_classes))
        rows.append((name, scores, float(result.metrics.total_seconds)))
        log.info(
            "%s: mean organ Dice (1-13) %.3f in %.1f s",
            name,
            mean_dice(scores, ORGAN_LABELS),
            result.metrics.total_seconds,
        )
    return mean_over_cases(scores for _, scores, _ in rows), rows
