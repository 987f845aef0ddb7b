"""Small labelled CTs for the training tests: cheap to build, every label where its name says."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from synthetic import make_affine, world_coordinates

from service.volume import Volume

# (label, centre RAS mm, radius mm, HU). +x is the patient's right: the right kidney (2) and right
# adrenal (7) sit at +x, the left kidney (13) at -x, with the same HU as its partner.
ORGANS = (
    (1, (10.0, 4.0, 6.0), 10.0, 120.0),
    (2, (13.0, -10.0, -8.0), 5.0, 200.0),
    (13, (-13.0, -10.0, -8.0), 5.0, 200.0),
    (7, (9.0, -6.0, 6.0), 2.5, 60.0),
)


def small_ct(
    *, shape=(40, 36, 32), spacing=(1.5, 1.5, 2.0), axcodes="RAS", oblique_deg=0.0, seed=0
) -> tuple[Volume, Volume]:
    """A ~60 mm body ellipsoid holding ``ORGANS``; (ct int16 HU, labels uint8) on one grid."""
    affine = make_affine(shape, spacing, axcodes=axcodes, oblique_deg=oblique_deg)
    x, y, z = world_coordinates(shape, affine)
    rng = np.random.default_rng(seed)
    shift = rng.uniform(-2.0, 2.0, size=3)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    body = (x / 26.0) ** 2 + (y / 22.0) ** 2 + (z / 30.0) ** 2 <= 1.0
    hu[body] = 0.0
    for label, centre, radius, value in ORGANS:
        inside = (
            (x - centre[0] - shift[0]) ** 2
            + (y - centre[1] - shift[1]) ** 2
            + (z - centre[2] - shift[2]) ** 2
            <= radius**2
        ) & body
        hu[inside] = value
        labels[inside] = label
    hu += rng.normal(0.0, 5.0, size=shape).astype(np.float32)
    return Volume(np.rint(hu).astype(np.int16), affine), Volume(labels, affine.copy())


def save_nifti(volume: Volume, path) -> None:
    nib.save(nib.Nifti1Image(volume.array, volume.affine), str(path))


@pytest.fixture(scope="session")
def make_ct():
    """The ``small_ct`` factory (fixtures, because test modules cannot import a conftest)."""
    return small_ct


@pytest.fixture(scope="session")
def write_nifti():
    return save_nifti


@pytest.fixture
def case_folders(tmp_path):
    """imagesTr/CASE_0000.nii.gz + labelsTr/CASE.nii.gz for three small cases (FLARE naming)."""
    images, labels = tmp_path / "imagesTr", tmp_path / "labelsTr"
    images.mkdir()
    labels.mkdir()
    for index, axcodes in enumerate(("RAS", "LPS", "LAS")):
        ct, lab = small_ct(axcodes=axcodes, seed=index)
        save_nifti(ct, images / f"case{index}_0000.nii.gz")
        save_nifti(lab, labels / f"case{index}.nii.gz")
    return images, labels


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Train on one thread: on a shared 2-core machine, two OpenMP threads that keep waiting for
    each other run several times slower than one (measured: 1.4 s vs 3-27 s per 32^3 step)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
