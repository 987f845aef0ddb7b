"""Training data: datalist and folder-pair loading, labels on the model grid, the disk cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.errors import InvalidInputError
from service.geometry import preprocess, restore_labels
from service.volume import Volume
from training.data import (
    PreprocessParams,
    labels_on_image_grid,
    labels_to_model_grid,
    load_cases,
    pair_folders,
    phantom_cases,
    read_datalist,
    split_holdout,
)

PARAMS = PreprocessParams()


def _preprocess(ct: Volume, params: PreprocessParams = PARAMS):
    return preprocess(ct, params.spec, body_margin_mm=params.body_margin_mm, crop_to=params.crop_to, device="cpu")


@pytest.mark.parametrize(
    ("axcodes", "spacing", "oblique"),
    [("RAS", (1.5, 1.5, 2.0), 0.0), ("LPS", (0.8, 0.9, 1.3), 0.0), ("PIR", (1.2, 2.5, 0.7), 12.0)],
)
def test_labels_to_model_grid_round_trips_through_restore_labels(make_ct, axcodes, spacing, oblique):
    shape = tuple(int(round(60 / s)) for s in spacing)
    ct, labels = make_ct(shape=shape, spacing=spacing, axcodes=axcodes, oblique_deg=oblique)
    prepared = _preprocess(ct)
    on_model = labels_to_model_grid(labels, prepared.record)
    assert on_model.shape == tuple(prepared.image.shape) and on_model.dtype == np.uint8
    back = restore_labels(on_model, prepared.record)
    assert np.mean(back == labels.array) >= 0.99
    # Every organ survives the trip, the small adrenal included.
    assert set(np.unique(on_model)) == set(np.unique(labels.array))


def test_labels_on_model_grid_sit_on_their_image_structures(make_ct):
    ct, labels = make_ct(axcodes="LPS", spacing=(1.5, 1.5, 2.0))
    prepared = _preprocess(ct)
    on_model = labels_to_model_grid(labels, prepared.record)
    image = prepared.image.numpy()
    # The right kidney has HU 200 -> 0.9 on the [0, 1] window; its model-grid voxels must be bright.
    assert np.median(image[on_model == 2]) > 0.8
    assert np.median(image[on_model == 0]) < 0.6


def test_labels_stored_in_another_orientation_are_put_on_the_image_grid(make_ct):
    ct, labels = make_ct(axcodes="LPS")
    # Same world grid, stored LAS: reverse the j axis and fix the affine to match.
    flipped = labels.array[:, ::-1, :]
    affine = labels.affine.copy()
    affine[:3, 3] = labels.affine[:3, :3] @ [0, labels.shape[1] - 1, 0] + labels.affine[:3, 3]
    affine[:3, 1] *= -1
    moved = Volume(np.ascontiguousarray(flipped), affine)
    assert np.array_equal(labels_on_image_grid(moved, ct, name="x"), labels.array)


def test_labels_on_another_grid_are_refused(make_ct):
    ct, labels = make_ct()
    shifted = labels.affine.copy()
    shifted[0, 3] += 5.0
    with pytest.raises(InvalidInputError, match="does not match image grid"):
        labels_on_image_grid(Volume(labels.array, shifted), ct, name="case")


def test_datalist_paths_are_relative_to_the_json(tmp_path, make_ct, write_nifti):
    (tmp_path / "data").mkdir()
    entries = []
    for index in range(3):
        ct, labels = make_ct(seed=index)
        write_nifti(ct, tmp_path / "data" / f"c{index}_0000.nii.gz")
        write_nifti(labels, tmp_path / "data" / f"c{index}.nii.gz")
        entries.append({"image": f"data/c{index}_0000.nii.gz", "label": f"data/c{index}.nii.gz"})
    datalist = tmp_path / "dataset.json"
    datalist.write_text(json.dumps({"training": entries[:2], "validation": entries[2:]}))
    lists = read_datalist(datalist)
    assert [c.name for c in lists["training"]] == ["c0", "c1"]
    assert [c.name for c in lists["validation"]] == ["c2"]
    cases = load_cases(lists["validation"], PARAMS)
    assert cases[0].image.shape == cases[0].labels.shape
    assert set(np.unique(cases[0].labels.numpy())) == {0, 1, 2, 7, 13}


def test_datalist_errors_name_the_entry(tmp_path):
    datalist = tmp_path / "d.json"
    datalist.write_text(json.dumps({"training": [{"image": "missing.nii.gz", "label": "x.nii.gz"}]}))
    with pytest.raises(InvalidInputError, match=r"training\[0\] image .*missing.nii.gz"):
        read_datalist(datalist)
    datalist.write_text(json.dumps({"validation": []}))
    with pytest.raises(InvalidInputError, match='non-empty "training"'):
        read_datalist(datalist)


def test_folder_pair_matches_by_case_name(case_folders):
    images, labels = case_folders
    cases = pair_folders(images, labels)
    assert [c.name for c in cases] == ["case0", "case1", "case2"]
    assert cases[1].image.name == "case1_0000.nii.gz" and cases[1].label.name == "case1.nii.gz"
    train, val = split_holdout(cases, 1)
    assert [c.name for c in train] == ["case0", "case1"] and [c.name for c in val] == ["case2"]
    (labels / "case2.nii.gz").unlink()
    with pytest.raises(InvalidInputError, match="case2"):
        pair_folders(images, labels)


def test_disk_cache_gives_back_the_same_case(tmp_path, case_folders):
    sources = pair_folders(*case_folders)[:1]
    first = load_cases(sources, PARAMS, cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    again = load_cases(sources, PARAMS, cache_dir=tmp_path / "cache")
    assert np.array_equal(first[0].image.numpy(), again[0].image.numpy())
    assert np.array_equal(first[0].labels.numpy(), again[0].labels.numpy())


def test_phantom_grids_vary_with_the_seed_and_are_reproducible():
    cases = phantom_cases(12, 1000)
    assert cases == phantom_cases(12, 1000)
    assert len({c.orientation for c in cases}) >= 3
    assert any(c.oblique_deg for c in cases)
    for case in cases:
        slice_axis = next(i for i, code in enumerate(case.orientation) if code in "SI")
        assert 1.0 <= case.spacing[slice_axis] <= 3.0
        assert all(0.8 <= s <= 3.0 for s in case.spacing)
