"""``swinxseg train`` end to end on tiny cases: folder pair, datalist, pause and --resume."""

from __future__ import annotations

import json

import pytest
import torch

from service.cli import main

COMMON = ["--patch-size", "32", "--batch-size", "2", "--warmup-steps", "1", "--log-interval", "1"]


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_folder_pair_run_pauses_and_resumes_from_the_run_folder(tmp_path, case_folders):
    images, labels = case_folders
    out = tmp_path / "run"
    argv = [
        "train",
        "--images",
        str(images),
        "--labels",
        str(labels),
        "--val-count",
        "1",
        "--out",
        str(out),
        "--steps",
        "4",
        "--val-interval",
        "4",
        "--pause-at",
        "2",
        *COMMON,
    ]
    assert main(argv) == 0
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 2
    # Nothing but the run folder: data source and recipe come back from the checkpoint.
    assert main(["train", "--resume", str(out)]) == 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["step"] == 4 and state["config"]["data"]["kind"] == "folders"
    records = _log(out)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    validation = [r for r in records if "val_dice" in r]
    assert validation and validation[-1]["step"] == 4 and "right_adrenal_gland" in validation[-1]["val_dice"]
    assert (out / "best.pt").is_file()
    # A new run never overwrites an existing one.
    assert main(argv) == 2


def test_datalist_run(tmp_path, case_folders):
    images, labels = case_folders
    datalist = tmp_path / "dataset.json"
    entry = lambda i: {"image": f"imagesTr/case{i}_0000.nii.gz", "label": f"labelsTr/case{i}.nii.gz"}  # noqa: E731
    datalist.write_text(json.dumps({"training": [entry(0), entry(1)], "validation": []}))
    out = tmp_path / "run"
    assert main(["train", "--datalist", str(datalist), "--out", str(out), "--steps", "1", *COMMON]) == 0
    assert torch.load(out / "last.pt", weights_only=True)["config"]["data"]["kind"] == "datalist"


def test_cli_refuses_two_data_sources_and_no_data(tmp_path, case_folders, capsys):
    images, labels = case_folders
    code = main(
        ["train", "--images", str(images), "--labels", str(labels), "--phantoms", "2", "--out", str(tmp_path)]
    )
    assert code == 2 and "choose one data source" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path)]) == 2
    assert "no training data" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--patch-size", "48"], ["--lr", "-1"]])
def test_cli_reports_bad_recipe_values(tmp_path, case_folders, capsys, bad):
    images, labels = case_folders
    code = main(["train", "--images", str(images), "--labels", str(labels), "--out", str(tmp_path), *bad])
    assert code == 2
    assert "train: error" in capsys.readouterr().err
