"""The phantom's grid: any orientation or obliquity holds the same anatomy in world space."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from phantoms.generator import DEFAULT_SPACING, make_phantom
from service.errors import InvalidInputError

SEED = 3


def world_points(volume, mask: np.ndarray) -> np.ndarray:
    """World (RAS+ mm) coordinates of the voxels in ``mask``, shape (n, 3)."""
    ijk = np.argwhere(mask)
    return ijk @ volume.affine[:3, :3].T + volume.affine[:3, 3]


def centroids_in_box(labels, lo: np.ndarray, hi: np.ndarray) -> dict[int, np.ndarray]:
    """Label centroids using only voxels inside the world box [lo, hi] (a common field of view)."""
    out = {}
    for value in np.unique(labels.array):
        if value == 0:
            continue
        pts = world_points(labels, labels.array == value)
        pts = pts[np.all((pts >= lo) & (pts <= hi), axis=1)]
        if len(pts):
            out[int(value)] = pts.mean(axis=0)
    return out


@pytest.mark.parametrize(("orientation", "oblique_deg"), [("LPS", 0.0), ("PIR", 0.0), ("RAS", 15.0), ("LPS", -10.0)])
def test_same_world_anatomy_in_any_orientation(phantom, orientation, oblique_deg):
    _, ref = phantom(SEED)
    _, other = phantom(SEED, orientation=orientation, oblique_deg=oblique_deg)
    # Compare inside the RAS field of view shrunk by 5 mm, which every other grid covers
    # (tubes like the aorta leave the field of view, so coverage would otherwise bias their centroid).
    extent = (np.array(ref.shape) - 1)
    corners = np.array([[a, b, c] for a in (0, extent[0]) for b in (0, extent[1]) for c in (0, extent[2])])
    world = corners @ ref.affine[:3, :3].T + ref.affine[:3, 3]
    lo, hi = world.min(axis=0) + 5.0, world.max(axis=0) - 5.0
    c_ref, c_other = centroids_in_box(ref, lo, hi), centroids_in_box(other, lo, hi)
    assert set(c_ref) == set(c_other)
    tolerance = 1.5 * max(DEFAULT_SPACING)
    for label, centre in c_ref.items():
        shift = float(np.abs(c_other[label] - centre).max())
        assert shift < tolerance, f"label {label} moved {shift:.2f} mm ({orientation}, {oblique_deg} deg)"


def test_grid_follows_orientation_and_obliquity(phantom):
    ct_lps, _ = phantom(SEED, orientation="LPS")
    assert nib.aff2axcodes(ct_lps.affine) == ("L", "P", "S")
    np.testing.assert_allclose(ct_lps.spacing, DEFAULT_SPACING)
    ct_obl, _ = phantom(SEED, orientation="RAS", oblique_deg=15.0)
    direction = ct_obl.affine[:3, :3] / np.array(ct_obl.spacing)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-9)  # still orthonormal
    assert np.abs(direction - np.eye(3)).max() > 0.1  # but rotated
    np.testing.assert_allclose(ct_obl.spacing, DEFAULT_SPACING)


def test_explicit_shape_and_spacing_are_honoured():
    ct, labels = make_phantom(seed=1, shape=(40, 36, 24), spacing=(6.0, 6.0, 6.5), orientation="LAS")
    assert ct.shape == labels.shape == (40, 36, 24)
    np.testing.assert_allclose(ct.spacing, (6.0, 6.0, 6.5))
    assert nib.aff2axcodes(ct.affine) == ("L", "A", "S")
    assert (labels.array == 1).any()  # the field of view is centred on the anatomy


@pytest.mark.parametrize(
    "kwargs",
    [{"orientation": "RAX"}, {"orientation": "RRS"}, {"orientation": "RA"}, {"spacing": (1.0, -1.0, 1.0)},
     {"shape": (10, 10)}, {"shape": (10, 1, 10)}, {"oblique_deg": float("nan")}, {"oblique_deg": 60.0}],
)
def test_bad_arguments_raise_typed_errors(kwargs):
    with pytest.raises(InvalidInputError):
        make_phantom(seed=0, **kwargs)
