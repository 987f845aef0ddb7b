"""Partially labelled CTs: which labels an annotation covers, and the two ways to train on them.

A datalist entry may say ``"annotated": [1, 2, 13]``: its label file draws those organs and
nothing else, so a background voxel there means "none of 1, 2, 13", not "no organ". Trained on
as if complete (mode ``none``), every organ the annotator skipped is taught as background.

- ``refine`` (the seed paper's): a teacher's pseudo label (``swinxseg pseudo-label``) fills in the
  rest. The annotated labels come from the ground truth wherever it draws them; a voxel the teacher
  gives an annotated label that the annotator did not draw becomes background (the annotation is
  the authority on its own organs); every other voxel keeps the teacher's label (``merge_partial``).
- ``mask``: no teacher. The loss is computed with the classes a case does not annotate removed from
  its softmax (their logits replaced by a large negative constant, ``mask_logits``): those logits
  get no gradient from that case at all, so an unannotated organ is never taught as background.
  Background and the annotated organs compete as usual. Why removal rather than the marginal loss
  (background probability + unannotated probabilities against background): removal is exact about
  "this case says nothing about class c", and it keeps MONAI's Dice + CE unchanged around it.

Both work on label arrays on any common grid: ``labels_to_model_grid`` is a voxel gather, so merging
on the model grid equals merging on the image grid and then mapping.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from service.errors import InvalidInputError

PARTIAL_MODES = ("none", "refine", "mask")
# What replaces an excluded class's logit: far below any real logit, so its softmax share is 0.0
# exactly in float32, and finite, so the cross-entropy never sees -inf (inf - inf = NaN).
MASKED_LOGIT = -1.0e4


def merge_partial(ground_truth, teacher, annotated: Iterable[int]):
    """The refined label map: annotated labels from ``ground_truth``, the rest from ``teacher``.

    Args:
        ground_truth, teacher: integer label arrays (numpy or torch) of one shape.
        annotated: the foreground labels the ground truth covers.
    Returns:
        An array of ``ground_truth``'s type and dtype: ``ground_truth`` where it holds an annotated
        label; 0 where the teacher says an annotated label the ground truth does not draw; the
        teacher's label elsewhere.
    Raises:
        ValueError: the shapes differ.
    """
    if tuple(ground_truth.shape) != tuple(teacher.shape):
        raise ValueError(f"ground truth {tuple(ground_truth.shape)} and teacher {tuple(teacher.shape)} differ")
    labels = sorted({int(v) for v in annotated if int(v) != 0})
    if isinstance(ground_truth, torch.Tensor):
        keep = torch.tensor(labels, dtype=torch.long)
        teacher = teacher.to(ground_truth.dtype)
        from_truth = torch.isin(ground_truth.long(), keep)
        refused = torch.isin(teacher.long(), keep)
        out = torch.where(refused, torch.zeros_like(teacher), teacher)
        return torch.where(from_truth, ground_truth, out)
    ground_truth, teacher = np.asarray(ground_truth), np.asarray(teacher).astype(np.asarray(ground_truth).dtype)
    from_truth = np.isin(ground_truth, labels)
    out = np.where(np.isin(teacher, labels), 0, teacher).astype(ground_truth.dtype)
    return np.where(from_truth, ground_truth, out).astype(ground_truth.dtype)


def class_mask(annotated: Sequence[int] | None, num_classes: int) -> torch.Tensor:
    """``(num_classes,)`` bool: the classes a case's loss may use (background always; all if None)."""
    mask = torch.ones(num_classes, dtype=torch.bool)
    if annotated is None:
        return mask
    mask[:] = False
    mask[0] = True
    for label in annotated:
        if not 0 <= int(label) < num_classes:
            raise ValueError(f"annotated label {label} is outside 0..{num_classes - 1}")
        mask[int(label)] = True
    return mask


def mask_logits(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``logits (B, C, ...)`` with class ``c`` of sample ``b`` set to ``MASKED_LOGIT`` where
    ``classes[b, c]`` (``(B, C)`` bool) is False. The replaced entries carry zero gradient."""
    if classes.shape != logits.shape[:2]:
        raise ValueError(f"class mask {tuple(classes.shape)} does not fit logits {tuple(logits.shape)}")
    drop = ~classes.to(logits.device).view(*classes.shape, *([1] * (logits.dim() - 2)))
    return logits.masked_fill(drop, MASKED_LOGIT)


def check_annotated_labels(name: str, labels: np.ndarray, annotated: Sequence[int] | None) -> None:
    """Refuse a label file that draws a label its entry says it does not annotate.

    Raises:
        ValueError: naming the case and the labels outside ``annotated``.
    """
    if annotated is None:
        return
    drawn = {int(v) for v in np.unique(labels) if v != 0}
    extra = sorted(drawn - {int(v) for v in annotated})
    if extra:
        raise ValueError(
            f"{name}: the label file draws label(s) {extra} that its \"annotated\" list {sorted(annotated)} "
            "leaves out; add them to the list or remove them from the file"
        )


def apply_partial_mode(cases: Sequence, mode: str) -> list:
    """The training cases as ``mode`` trains on them (``PreparedCase`` list in, new list out).

    - ``none``: labels as drawn, every case treated as complete (``annotated`` cleared).
    - ``refine``: a partial case's labels become ``merge_partial(labels, pseudo, annotated)``;
      ``annotated`` is cleared (the refined labels are complete).
    - ``mask``: labels as drawn; ``annotated`` is kept for the loss's class mask.

    Raises:
        ValueError: unknown mode.
        InvalidInputError: ``refine`` for a partial case without a pseudo label.
    """
    from dataclasses import replace

    if mode not in PARTIAL_MODES:
        raise ValueError(f"partial mode must be one of {', '.join(PARTIAL_MODES)}, got {mode!r}")
    out = []
    for case in cases:
        if mode == "none" or case.annotated is None:
            out.append(replace(case, annotated=None) if mode != "mask" else case)
        elif mode == "mask":
            out.append(case)
        else:
            if case.pseudo is None:
                raise InvalidInputError(
                    f"{case.name} is partially annotated but has no pseudo label: run `swinxseg "
                    "pseudo-label` and train on the datalist it writes, or use --partial mask"
                )
            out.append(replace(case, labels=merge_partial(case.labels, case.pseudo, case.annotated), annotated=None))
    return out
