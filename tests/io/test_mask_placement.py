"""The promise "the mask opens on the image in any viewer", reader by reader.

For every geometry kind (RAS, LPS, flipped and permuted, oblique, anisotropic, prone, feet-first),
every header trouble of issue 16 and every format (NIfTI-1/2, NRRD, MetaImage, DICOM), the input
is read, a mask is made on its grid exactly as the segmenter makes it, written, and then
SimpleITK and nibabel must each place the mask exactly where they place the input; reading the
mask back gives the input's grid.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from synthetic import make_affine

from service.io.readers import read_volume
from service.io.writers import write_mask
from service.segmenter import Segmenter

SHAPE = (12, 10, 8)


def _hu(shape=SHAPE) -> np.ndarray:
    return (np.arange(np.prod(shape)).reshape(shape) % 1500 - 1000).astype(np.int16)


def _save_nifti(path: Path, affine, *, qcode=1, scode=1, qform=None, klass=nib.Nifti1Image) -> Path:
    image = klass(_hu(), None)
    image.set_qform(affine if qform is None else qform, code=qcode)
    image.set_sform(affine, code=scode)
    image.header["qform_code"], image.header["sform_code"] = qcode, scode
    image.header["pixdim"][1:4] = np.linalg.norm((affine if qform is None else qform)[:3, :3], axis=0)
    nib.save(image, path)
    return path


def _nifti(axcodes="RAS", spacing=(1.5, 1.5, 2.0), oblique=0.0, **kwargs) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        return _save_nifti(folder / "in.nii.gz", make_affine(SHAPE, spacing, axcodes=axcodes, oblique_deg=oblique), **kwargs)
    return build


def _q3_s1(folder: Path) -> Path:  # issue 16 row 1
    q = make_affine(SHAPE, (3.0, 3.0, 3.0), axcodes="LPS")
    s = q.copy()
    s[:3, :3] = np.sign(q[:3, :3])
    return _save_nifti(folder / "in.nii.gz", s, qform=q)


def _gz_named_plain(folder: Path) -> Path:  # row 4
    path = _save_nifti(folder / "tmp.nii", make_affine(SHAPE, (2.0, 2.0, 3.0), axcodes="LPS"))
    target = folder / "in.nii.gz"
    target.write_bytes(path.read_bytes())
    path.unlink()
    return target


def _plain_named_gz(folder: Path) -> Path:  # row 4
    path = _save_nifti(folder / "tmp.nii", make_affine(SHAPE, (2.0, 2.0, 3.0), axcodes="RPI"))
    target = folder / "in.nii"
    target.write_bytes(gzip.compress(path.read_bytes()))
    path.unlink()
    return target


def _sitk_file(suffix: str, oblique: float) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        affine = make_affine(SHAPE, (0.8, 0.9, 2.5), axcodes="LPS", oblique_deg=oblique)
        image = sitk.GetImageFromArray(_hu().transpose(2, 1, 0))
        image.CopyInformation(_lps_image(affine))
        path = folder / f"in{suffix}"
        sitk.WriteImage(image, str(path))
        return path
    return build


def _dicom(orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), z=None, retag=None) -> Callable[..., Path]:
    def build(folder: Path, dicom_series, retag_spacing) -> Path:
        row, col = np.array(orientation[:3]), np.array(orientation[3:])
        normal = np.cross(row, col)
        heights = z if z is not None else [2.5 * k for k in range(6)]
        dicom_series(folder / "in", [np.array([-10.0, 20.0, 30.0]) + h * normal for h in heights],
                     orientation=orientation, size=(10, 12), pixel_spacing=(0.8, 0.7))
        if retag is not None:
            retag_spacing(folder / "in", retag)
        return folder / "in"
    return build


CASES: dict[str, Callable] = {
    "nifti_ras": _nifti("RAS"),
    "nifti_lps": _nifti("LPS"),
    "nifti_flipped_permuted": _nifti("SLA", (2.0, 1.6, 1.4)),
    "nifti_oblique": _nifti("RAS", (1.7, 1.7, 1.7), oblique=20.0),
    "nifti_anisotropic": _nifti("LPS", (0.7, 0.7, 5.0)),
    "nifti_prone": _nifti("LAI"),
    "nifti_feet_first": _nifti("RPI"),
    "nifti2_oblique": _nifti("LPS", (0.9, 0.9, 3.0), oblique=12.0, klass=nib.Nifti2Image),
    "nifti_qform_only": _nifti("LPS", scode=0),
    "nifti_sform_aligned_only": _nifti("LPS", qcode=0, scode=2),
    "row1_qform_3mm_sform_1mm": _q3_s1,
    "row2_codes_0": _nifti("LPS", qcode=0, scode=0),
    "row4_gz_named_plain": _gz_named_plain,
    "row4_plain_named_gz": _plain_named_gz,
    "nrrd_oblique": _sitk_file(".nrrd", 15.0),
    "mha_lps": _sitk_file(".mha", 0.0),
    "dicom_axial": _dicom(),
    "dicom_prone": _dicom((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0)),
    "dicom_feet_first": _dicom((-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)),
    "dicom_oblique": _dicom((0.866025, 0.5, 0.0, 0.0, 0.0, -1.0)),
    "row7_dicom_rounded_positions": _dicom(z=[round(0.625 * k, 2) for k in range(40)]),
}


def _sitk_read(path: Path) -> sitk.Image:
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path)))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def _sitk_input(path: Path, case: str) -> sitk.Image:
    """SimpleITK's reading of the input. It picks NIfTI's compression by the name, so a
    misnamed file is shown to it under its right name; it cannot read NIfTI-2 at all, so there
    the input's geometry as nibabel reads it (converted to LPS) stands in for it."""
    if case.startswith("row4"):
        data = path.read_bytes()
        path = path.with_name("renamed.nii.gz" if data[:2] == b"\x1f\x8b" else "renamed.nii")
        path.write_bytes(data)
    if case.startswith("nifti2"):
        with pytest.raises(RuntimeError):
            sitk.ReadImage(str(path))
        return _lps_image(_nibabel_affine(path))
    return _sitk_read(path)


def _lps_image(affine: np.ndarray) -> sitk.Image:
    image = sitk.Image(list(SHAPE), sitk.sitkUInt8)
    lps = np.diag([-1.0, -1.0, 1.0])
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((lps @ affine[:3, :3] / spacing).ravel().tolist())
    image.SetOrigin((lps @ affine[:3, 3]).tolist())
    return image


def _nibabel_affine(path: Path) -> np.ndarray:
    """nibabel's placement of a NIfTI file, whatever its name says about compression."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    klass = nib.Nifti2Image if int.from_bytes(data[:4], "little") == 540 else nib.Nifti1Image
    return klass.from_bytes(data).affine


def _mask_of(path: Path, out: Path):
    volume = read_volume(path)
    labels = (np.indices(volume.shape).sum(axis=0) % 4).astype(np.uint8)
    mask = Segmenter._as_mask(volume, labels)  # exactly how the segmenter puts labels on the input grid
    write_mask(mask, out)
    return volume, labels


def _assert_same_sitk_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("case", list(CASES))
def test_each_reader_places_the_mask_where_it_places_the_input(case, tmp_path, dicom_series, retag_spacing) -> None:
    build = CASES[case]
    path = build(tmp_path, dicom_series, retag_spacing) if case.startswith(("dicom", "row7")) else build(tmp_path)
    out = tmp_path / "mask.nii.gz"
    volume, labels = _mask_of(path, out)

    _assert_same_sitk_geometry(_sitk_input(path, case), sitk.ReadImage(str(out)))
    # nibabel reads only NIfTI; for the other formats it must agree with our (SimpleITK-based) reading.
    nib_input = _nibabel_affine(path) if ".nii" in path.name else volume.affine
    np.testing.assert_allclose(nib.load(out).affine, nib_input, atol=1e-4)
    again = read_volume(out)
    np.testing.assert_allclose(again.affine, volume.affine, atol=1e-5)
    np.testing.assert_array_equal(again.array, labels)


def test_mask_of_a_nifti_copies_the_input_header_geometry_verbatim(tmp_path) -> None:
    path = _q3_s1(tmp_path)
    _mask_of(path, tmp_path / "mask.nii")
    original, mask = nib.load(path).header, nib.load(tmp_path / "mask.nii").header
    for key in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x",
                "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z", "pixdim", "xyzt_units"):
        np.testing.assert_array_equal(mask[key], original[key], err_msg=key)


def test_imager_pixel_spacing_series_mask_is_placed_by_the_true_spacing(tmp_path, dicom_series, retag_spacing) -> None:
    """SimpleITK alone reads this series at 1 mm (it ignores ImagerPixelSpacing), so the mask,
    at the true spacing, cannot match SimpleITK's own reading of the input; nibabel and our
    reader agree on the true grid."""
    path = _dicom(retag=(0x0018, 0x1164))(tmp_path, dicom_series, retag_spacing)
    volume, _ = _mask_of(path, tmp_path / "mask.nii.gz")
    np.testing.assert_allclose(volume.spacing, (0.8, 0.7, 2.5))
    np.testing.assert_allclose(nib.load(tmp_path / "mask.nii.gz").affine, volume.affine, atol=1e-5)
    np.testing.assert_allclose(sitk.ReadImage(str(tmp_path / "mask.nii.gz")).GetSpacing(), (0.8, 0.7, 2.5), rtol=1e-6)


def test_real_dicom_fixture_mask_opens_on_the_series(ct_dir, tmp_path) -> None:
    path = ct_dir / "example_ct_dicom"
    volume, _ = _mask_of(path, tmp_path / "mask.nii.gz")
    _assert_same_sitk_geometry(_sitk_read(path), sitk.ReadImage(str(tmp_path / "mask.nii.gz")))
    np.testing.assert_allclose(nib.load(tmp_path / "mask.nii.gz").affine, volume.affine, atol=1e-4)
