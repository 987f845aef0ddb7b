import nibabel as nib
import numpy as np
import pytest
import torch

from service.errors import InvalidInputError
from service.geometry import from_ras, to_ras


def test_round_trip_is_exact_identity(orientation_case, make_affine):
    rng = np.random.default_rng(1)
    array = rng.integers(-1000, 1000, size=(7, 9, 11), dtype=np.int16)
    array_ras, _, record = to_ras(array, make_affine(orientation_case))
    back = from_ras(array_ras, record)
    assert back.shape == array.shape and back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


def test_round_trip_on_torch_with_leading_axes(orientation_case, make_affine):
    tensor = torch.arange(2 * 5 * 6 * 7).reshape(2, 5, 6, 7)
    ras, _, record = to_ras(tensor, make_affine(orientation_case))
    assert isinstance(ras, torch.Tensor) and ras.shape[0] == 2
    assert torch.equal(from_ras(ras, record), tensor)


def test_reoriented_affine_maps_every_voxel_to_the_same_world_point(orientation_case, make_affine):
    affine = make_affine(orientation_case)
    array = np.arange(6 * 8 * 5).reshape(6, 8, 5)  # unique values identify each voxel
    array_ras, affine_ras, _ = to_ras(array, affine)
    index_ras = np.stack(np.meshgrid(*(np.arange(n) for n in array_ras.shape), indexing="ij"), -1).reshape(-1, 3)
    world = index_ras @ affine_ras[:3, :3].T + affine_ras[:3, 3]
    index = (world - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    assert np.allclose(index, np.round(index), atol=1e-6)
    index = np.round(index).astype(int)
    np.testing.assert_array_equal(array[tuple(index.T)], array_ras[tuple(index_ras.T)])


def test_reoriented_axes_point_to_r_a_s(orientation_case, make_affine):
    _, affine_ras, _ = to_ras(np.zeros((4, 5, 6)), make_affine(orientation_case))
    columns = affine_ras[:3, :3]
    for axis in range(3):
        assert np.argmax(np.abs(columns[:, axis])) == axis
        assert columns[axis, axis] > 0


def test_matches_nibabel_closest_canonical(orientation_case, make_affine):
    array = np.random.default_rng(2).random((6, 7, 8)).astype(np.float32)
    affine = make_affine(orientation_case)
    canonical = nib.as_closest_canonical(nib.Nifti1Image(array, affine))
    array_ras, affine_ras, _ = to_ras(array, affine)
    np.testing.assert_array_equal(np.asarray(canonical.dataobj), array_ras)
    np.testing.assert_allclose(canonical.affine, affine_ras, atol=1e-5)  # NIfTI header stores float32


def test_numpy_result_is_a_view():
    array = np.zeros((4, 5, 6), dtype=np.int16)
    array_ras, _, _ = to_ras(array, np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert np.shares_memory(array_ras, array)


def test_degenerate_affine_is_rejected():
    affine = np.diag([1.0, 0.0, 1.0, 1.0])
    with pytest.raises(InvalidInputError, match="singular"):
        to_ras(np.zeros((3, 3, 3)), affine)
