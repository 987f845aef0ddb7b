"""Issue 16: inputs as they arrive from scanners and archives, one test per kind of header trouble.

Each test's expected value is the right outcome: read correctly with a warning that names the
doubt, or refused with a message that names the bad value. NIfTI inputs are built from
example_ct_sm (real HU) or small arrays; DICOM series with the synthetic series writer.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from service.case_warnings import WARNING_CODES, warnings_of
from service.errors import DicomSeriesError, WarningRefusedError
from service.input_checks import screen_input
from service.io.readers import read_volume, read_volume_bytes

REPO = Path(__file__).resolve().parents[2]


def codes(volume) -> list[str]:
    return [w.code for w in warnings_of(volume)]


@pytest.fixture(scope="module")
def ct_sm(ct_dir: Path) -> nib.Nifti1Image:
    return nib.load(ct_dir / "example_ct_sm.nii.gz")


def _nifti(array: np.ndarray, *, qform=None, qcode=1, sform=None, scode=1, pixdim=None) -> nib.Nifti1Image:
    image = nib.Nifti1Image(array, None)
    if qform is not None:
        image.set_qform(qform, code=qcode)
    if sform is not None:
        image.set_sform(sform, code=scode)
    image.header["qform_code"], image.header["sform_code"] = qcode, scode
    if pixdim is not None:
        image.header["pixdim"][1:4] = pixdim
    return image


# --------------------------------------------------------------------------- row 1: qform vs sform


def test_row1_qform_3mm_sform_1mm_is_read_by_the_sform_with_a_warning(ct_sm, tmp_path: Path) -> None:
    true_affine = ct_sm.affine  # 3 mm
    unit = true_affine.copy()
    unit[:3, :3] = np.sign(true_affine[:3, :3])  # same origin, 1 mm scales
    path = tmp_path / "q3_s1.nii.gz"
    nib.save(_nifti(np.asanyarray(ct_sm.dataobj), qform=true_affine, sform=unit), path)

    volume = read_volume(path)

    np.testing.assert_allclose(volume.affine, unit, atol=1e-4)  # the documented rule: sform first
    assert codes(volume) == ["qform_sform_disagree"]
    message = warnings_of(volume)[0].message
    assert "q3_s1.nii.gz" in message and "1x1x1 mm" in message and "3x3x3 mm" in message


def test_row1_equal_qform_and_sform_or_float32_noise_do_not_warn(ct_sm, tmp_path: Path) -> None:
    affine = ct_sm.affine.copy()
    noisy = affine.copy()
    noisy[:3, 3] += 1e-3  # far below a tenth of a 3 mm voxel
    path = tmp_path / "equal.nii"
    nib.save(_nifti(np.asanyarray(ct_sm.dataobj), qform=affine, sform=noisy), path)
    assert codes(read_volume(path)) == []


def test_row1_qform_only_or_sform_only_place_by_the_one_that_is_set(ct_sm, tmp_path: Path) -> None:
    affine = ct_sm.affine
    other = np.diag([2.0, 2.0, 2.0, 1.0])
    array = np.asanyarray(ct_sm.dataobj)
    nib.save(_nifti(array, qform=affine, qcode=1, sform=other, scode=0), tmp_path / "q.nii")
    nib.save(_nifti(array, qform=other, qcode=0, sform=affine, scode=2), tmp_path / "s.nii")
    for name in ("q.nii", "s.nii"):
        volume = read_volume(tmp_path / name)
        np.testing.assert_allclose(volume.affine, affine, atol=1e-4)
        assert codes(volume) == []


# --------------------------------------------------------------------------- row 2: codes 0


def test_row2_orientation_unknown_is_a_warning_and_refusable(ct_sm, tmp_path: Path) -> None:
    path = tmp_path / "codes0.nii.gz"
    nib.save(_nifti(np.asanyarray(ct_sm.dataobj), qcode=0, scode=0, pixdim=(3.0, 3.0, 3.0)), path)

    volume = read_volume(path)

    assert codes(volume) == ["orientation_unknown"]
    np.testing.assert_allclose(volume.spacing, (3.0, 3.0, 3.0))
    np.testing.assert_allclose(volume.affine, nib.load(path).affine)  # nibabel's pixdim convention
    with pytest.raises(WarningRefusedError, match="orientation_unknown"):
        screen_input(volume, refuse={"orientation_unknown"})
    assert codes(screen_input(volume, refuse={"intensity_not_hu"})) == ["orientation_unknown"]


# --------------------------------------------------------------------------- row 3: not HU


def test_row3_real_ct_in_hu_passes_the_plausibility_rule(ct_dir: Path) -> None:
    for name in ("example_ct_sm.nii.gz", "example_ct_dicom"):
        assert codes(screen_input(read_volume(ct_dir / name))) == []


@pytest.mark.parametrize(
    ("kind", "transform"),
    [
        ("window_0_1", lambda hu: (np.clip(hu, -160, 240) + 160) / 400.0),
        ("minus1_1", lambda hu: np.clip(hu, -1000, 1000) / 1000.0 * 0.49),
        ("raw_unsigned", lambda hu: hu + 1024.0),
        ("pet_like", lambda hu: np.clip(hu, 0, None) / 50.0),
    ],
)
def test_row3_intensities_that_are_not_hu_warn_and_can_be_refused(ct_sm, tmp_path: Path, kind, transform) -> None:
    hu = np.asanyarray(ct_sm.dataobj).astype(np.float32)
    path = tmp_path / f"{kind}.nii.gz"
    nib.save(_nifti(transform(hu).astype(np.float32), qform=ct_sm.affine, sform=ct_sm.affine), path)

    volume = screen_input(read_volume(path))

    assert codes(volume) == ["intensity_not_hu"]
    assert f"{kind}.nii.gz" in warnings_of(volume)[0].message
    with pytest.raises(WarningRefusedError, match="intensity_not_hu"):
        screen_input(read_volume(path), refuse={"intensity_not_hu"})


# --------------------------------------------------------------------------- row 4: bytes decide


@pytest.mark.parametrize("version", [1, 2])
def test_row4_reader_follows_the_bytes_not_the_name(ct_sm, tmp_path: Path, version: int) -> None:
    klass = nib.Nifti2Image if version == 2 else nib.Nifti1Image
    image = klass(np.asanyarray(ct_sm.dataobj), ct_sm.affine)
    plain = image.to_bytes()
    files = {
        "gz_named_plain.nii.gz": plain,
        "plain_named_gz.nii": gzip.compress(plain),
        "gz_named_plain_0000.nii.gz": plain,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        for volume in (read_volume(tmp_path / name), read_volume_bytes(data, filename=name)):
            np.testing.assert_array_equal(volume.array, np.asanyarray(ct_sm.dataobj))
            np.testing.assert_allclose(volume.affine, ct_sm.affine, atol=1e-5)
            assert volume.meta["nifti_geometry"].version == version


# --------------------------------------------------------------------------- rows 5-7: DICOM


def _z(step: float, count: int, start: float = 0.0) -> list[float]:
    return [start + step * k for k in range(count)]


def test_row5_two_reconstructions_under_one_uid_are_refused_naming_both(tmp_path, dicom_series, axial) -> None:
    folder = tmp_path / "study"
    uid = "1.2.826.0.1.3680043.2.1125.77"
    dicom_series(folder / "smooth", axial(_z(3.0, 6)), series_uid=uid, seed=1,
                 extra_tags={"0018|1210": "B30f", "0020|0011": "3"})
    dicom_series(folder / "sharp", axial(_z(3.0, 6, start=1.5)), series_uid=uid, seed=2,
                 extra_tags={"0018|1210": "B70f", "0020|0011": "3"})
    with pytest.raises(DicomSeriesError) as caught:
        read_volume(folder)
    message = str(caught.value)
    assert "2 DICOM series" in message
    assert "kernel B30f (6 slices)" in message and "kernel B70f (6 slices)" in message


@pytest.mark.parametrize(
    ("second_tags", "expected"),
    [
        ({"0020|0011": "4"}, ["series number 3 (6 slices)", "series number 4 (6 slices)"]),
        ({"0018|0050": "1.5"}, ["slice thickness 1.5", "slice thickness 3"]),
        ({}, ["InstanceNumbers occur more than once", "instance 1"]),  # nothing but the numbering tells
    ],
)
def test_row5_other_ways_two_reconstructions_show(tmp_path, dicom_series, axial, second_tags, expected) -> None:
    folder = tmp_path / "study"
    base = {"0018|1210": "B30f", "0020|0011": "3", "0018|0050": "3"}
    dicom_series(folder / "a", axial(_z(3.0, 6)), seed=1, extra_tags=base)
    dicom_series(folder / "b", axial(_z(3.0, 6, start=1.5)), seed=2, extra_tags={**base, **second_tags})
    with pytest.raises(DicomSeriesError) as caught:
        read_volume(folder)
    for fact in expected:
        assert fact in str(caught.value)


def test_row6_missing_pixel_spacing_is_refused(tmp_path, dicom_series, axial, retag_spacing) -> None:
    dicom_series(tmp_path / "s", axial(_z(3.0, 5)), pixel_spacing=(3.0, 3.0))
    retag_spacing(tmp_path / "s", (0x0028, 0x0031))
    with pytest.raises(DicomSeriesError, match=r"no PixelSpacing \(0028,0030\)"):
        read_volume(tmp_path / "s")


def test_row6_imager_pixel_spacing_is_used_and_said(tmp_path, dicom_series, axial, retag_spacing) -> None:
    dicom_series(tmp_path / "s", axial(_z(3.0, 5)), pixel_spacing=(3.0, 2.5))
    retag_spacing(tmp_path / "s", (0x0018, 0x1164))
    volume = read_volume(tmp_path / "s")
    np.testing.assert_allclose(volume.spacing, (3.0, 2.5, 3.0))  # GDCM alone would say 1 x 1 x 3
    assert codes(volume) == ["pixel_spacing_substituted"]
    assert "ImagerPixelSpacing" in warnings_of(volume)[0].message


def test_row7_positions_rounded_to_a_hundredth_are_uniform(tmp_path, dicom_series, axial) -> None:
    z = [round(0.625 * k, 2) for k in range(140)]  # gaps of 0.62 and 0.63 mm
    assert {round(g, 2) for g in np.diff(z)} == {0.62, 0.63}
    dicom_series(tmp_path / "s", axial(z), size=(8, 8))
    volume = read_volume(tmp_path / "s")
    assert volume.shape == (8, 8, 140)
    assert volume.spacing[2] == pytest.approx((z[-1] - z[0]) / 139, abs=1e-6)
    # Every slice within a hundredth of a mm (the rounding, plus the grid's slope) of its position.
    placed = (volume.affine @ np.c_[np.zeros((140, 2)), np.arange(140), np.ones(140)].T)[2]
    assert np.max(np.abs(placed - np.array(z))) < 0.011


@pytest.mark.parametrize(
    ("z", "fact"),
    [
        ([round(0.625 * k, 2) + (0.06 if k == 70 else 0.0) for k in range(140)], "uneven slice spacing"),
        ([0.625 * k for k in range(70)] + [0.625 * k + 0.3 for k in range(70, 140)], "uneven slice spacing"),
        ([0.625 * k for k in range(140) if k != 50], "missing slices"),
    ],
    ids=["one_slice_off", "step_in_the_middle", "gap"],
)
def test_row7_real_unevenness_and_gaps_are_still_refused(tmp_path, dicom_series, axial, z, fact) -> None:
    dicom_series(tmp_path / "s", axial(z), size=(8, 8))
    with pytest.raises(DicomSeriesError, match=fact):
        read_volume(tmp_path / "s")


# --------------------------------------------------------------------------- also: modality


@pytest.mark.parametrize("modality", ["PT", "MR"])
def test_non_ct_modality_warns_and_can_be_refused(tmp_path, dicom_series, axial, modality) -> None:
    dicom_series(tmp_path / "s", axial(_z(2.0, 4)), modality=modality)
    volume = read_volume(tmp_path / "s")
    assert "non_ct_modality" in codes(volume)
    assert f"Modality is {modality}" in warnings_of(volume)[0].message
    with pytest.raises(WarningRefusedError, match="non_ct_modality"):
        screen_input(volume, refuse={"non_ct_modality"})


def test_every_warning_code_is_documented() -> None:
    docs = (REPO / "docs" / "SERVICE.md").read_text()
    missing = [code for code in WARNING_CODES if f"| `{code}` |" not in docs]
    assert not missing, f"document these warning codes in docs/SERVICE.md: {missing}"
