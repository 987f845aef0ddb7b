"""Readers: NIfTI/NRRD/MetaImage from paths and bytes, RAS geometry, validation."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from service.errors import InputTooLargeError, InvalidInputError, SwinxsegError, UnsupportedFormatError
from service.io.readers import read_volume, read_volume_bytes

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    """A rotation matrix from angles in degrees about x, then y, then z."""
    a, b, c = np.radians([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    image = nib.Nifti1Image(array, np.eye(4) if affine is None else affine)
    nib.save(image, path)
    return path


def _sitk_image(direction: np.ndarray, *, shape_zyx=(7, 6, 5)) -> tuple[sitk.Image, np.ndarray]:
    array = np.arange(np.prod(shape_zyx), dtype=np.float32).reshape(shape_zyx) - 500
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((-120.5, 33.25, -804.5))
    image.SetDirection(tuple(direction.ravel()))
    return image, array


# --------------------------------------------------------------------------- real NIfTI fixtures


@pytest.mark.parametrize(
    ("name", "dtype"), [("example_ct.nii.gz", np.int32), ("example_ct_sm.nii.gz", np.int16)]
)
def test_real_nifti_keeps_dtype_and_affine(ct_dir: Path, name: str, dtype) -> None:
    volume = read_volume(ct_dir / name)
    reference = nib.load(ct_dir / name)
    assert volume.array.dtype == dtype
    assert volume.shape == reference.shape
    np.testing.assert_array_equal(volume.affine, reference.affine)
    np.testing.assert_array_equal(volume.array, np.asanyarray(reference.dataobj))
    assert volume.meta["source_format"] == "nifti" and volume.meta["file_name"] == name
    assert volume.meta["warnings"] == ()  # a well-formed CT in HU: nothing to warn about


def test_nifti_bytes_sniffed_without_a_name(ct_dir: Path) -> None:
    data = (ct_dir / "example_ct_sm.nii.gz").read_bytes()
    reference = read_volume(ct_dir / "example_ct_sm.nii.gz")
    for payload, filename in [(data, None), (gzip.decompress(data), None), (data, "mislabelled.nrrd")]:
        volume = read_volume_bytes(payload, filename=filename)
        np.testing.assert_array_equal(volume.array, reference.array)
        np.testing.assert_array_equal(volume.affine, reference.affine)


def test_upload_temp_files_are_removed(ct_dir: Path, tmp_path: Path) -> None:
    data = (ct_dir / "example_ct_sm.nii.gz").read_bytes()
    read_volume_bytes(data, filename="a.nii.gz", work_dir=tmp_path)
    with pytest.raises(InvalidInputError) as info:
        read_volume_bytes(data[: len(data) // 2], filename="cut.nii.gz", work_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    # The message names the upload, never our temporary copy.
    assert "cut.nii.gz is truncated or corrupt" in str(info.value)
    assert "swinxseg-upload" not in str(info.value)


# --------------------------------------------------------------------------- NRRD / MetaImage geometry

DIRECTIONS = {
    "identity": np.eye(3),
    "coronal": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),
    "oblique": _rotation(12.0, -20.0, 35.0),
}


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_sitk_formats_map_voxels_to_ras(tmp_path: Path, suffix: str, direction: str) -> None:
    image, array = _sitk_image(DIRECTIONS[direction])
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(image, str(path))
    volume = read_volume(path)
    assert volume.shape == (5, 6, 7)
    np.testing.assert_array_equal(volume.array, array.transpose(2, 1, 0))
    for index in [(0, 0, 0), (4, 1, 3), (2, 5, 6)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        np.testing.assert_allclose((volume.affine @ [*index, 1.0])[:3], LPS_TO_RAS @ lps, atol=1e-4)
    np.testing.assert_allclose(volume.spacing, (0.7, 0.9, 2.5), atol=1e-6)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_sitk_formats_from_bytes(tmp_path: Path, suffix: str) -> None:
    image, array = _sitk_image(DIRECTIONS["oblique"])
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(image, str(path), useCompression=True)
    volume = read_volume_bytes(path.read_bytes())
    np.testing.assert_array_equal(volume.array, array.transpose(2, 1, 0))
    np.testing.assert_allclose(volume.affine, read_volume(path).affine)


# --------------------------------------------------------------------------- shapes


def test_trailing_singleton_4th_dimension_is_squeezed(tmp_path: Path) -> None:
    volume = read_volume(_save_nifti(tmp_path / "x.nii.gz", np.ones((4, 5, 6, 1), np.int16)))
    assert volume.shape == (4, 5, 6)


@pytest.mark.parametrize(
    ("shape", "fact"),
    [
        ((4, 5, 6, 2), "is 4D (shape 4x5x6x2)"),
        ((8, 9), "is 2D (shape 8x9)"),
        ((8, 9, 1), "is 2D: a single slice (shape 8x9x1)"),
        ((1, 1, 9), "fewer than 2 voxels along 2 axes (shape 1x1x9)"),
    ],
)
def test_wrong_dimensions_are_refused(tmp_path: Path, shape, fact: str) -> None:
    path = _save_nifti(tmp_path / "x.nii.gz", np.zeros(shape, np.int16))
    with pytest.raises(InvalidInputError) as info:
        read_volume(path)
    assert fact in str(info.value)


def test_2d_metaimage_is_refused(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 9), np.int16)), str(tmp_path / "x.mha"))
    with pytest.raises(InvalidInputError, match=r"x.mha is 2D \(shape 9x8\)"):
        read_volume(tmp_path / "x.mha")


def test_vector_image_is_refused(tmp_path: Path) -> None:
    rgb = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.mha"))
    with pytest.raises(InvalidInputError, match="3 components per voxel"):
        read_volume(tmp_path / "rgb.mha")


# --------------------------------------------------------------------------- bad contents


def test_nan_and_inf_are_counted(tmp_path: Path) -> None:
    array = np.zeros((4, 5, 6), np.float32)
    array[0, 0, 0] = np.nan
    array[1, 2, 3] = np.inf
    array[3, 4, 5] = -np.inf
    with pytest.raises(InvalidInputError, match="has 3 NaN or infinite voxels out of 120"):
        read_volume(_save_nifti(tmp_path / "x.nii.gz", array))


def test_constant_volume_is_allowed_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _save_nifti(tmp_path / "flat.nii.gz", np.full((4, 5, 6), -1000, np.int16))
    with caplog.at_level(logging.WARNING, logger="service.io.volume_checks"):
        volume = read_volume(path)
    assert volume.shape == (4, 5, 6)
    assert "same value -1000" in caplog.text


def test_complex_voxels_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="voxel type complex64"):
        read_volume(_save_nifti(tmp_path / "x.nii", np.zeros((4, 5, 6), np.complex64)))


@pytest.mark.parametrize(
    ("column", "fact"),
    [
        ([0.0, 0.0, 0.0], "zero voxel spacing"),
        ([1.0, 0.0, 0.0], "degenerate (non-invertible)"),  # the k axis collapses onto i
    ],
)
def test_degenerate_affine_is_refused(tmp_path: Path, column, fact: str) -> None:
    affine = np.eye(4)
    affine[:3, 2] = column
    # sform only: nibabel cannot even derive a qform from such an affine.
    image = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), None)
    image.set_sform(affine, code=1)
    nib.save(image, tmp_path / "x.nii.gz")
    with pytest.raises(InvalidInputError) as info:
        read_volume(tmp_path / "x.nii.gz")
    assert fact in str(info.value)


def test_zero_spacing_metaimage_is_refused_from_the_header(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16)), str(tmp_path / "x.mha"))
    data = (tmp_path / "x.mha").read_bytes().replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 0 1")
    (tmp_path / "x.mha").write_bytes(data)
    with pytest.raises(InvalidInputError, match=r"zero voxel spacing \(1.0, 0.0, 1.0\)"):
        read_volume(tmp_path / "x.mha")


# --------------------------------------------------------------------------- size limits


def _huge_nifti_header() -> bytes:
    header = nib.Nifti1Header()
    header.set_data_shape((10000, 10000, 10000))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    # Header only: a reader that tried to load the data would fail on truncation instead.
    return header.binaryblock + b"\x00" * 4 + b"\x00" * 64


def test_huge_nifti_is_refused_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(_huge_nifti_header()))
    with pytest.raises(InputTooLargeError) as info:
        read_volume(path)
    message = str(info.value)
    assert "shape 10000x10000x10000" in message and "1,000,000,000,000 voxels" in message
    assert "limit is 800,000,000" in message
    with pytest.raises(InputTooLargeError, match="10000x10000x10000"):
        read_volume_bytes(_huge_nifti_header(), filename="huge.nii")


def test_huge_metaimage_is_refused_from_the_header(tmp_path: Path) -> None:
    header = (
        "ObjectType = Image\nNDims = 3\nDimSize = 10000 10000 10000\nElementType = MET_SHORT\n"
        "ElementSpacing = 1 1 1\nElementDataFile = LOCAL\n"
    )
    with pytest.raises(InputTooLargeError, match="10000x10000x10000"):
        read_volume_bytes(header.encode(), filename="huge.mha")


def test_voxel_limit_is_configurable(ct_dir: Path) -> None:
    with pytest.raises(InputTooLargeError, match=r"shape 122x101x30 = 369,660 voxels, the limit is 100,000"):
        read_volume(ct_dir / "example_ct_sm.nii.gz", max_voxels=100_000)


# --------------------------------------------------------------------------- unreadable files


@pytest.fixture
def small_nifti_gz(tmp_path: Path) -> bytes:
    rng = np.random.default_rng(0)
    path = _save_nifti(tmp_path / "src.nii.gz", rng.integers(-1000, 1000, (20, 20, 20)).astype(np.int16))
    return path.read_bytes()


@pytest.mark.parametrize(
    ("name", "make", "error", "fact"),
    [
        ("empty.nii.gz", lambda gz: b"", InvalidInputError, "empty.nii.gz is empty (0 bytes)"),
        (
            "cut.nii.gz",
            lambda gz: gz[: len(gz) // 2],
            InvalidInputError,
            "cut.nii.gz is truncated or corrupt",
        ),
        (
            "cut.nii",
            lambda gz: gzip.decompress(gz)[:2000],
            InvalidInputError,
            "cut.nii is truncated or corrupt",
        ),
        ("head.nii.gz", lambda gz: gz[:60], InvalidInputError, "truncated or corrupt"),
        (
            "notes.nii.gz",
            lambda gz: b"hello, not an image\n",
            UnsupportedFormatError,
            "named .nii.gz but is not a NIfTI",
        ),
        (
            "notes.txt",
            lambda gz: b"hello, not an image\n",
            UnsupportedFormatError,
            "not a supported volume format",
        ),
        (
            "text.nii.gz",
            lambda gz: gzip.compress(b"x" * 1000),
            UnsupportedFormatError,
            "does not hold a NIfTI",
        ),
        (
            "bad.mha",
            lambda gz: b"ObjectType = Image\nNDims = 3\nDimSize = 4 4\n",
            InvalidInputError,
            "bad.mha",
        ),
        (
            "bad.nrrd",
            lambda gz: b"NRRD0004\ntype: nonsense\n\n",
            InvalidInputError,
            "bad.nrrd is not a readable NRRD",
        ),
    ],
)
def test_unreadable_files_raise_typed_errors(
    tmp_path: Path, small_nifti_gz: bytes, name: str, make, error, fact: str
) -> None:
    data = make(small_nifti_gz)
    path = tmp_path / name
    path.write_bytes(data)
    for call in (lambda: read_volume(path), lambda: read_volume_bytes(data, filename=name)):
        with pytest.raises(error) as info:
            call()
        assert fact in str(info.value)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
@pytest.mark.parametrize("compress", [False, True])
def test_truncated_sitk_formats(tmp_path: Path, suffix: str, compress: bool) -> None:
    image, _ = _sitk_image(np.eye(3), shape_zyx=(20, 20, 20))
    path = tmp_path / f"cut{suffix}"
    sitk.WriteImage(image, str(path), useCompression=compress)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InvalidInputError, match=f"cut{suffix} is truncated or corrupt"):
        read_volume(path)


def test_nifti_pair_header_is_refused(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Pair(np.zeros((4, 5, 6), np.int16), np.eye(4)), tmp_path / "pair.hdr")
    with pytest.raises(UnsupportedFormatError, match=r".hdr/.img pair"):
        read_volume_bytes((tmp_path / "pair.hdr").read_bytes())


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SwinxsegError, match="no such file"):
        read_volume(tmp_path / "absent.nii.gz")
