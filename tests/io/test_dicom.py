"""DICOM series: the real JPEG 2000 fixture (folder and zip), ordering, geometry, refusals."""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from service.errors import DicomSeriesError, InputTooLargeError, InvalidInputError
from service.io.readers import read_volume, read_volume_bytes

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _sitk_ras_affine(image: sitk.Image) -> np.ndarray:
    affine = np.eye(4)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin())
    return affine


@pytest.fixture(scope="module")
def sitk_reference(ct_dir: Path) -> sitk.Image:
    """The fixture series as SimpleITK itself reads it (GDCM's own file ordering)."""
    folder = ct_dir / "example_ct_dicom"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _assert_matches_reference(volume, reference: sitk.Image) -> None:
    assert volume.shape == (512, 512, 20)
    np.testing.assert_allclose(volume.spacing, (0.9765625, 0.9765625, 2.0), atol=1e-6)
    np.testing.assert_allclose(volume.affine, _sitk_ras_affine(reference), atol=1e-6)
    # RAS: the LPS identity direction flips x and y.
    assert volume.affine[0, 0] < 0 and volume.affine[1, 1] < 0 and volume.affine[2, 2] > 0
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(reference).transpose(2, 1, 0))


def test_fixture_folder_matches_simpleitk(ct_dir: Path, sitk_reference: sitk.Image) -> None:
    volume = read_volume(ct_dir / "example_ct_dicom")
    _assert_matches_reference(volume, sitk_reference)
    # Spacing comes from the positions (2 mm), not SliceThickness (3 mm).
    assert volume.spacing[2] == pytest.approx(2.0)
    # Rescale applied: stored values are unsigned, HU of air is -1024.
    assert volume.array.min() == -1024
    assert volume.meta["source_format"] == "dicom"
    # First slice at the first ImagePositionPatient, converted to RAS.
    np.testing.assert_allclose(volume.affine[:3, 3], [249.51171875, 437.51171875, -804.5])


def test_fixture_zip_file_and_bytes(
    ct_dir: Path, sitk_reference: sitk.Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "series.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((ct_dir / "example_ct_dicom").iterdir()):
            zf.write(path, f"patient/ct/{path.name}")  # nested folders are fine
        zf.writestr("__MACOSX/._junk", b"junk")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    _assert_matches_reference(read_volume(archive), sitk_reference)
    volume = read_volume_bytes(archive.read_bytes(), filename="series.zip")
    _assert_matches_reference(volume, sitk_reference)
    assert list(scratch.iterdir()) == []  # extraction folders and upload copies are removed


def test_synthetic_series_is_ordered_by_position_not_file_name(tmp_path: Path, dicom_series, axial) -> None:
    hu = dicom_series(tmp_path / "s", axial([10.0, 12.5, 15.0, 17.5, 20.0, 22.5]), slice_thickness=5.0)
    volume = read_volume(tmp_path / "s")
    assert volume.shape == (16, 16, 6)
    np.testing.assert_array_equal(volume.array, hu.transpose(2, 1, 0))
    np.testing.assert_allclose(volume.spacing, (0.8, 0.7, 2.5))
    # Voxel (i, j, k) -> LPS (x0 + 0.8 i, y0 + 0.7 j, z_k) -> RAS flips x and y.
    world = volume.affine @ np.array([3, 5, 4, 1.0])
    np.testing.assert_allclose(world[:3], [10.0 - 0.8 * 3, 20.0 - 0.7 * 5, 20.0])


def test_oblique_series_geometry(tmp_path: Path, dicom_series) -> None:
    angle = np.radians(30.0)
    row = np.array([np.cos(angle), np.sin(angle), 0.0])
    col = np.array([0.0, 0.0, -1.0])  # a coronal-ish plane, rotated
    normal = np.cross(row, col)
    origin = np.array([5.0, -6.0, 70.0])
    positions = [origin + 3.0 * k * normal for k in (3, 0, 5, 1, 4, 2)]  # written out of order
    dicom_series(tmp_path / "s", positions, orientation=(*row, *col), pixel_spacing=(0.5, 0.6))
    volume = read_volume(tmp_path / "s")
    lps = origin + 2 * 0.5 * row + 7 * 0.6 * col + 4 * 3.0 * normal
    np.testing.assert_allclose((volume.affine @ [2, 7, 4, 1.0])[:3], LPS_TO_RAS @ lps, atol=1e-5)
    np.testing.assert_allclose(volume.spacing, (0.5, 0.6, 3.0), atol=1e-6)


def test_per_slice_rescale_keeps_hu(tmp_path: Path, dicom_series, axial) -> None:
    hu = dicom_series(tmp_path / "s", axial([0, 2, 4, 6]), rescale_intercept=[-1024, -1000, -1024, -1024])
    volume = read_volume(tmp_path / "s")
    np.testing.assert_array_equal(volume.array, hu.transpose(2, 1, 0))


def test_blank_and_single_series_uid_are_fine(tmp_path: Path, dicom_series, axial) -> None:
    dicom_series(tmp_path / "s", axial([0, 2, 4]), series_uid="1.2.3.4")
    assert read_volume(tmp_path / "s").shape == (16, 16, 3)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("single", ["single slice", "at least 2"]),
        ("uneven", ["uneven slice spacing", "2.000", "2.300"]),
        ("missing", ["missing slices", "5.00 mm gap", "z=4.00", "z=9.00", "2.50 mm apart"]),
        ("tilt", ["tilt", "degrees"]),
        ("orientation", ["mixed slice orientations"]),
        ("size", ["mixed slice sizes", "16x16 (5 slices)", "12x16 (1 slices)"]),
        ("two_series", ["2 DICOM series", "1.2.3.4 (3 slices)", "1.2.3.5 (3 slices)"]),
        ("duplicate", ["share a position", "z=2.00"]),
    ],
)
def test_bad_series_are_refused(tmp_path: Path, dicom_series, axial, case: str, expected: list[str]) -> None:
    folder = tmp_path / "s"
    six = axial([0, 2, 4, 6, 8, 10])
    if case == "single":
        dicom_series(folder, axial([0]))
    elif case == "uneven":
        dicom_series(folder, axial([0, 2, 4, 6.3, 8.3, 10.3]))
    elif case == "missing":
        dicom_series(folder, axial([-1.0, 1.5, 4.0, 9.0, 11.5, 14.0]))
    elif case == "tilt":
        dicom_series(folder, [(-10.0, -20.0 + 0.35 * k, 2.0 * k) for k in range(6)])  # ~10 degrees
    elif case == "orientation":
        dicom_series(folder, six, orientations={3: (1, 0, 0, 0, 0.9950042, -0.0998334)})
    elif case == "size":
        dicom_series(folder, six, sizes={2: (12, 16)})
    elif case == "two_series":
        dicom_series(folder, six, series_uid=["1.2.3.4"] * 3 + ["1.2.3.5"] * 3)
    elif case == "duplicate":
        dicom_series(folder, axial([0, 2, 2, 4, 6, 8]))
    with pytest.raises(DicomSeriesError) as info:
        read_volume(folder)
    for fact in expected:
        assert fact in str(info.value)


def test_folder_without_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DicomSeriesError, match="no DICOM files"):
        read_volume(tmp_path)


def test_zip_without_dicom(tmp_path: Path) -> None:
    archive = tmp_path / "x.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("scan.nii.gz", b"not dicom")
    with pytest.raises(DicomSeriesError, match=r"no DICOM files found in the zip \(it holds: scan.nii.gz\)"):
        read_volume(archive)


def test_corrupt_zip(tmp_path: Path) -> None:
    archive = tmp_path / "x.zip"
    archive.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(InvalidInputError, match="x.zip is not a valid zip archive"):
        read_volume(archive)


def test_single_dicom_file_is_refused(tmp_path: Path, dicom_series, axial) -> None:
    dicom_series(tmp_path / "s", axial([0, 2]))
    one = sorted((tmp_path / "s").iterdir())[0]
    with pytest.raises(DicomSeriesError, match="single DICOM file"):
        read_volume(one)
    with pytest.raises(DicomSeriesError, match="up.dcm is a single DICOM file"):
        read_volume_bytes(one.read_bytes(), filename="up.dcm")


def test_series_voxel_limit_from_headers(tmp_path: Path, dicom_series, axial) -> None:
    dicom_series(tmp_path / "s", axial([0, 2, 4, 6]))
    with pytest.raises(InputTooLargeError, match=r"16x16x4 = 1,024 voxels, the limit is 1,000"):
        read_volume(tmp_path / "s", max_voxels=1000)


def test_unreadable_dicom_files_are_skipped(tmp_path: Path, dicom_series, axial) -> None:
    hu = dicom_series(tmp_path / "s", axial([0, 2, 4]))
    (tmp_path / "s" / "broken").write_bytes(b"\x00" * 128 + b"DICM" + b"garbage" * 10)
    (tmp_path / "s" / "DICOMDIR").write_bytes(b"\x00" * 128 + b"DICM")
    volume = read_volume(tmp_path / "s")
    np.testing.assert_array_equal(volume.array, hu.transpose(2, 1, 0))


def test_multiframe_file_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "mf"
    folder.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.uint16)), str(folder / "mf.dcm"))
    with pytest.raises(DicomSeriesError, match="multi-frame"):
        read_volume(folder)


def test_zip_unpacked_size_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import service.io.dicom_series as dicom_series

    monkeypatch.setattr(dicom_series, "_ZIP_EXTRA_BYTES", 0)
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.dcm", b"\x00" * 100_000)
    with pytest.raises(InputTooLargeError, match="bomb.zip unpacks to 100,000 bytes"):
        read_volume(archive, max_voxels=1000)
