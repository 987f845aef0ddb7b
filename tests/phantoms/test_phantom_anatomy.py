"""The phantom's anatomy: determinism, organ presence and size, sides, HU and the CT table."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from phantoms.generator import NOMINAL_HU, make_phantom
from service.labels import FLARE23_LABELS, ORGAN_LABELS

SEEDS = (0, 1, 2)
REAL_CT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ct"  # ../shared from the project

# Sanity ranges in ml for the default (small adult, ~250 x 210 x 155 mm) field of view; observed
# ranges over seeds 0-30 sit well inside them.
VOLUME_RANGE_ML: dict[int, tuple[float, float]] = {
    1: (200, 1200), 2: (30, 200), 3: (30, 250), 4: (8, 60), 5: (15, 100), 6: (15, 100), 7: (0.8, 8),
    8: (0.8, 8), 9: (6, 50), 10: (4, 35), 11: (30, 250), 12: (12, 90), 13: (30, 200),
}


def world_centroids(labels) -> dict[int, np.ndarray]:
    """World (RAS+ mm) centroid of every label present."""
    out = {}
    for value in np.unique(labels.array):
        if value == 0:
            continue
        ijk = np.argwhere(labels.array == value).mean(axis=0)
        out[int(value)] = labels.affine[:3, :3] @ ijk + labels.affine[:3, 3]
    return out


def test_same_seed_gives_identical_volumes(phantom):
    ct, labels = phantom(0)
    ct2, labels2 = make_phantom(seed=0)
    np.testing.assert_array_equal(ct.array, ct2.array)
    np.testing.assert_array_equal(labels.array, labels2.array)
    np.testing.assert_array_equal(ct.affine, ct2.affine)


def test_different_seeds_differ(phantom):
    (ct0, lab0), (ct1, lab1) = phantom(0), phantom(1)
    assert ct0.shape != ct1.shape or not np.array_equal(ct0.array, ct1.array)
    assert not np.allclose(ct0.affine, ct1.affine)  # the anatomy (and so the field of view) moved
    assert abs(int((lab0.array == 1).sum()) - int((lab1.array == 1).sum())) > 100


def test_types_and_grid(phantom):
    ct, labels = phantom(0)
    assert ct.array.dtype == np.int16 and labels.array.dtype == np.uint8
    assert ct.shape == labels.shape
    np.testing.assert_array_equal(ct.affine, labels.affine)
    assert nib.aff2axcodes(ct.affine) == ("R", "A", "S")
    assert set(np.unique(labels.array)) <= set(FLARE23_LABELS)
    assert ct.array.min() >= -1024 and np.percentile(ct.array, 1) < -900  # air around the body


@pytest.mark.parametrize("seed", SEEDS)
def test_every_organ_present_with_plausible_volume(phantom, seed):
    ct, labels = phantom(seed)
    ml_per_voxel = float(np.prod(ct.spacing)) / 1000.0
    counts = np.bincount(labels.array.ravel(), minlength=15)
    for label in ORGAN_LABELS:
        lo, hi = VOLUME_RANGE_ML[label]
        volume = counts[label] * ml_per_voxel
        assert lo <= volume <= hi, f"seed {seed}: {FLARE23_LABELS[label]} is {volume:.1f} ml, expected {lo}-{hi}"


@pytest.mark.parametrize("seed", SEEDS)
def test_organs_are_on_the_correct_side_in_world_space(phantom, seed):
    # RAS+: +x toward the patient's right, +y anterior, +z superior.
    c = world_centroids(phantom(seed)[1])
    x, y, z = 0, 1, 2
    for right_organ in (1, 9):  # liver, gallbladder
        for left_organ in (3, 11):  # spleen, stomach
            assert c[right_organ][x] > c[left_organ][x] + 20, (right_organ, left_organ)
    assert c[2][x] > c[13][x] + 60  # right kidney right of the left kidney
    assert c[6][x] > c[5][x] + 10  # aorta on the patient's left of the IVC
    assert c[7][x] > c[8][x]  # right adrenal right of the left adrenal
    for kidney in (2, 13):
        assert c[kidney][y] < c[4][y] - 15  # kidneys posterior to the pancreas
    assert c[7][z] > c[2][z] + 15 and c[8][z] > c[13][z] + 15  # adrenals above the kidneys' centroids
    assert c[5][y] < c[4][y] and c[6][y] < c[4][y]  # great vessels behind the pancreas
    assert c[10][z] > c[4][z]  # esophagus near the top


def test_liver_side_matches_a_real_ct():
    seg_path = REAL_CT / "example_seg_fast_force_split.nii.gz"  # labels of example_ct.nii.gz
    if not seg_path.exists():
        pytest.skip("real CT fixtures (../shared/data/ct) not available")
    seg = nib.load(str(seg_path))
    data = np.asarray(seg.dataobj)

    def centroid_x(ts_id: int) -> float:
        ijk = np.argwhere(data == ts_id).mean(axis=0)
        return float((seg.affine[:3, :3] @ ijk + seg.affine[:3, 3])[0])

    real_liver_minus_spleen = centroid_x(5) - centroid_x(1)  # TotalSegmentator v2: liver 5, spleen 1
    c = world_centroids(make_phantom(seed=5, spacing=(4.0, 4.0, 4.0))[1])
    assert np.sign(c[1][0] - c[3][0]) == np.sign(real_liver_minus_spleen) == 1.0
    assert np.sign(c[2][0] - c[13][0]) == np.sign(centroid_x(2) - centroid_x(3))  # right vs left kidney


@pytest.mark.parametrize("seed", SEEDS)
def test_organ_hu_near_nominal(phantom, seed):
    ct, labels = phantom(seed)
    for label in ORGAN_LABELS:
        mask = labels.array == label
        core = ndimage.binary_erosion(mask)
        values = ct.array[core] if core.sum() >= 20 else ct.array[mask]  # thin organs: all voxels
        median = float(np.median(values))
        assert abs(median - NOMINAL_HU[label]) <= 30, f"seed {seed}: {FLARE23_LABELS[label]} median {median}"
    tumour = labels.array == 14
    if tumour.any():
        assert abs(float(np.median(ct.array[tumour])) - NOMINAL_HU[14]) <= 30


def test_tumour_in_most_seeds():
    present = [bool((make_phantom(seed=s, spacing=(4.0, 4.0, 4.0))[1].array == 14).any()) for s in range(6)]
    assert sum(present) >= 3


@pytest.mark.parametrize("seed", (0, 1))
def test_table_is_separated_from_the_body_by_air(phantom, seed):
    ct, _ = phantom(seed)
    dense = ct.array > -500  # body and table, not air or lung noise
    components, n = ndimage.label(dense)
    assert n >= 2
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = components == int(np.argmax(sizes))
    table = dense & ~body
    assert table.sum() > 1000
    # Everywhere the table lies under the body (posterior: lower j on this RAS grid), with air between.
    assert ct.affine[1, 1] > 0
    has_both = table.any(axis=1) & body.any(axis=1)
    j = np.arange(ct.shape[1])[None, :, None]
    table_top = np.where(table, j, -1).max(axis=1)
    body_back = np.where(body, j, ct.shape[1]).min(axis=1)
    assert np.all(table_top[has_both] < body_back[has_both])
    gap_mm = ndimage.distance_transform_edt(~body, sampling=ct.spacing)[table].min()
    assert gap_mm >= 4.0, f"the table comes within {gap_mm:.1f} mm of the body"
    # Along the posterior midline there is air between the table's top and the body's back.
    mid_i, mid_k = ct.shape[0] // 2, ct.shape[2] // 2
    column = ct.array[mid_i, :, mid_k]
    table_top = int(np.nonzero(table[mid_i, :, mid_k])[0].max())
    body_back = int(np.nonzero(body[mid_i, :, mid_k])[0].min())
    gap = column[table_top + 1 : body_back]
    assert gap.size >= 2 and np.all(gap < -800)
    assert 150 < float(np.median(ct.array[table])) < 450
