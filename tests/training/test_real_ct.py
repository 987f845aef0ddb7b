"""The real-CT data of the demo weights: TotalSegmentator v2 -> FLARE-23 mapping, labels compared
in world space across voxel orders, and the training datalist."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.io.readers import read_volume
from service.volume import Volume
from training.real_ct import TOTALSEG_V2_TO_FLARE23, labels_in_world, map_totalsegmentator, prepare

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ct"


def test_mapping_follows_the_table_and_drops_every_other_id():
    ids = np.arange(0, 120, dtype=np.uint8).reshape(4, 5, 6)
    mapped = map_totalsegmentator(ids)
    for source, target in TOTALSEG_V2_TO_FLARE23.items():
        assert mapped.ravel()[source] == target
    others = [i for i in range(120) if i not in TOTALSEG_V2_TO_FLARE23]
    assert not mapped.ravel()[others].any()
    assert sorted(TOTALSEG_V2_TO_FLARE23.values()) == list(range(1, 14))  # every organ, once


def test_labels_in_world_undoes_a_flipped_voxel_order():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(6, 7, 5)).astype(np.uint8)
    affine = np.diag([-0.8, -0.8, 2.0, 1.0])
    affine[:3, 3] = (40.0, 30.0, -10.0)
    reference = Volume(np.zeros(labels.shape, np.int16), affine)
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, labels.shape[0] - 1  # stored LAS instead of LPS, same world
    stored = Volume(labels[::-1].copy(), affine @ flip)
    np.testing.assert_array_equal(labels_in_world(reference, stored), labels)
    shifted = Volume(labels, affine @ np.array([[1, 0, 0, 2], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))
    moved = labels_in_world(reference, shifted)
    np.testing.assert_array_equal(moved[2:], labels[:-2])
    assert not moved[:2].any()  # outside the stored grid: background


@pytest.mark.skipif(not (SHARED / "example_ct.nii.gz").exists(), reason="the real CT folder ../shared is absent")
def test_prepare_writes_the_real_patient_and_phantoms(tmp_path):
    datalist = json.loads(prepare(SHARED, tmp_path, phantoms=1, real_repeats=3, val_phantoms=1).read_text())
    assert [e["image"] for e in datalist["training"]].count("real_ct.nii.gz") == 3
    assert len(datalist["training"]) == 4 and len(datalist["validation"]) == 1
    labels = read_volume(tmp_path / "real_labels.nii.gz")
    ct = read_volume(tmp_path / "real_ct.nii.gz")
    assert labels.shape == ct.shape and np.allclose(labels.affine, ct.affine)
    assert set(np.unique(labels.array)) <= set(range(14)) and (labels.array == 1).sum() > 10_000  # liver
