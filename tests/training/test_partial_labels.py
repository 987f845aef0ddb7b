"""Partial labels: the ``refine`` merge rule, the ``mask`` loss's zero gradients, datalist entries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from service.errors import InvalidInputError
from training.data import PreparedCase, read_datalist
from training.loop import dice_ce_loss
from training.partial import apply_partial_mode, class_mask, mask_logits, merge_partial


def test_merge_annotated_labels_win_and_the_rest_comes_from_the_teacher():
    truth = np.array([[1, 1, 0, 0, 0, 2]], dtype=np.uint8)
    teacher = np.array([[3, 1, 1, 5, 0, 2]], dtype=np.uint8)
    merged = merge_partial(truth, teacher, annotated=[1, 2])
    # voxel 0: truth's 1 beats the teacher's 3; voxel 2: teacher's 1 where the annotator drew no 1 -> 0;
    # voxel 3: teacher's 5 (not annotated) kept; voxel 5: both say 2.
    assert merged.tolist() == [[1, 1, 0, 5, 0, 2]]
    assert merged.dtype == np.uint8
    as_tensor = merge_partial(torch.from_numpy(truth), torch.from_numpy(teacher), annotated=[1, 2])
    assert as_tensor.tolist() == merged.tolist() and as_tensor.dtype == torch.uint8
    with pytest.raises(ValueError, match="differ"):
        merge_partial(truth, teacher[:, :3], annotated=[1])


def test_modes_change_what_a_partial_case_trains_on():
    truth = torch.tensor([1, 0, 0], dtype=torch.uint8)
    teacher = torch.tensor([1, 4, 0], dtype=torch.uint8)
    case = PreparedCase("c", torch.zeros(3), truth, annotated=(1,), pseudo=teacher)
    assert apply_partial_mode([case], "refine")[0].labels.tolist() == [1, 4, 0]
    assert apply_partial_mode([case], "refine")[0].annotated is None
    assert apply_partial_mode([case], "none")[0].labels.tolist() == [1, 0, 0]
    assert apply_partial_mode([case], "mask")[0].annotated == (1,)
    with pytest.raises(InvalidInputError, match="pseudo-label"):
        apply_partial_mode([PreparedCase("c", torch.zeros(3), truth, annotated=(1,))], "refine")


def test_mask_loss_gives_no_gradient_to_unannotated_classes():
    torch.manual_seed(0)
    classes = 5
    logits = torch.randn(2, classes, 4, 4, 4, requires_grad=True)
    labels = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
    labels[0, 0, :2] = 1  # case 0 annotates 1 and 3, draws 1
    labels[1, 0, 2:] = 2  # case 1 annotates everything (complete)
    masks = torch.stack([class_mask((1, 3), classes), class_mask(None, classes)])
    loss = dice_ce_loss("batch", None, classes)(mask_logits(logits, masks), labels)
    loss.backward()
    grad = logits.grad
    # Case 0 does not annotate 2 and 4: their logits get exactly zero gradient at every voxel.
    assert torch.all(grad[0, 2] == 0) and torch.all(grad[0, 4] == 0)
    # The annotated classes and background do learn, and so does every class of the complete case.
    for c in (0, 1, 3):
        assert grad[0, c].abs().sum() > 0
    for c in range(classes):
        assert grad[1, c].abs().sum() > 0
    # Without the mask, the unannotated class 2 is pushed down as background: that is what mask avoids.
    logits.grad = None
    dice_ce_loss("batch", None, classes)(logits, labels).backward()
    assert logits.grad[0, 2].abs().sum() > 0


def test_datalist_reads_annotated_and_pseudo_label(tmp_path, make_ct, write_nifti):
    ct, labels = make_ct()
    for name in ("a_0000.nii.gz", "a.nii.gz", "a_pseudo.nii.gz"):
        write_nifti(labels if "0000" not in name else ct, tmp_path / name)
    entry = {"image": "a_0000.nii.gz", "label": "a.nii.gz", "annotated": [13, 1, 2, 7], "pseudo_label": "a_pseudo.nii.gz"}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"training": [entry]}))
    case = read_datalist(path)["training"][0]
    assert case.annotated == (1, 2, 7, 13) and case.pseudo_label == tmp_path / "a_pseudo.nii.gz"
    for bad in ([], [0], ["1"], 3):
        path.write_text(json.dumps({"training": [{**entry, "annotated": bad}]}))
        with pytest.raises(InvalidInputError, match="annotated"):
            read_datalist(path)
    path.write_text(json.dumps({"training": [entry], "validation": [entry]}))
    with pytest.raises(InvalidInputError, match="completely annotated"):
        read_datalist(path)


def test_a_label_outside_the_annotated_list_is_refused(tmp_path, make_ct):
    from training.data import PreprocessParams, prepare_case

    ct, labels = make_ct()
    with pytest.raises(InvalidInputError, match=r"label\(s\) \[7, 13\]"):
        prepare_case("a", ct, labels, PreprocessParams.service_defaults(), annotated=(1, 2))


@pytest.mark.slow
def test_train_cli_partial_modes(tmp_path, case_folders):
    from service.cli import main

    images, labels = case_folders
    entry = lambda i: {"image": str(images / f"case{i}_0000.nii.gz"), "label": str(labels / f"case{i}.nii.gz")}  # noqa: E731
    full = [entry(0), entry(1), entry(2)]
    # Case 0 claims to annotate only the liver: its label file draws more, so it is refused ...
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"training": [{**full[0], "annotated": [1]}, full[1]]}))
    common = ["--patch-size", "32", "--batch-size", "2", "--steps", "2", "--warmup-steps", "1", "--threads", "1"]
    assert main(["train", "--datalist", str(path), "--partial", "mask", "--out", str(tmp_path / "r0"), *common]) == 2
    # ... a complete annotation listed as such trains in mask mode; refine without a pseudo label is refused.
    path.write_text(json.dumps({"training": [{**full[0], "annotated": [1, 2, 7, 13]}, full[1]]}))
    assert main(["train", "--datalist", str(path), "--partial", "mask", "--out", str(tmp_path / "r1"), *common]) == 0
    assert torch.load(tmp_path / "r1" / "last.pt", weights_only=True)["config"]["partial"] == "mask"
    assert main(["train", "--datalist", str(path), "--partial", "refine", "--out", str(tmp_path / "r2"), *common]) == 2
