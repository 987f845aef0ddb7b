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


def test_cli_reports_a_device_it_cannot_train_on(tmp_path, case_folders, capsys):
    images, labels = case_folders
    data = ["train", "--images", str(images), "--labels", str(labels), "--out", str(tmp_path)]
    assert main([*data, "--device", "tpu"]) == 2
    assert "--device: device must be auto, cpu or cuda[:N]" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*data, "--device", "cuda"]) == 3
        assert "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_run_writes_cpu_checkpoints_and_resumes_on_the_cpu(tmp_path, case_folders):
    images, labels = case_folders
    data = ["--images", str(images), "--labels", str(labels), "--out", str(tmp_path), *COMMON]
    assert main(["train", *data, "--steps", "4", "--pause-at", "2", "--device", "cuda"]) == 0
    saved = torch.load(tmp_path / "last.pt", weights_only=True)  # no map_location: as saved
    tensors = list(saved["state_dict"].values()) + [
        t for s in saved["optimizer"]["state"].values() for t in s.values() if isinstance(t, torch.Tensor)
    ]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    assert main(["train", "--resume", str(tmp_path), "--device", "cpu"]) == 0
    assert [r["step"] for r in _log(tmp_path)] == [1, 2, 3, 4]
