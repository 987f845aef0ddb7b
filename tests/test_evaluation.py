"""The one Dice: the same figures for numpy and torch masks, and ``nan`` for a label absent from both."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from service.evaluation import defined, dice_per_label, mean_dice


def test_absent_from_both_is_nan_and_means_skip_it():
    truth = np.zeros((6, 6, 6), np.uint8)
    truth[:3] = 1
    prediction = truth.copy()
    prediction[:3, :3] = 2  # half of label 1 called label 2
    scores = dice_per_label(prediction, truth, labels=(1, 2, 3))
    assert scores[1] == pytest.approx(2 * 54 / (54 + 108))
    assert scores[2] == 0.0  # predicted, never true: a real miss, not undefined
    assert math.isnan(scores[3])
    assert mean_dice(scores) == pytest.approx(scores[1] / 2)
    assert defined(scores) == {1: scores[1], 2: 0.0}
    assert dice_per_label(torch.from_numpy(prediction), torch.from_numpy(truth), labels=(1, 2, 3)).keys() == {1, 2, 3}
    torch_scores = dice_per_label(torch.from_numpy(prediction), torch.from_numpy(truth), labels=(1, 2))
    assert torch_scores == {1: scores[1], 2: 0.0}


def test_labels_above_any_voxel_value_are_nan():
    mask = np.ones((2, 2, 2), np.uint8)
    assert dice_per_label(mask, mask, labels=(1, 14))[1] == 1.0
    assert math.isnan(dice_per_label(mask, mask, labels=(1, 14))[14])
