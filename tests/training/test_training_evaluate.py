"""Per-label Dice and the demo model card's table and reproduce command."""

from __future__ import annotations

import math
import shlex

import numpy as np
import pytest
import torch

from service.evaluation import dice_per_label, mean_dice
from training.evaluate import mean_over_cases, predict_case
from training.make_demo_weights import command_for, dice_table


def test_dice_per_label_counts_every_label_and_leaves_absent_ones_undefined():
    truth = np.zeros((4, 4, 4), dtype=np.uint8)
    truth[:2] = 1
    truth[3, 3, 3] = 2
    prediction = truth.copy()
    prediction[0] = 0  # half of label 1 missed
    scores = dice_per_label(prediction, truth, labels=range(1, 4))
    assert scores[1] == pytest.approx(2 * 16 / (16 + 32))
    assert scores[2] == 1.0
    assert math.isnan(scores[3])
    assert mean_dice(scores) == pytest.approx((scores[1] + 1.0) / 2)
    assert mean_over_cases([scores, {1: 1.0, 2: float("nan"), 3: float("nan")}])[1] == pytest.approx(
        (scores[1] + 1.0) / 2
    )
    with pytest.raises(ValueError, match="shape"):
        dice_per_label(prediction[:2], truth, labels=range(1, 4))


def test_predict_case_restores_the_training_mode():
    model = torch.nn.Conv3d(1, 3, 1)
    model.train()
    labels = predict_case(model, torch.rand(20, 18, 16), roi=(16, 16, 16))
    assert labels.shape == (20, 18, 16) and labels.dtype == torch.uint8
    assert model.training


def test_model_card_command_reproduces_the_run_config():
    from training.loop import TrainConfig

    config = TrainConfig(
        patch_size=64,
        steps=1500,
        lr=4e-4,
        threads=1,
        label_weights={2: 3.0, 7: 2.5},
        class_weights={7: 8.0, 8: 8.0},
        precision="bf16",
        data={
            "kind": "phantoms",
            "count": 32,
            "seed_start": 1000,
            "val_count": 4,
            "val_seed_start": 5000,
            "varied": True,
        },
    ).to_dict()
    import argparse

    from training.cli import add_arguments, resolve_config

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(shlex.split(command_for(config))[2:])
    assert resolve_config(args, None) == TrainConfig.from_dict(config)


def test_dice_table_has_a_row_per_label_and_the_organ_mean():
    results = {"RAS": ({1: 0.9, 2: 0.5, 14: float("nan")}, []), "LPS": ({1: 0.8, 2: 0.7}, [])}
    table = dice_table(results)
    assert "| 1 liver | 0.900 | 0.800 |" in table
    assert "| 14 tumor | - | - |" in table
    assert "**0.700**" in table and "**0.750**" in table


def test_status_line_says_under_trained_below_the_target_in_any_layout():
    from training.make_demo_weights import status_line

    good = {1: 0.9, 2: 0.88}
    assert "under-trained" not in status_line({"RAS": (good, []), "LPS": (good, [])})
    assert "under-trained" in status_line({"RAS": (good, []), "LPS": ({1: 0.9, 2: 0.6}, [])})


def test_status_line_counts_single_phantoms_under_the_target():
    from training.make_demo_weights import status_line

    good = {1: 0.9, 2: 0.88}
    rows = [("phantom 1", {1: 0.95, 2: 0.93}, 1.0), ("phantom 2", {1: 0.85, 2: 0.83}, 1.0)]
    line = status_line({"RAS": (good, rows), "LPS": (good, rows[:1])})
    assert "at or above the 0.85 target in every layout" in line
    assert "Single phantoms: 0.840-0.940, 1 of 3 under the target." in line
    assert "Single phantoms: 0.940-0.940, each at or above the target." in status_line({"RAS": (good, rows[:1])})
    assert "Single phantoms" not in status_line({"RAS": (good, [])})


def test_model_card_reports_each_case_and_how_many_were_evaluated(tmp_path):
    from training.loop import TrainConfig
    from training.make_demo_weights import EVAL_GRIDS, model_card

    data = {"kind": "phantoms", "count": 4, "seed_start": 1000, "val_count": 1, "val_seed_start": 5000}
    config = TrainConfig(data=data).to_dict()
    state = {"config": config, "state_dict": {"w": torch.zeros(10)}, "step": 7, "best": {}}
    organs = {label: 0.9 for label in range(1, 14)}

    def results(per_grid):
        rows = [(f"phantom {9000 + i}", {**organs, 1: 0.5 + 0.1 * i}, 30.0) for i in range(per_grid)]
        return {grid.title: ({**organs, 1: 0.55}, rows) for grid in EVAL_GRIDS}

    card = model_card(checkpoint=tmp_path / "last.pt", state=state, results=results(2), artifacts_mb=1.0)
    assert "--out weights/demo --cases-per-grid 2" in card
    first = EVAL_GRIDS[0].title.split(" (")[0]
    assert f"phantom 9000 ({first}): {(0.5 + 0.9 * 12) / 13:.3f} in 30 s" in card
    assert f"phantom 9001 ({first}): {(0.6 + 0.9 * 12) / 13:.3f} in 30 s" in card
    single = model_card(checkpoint=tmp_path / "last.pt", state=state, results=results(1), artifacts_mb=1.0)
    assert "--cases-per-grid" not in single


def test_model_card_names_the_labels_the_weights_never_find():
    from training.make_demo_weights import unlearned_labels_line

    organs = {label: 0.9 for label in range(1, 14)}
    missed = {"RAS": ({**organs, 14: 0.0}, []), "LPS": ({**organs, 14: 0.01}, [])}
    line = unlearned_labels_line(missed)
    assert "14 tumor (Dice at most 0.010)" in line and "9 gallbladder" not in line
    # Found in one layout: learned, however weakly elsewhere.
    assert unlearned_labels_line({"RAS": ({**organs, 14: 0.0}, []), "LPS": ({**organs, 14: 0.3}, [])}) == ""
    assert unlearned_labels_line({"RAS": (organs, [])}) == ""
