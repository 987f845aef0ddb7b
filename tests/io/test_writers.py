"""Mask writer: uint8 NIfTI with qform+sform (code 1) in mm, exact affine round trip, atomic writes."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import service.io.writers as writers
from service.io.readers import read_volume
from service.io.writers import mask_to_nifti_bytes, write_mask
from service.volume import Volume


def _labels(shape=(12, 10, 8)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 14, shape).astype(np.int64)


def _oblique_affine() -> np.ndarray:
    a, b = np.radians([20.0, -35.0])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([0.8, 0.75, 2.5]) @ np.diag([-1, 1, 1])  # LAS-like, det < 0
    affine[:3, 3] = [-123.456789, 45.678901, -804.123456]
    return affine


def _check_header(image: nib.Nifti1Image) -> None:
    header = image.header
    assert image.get_data_dtype() == np.uint8
    assert int(header["sform_code"]) == 1 and int(header["qform_code"]) == 1
    assert header.get_xyzt_units()[0] == "mm"
    assert np.isnan(header["scl_slope"]) or header["scl_slope"] in (0, 1)


def test_round_trip_of_a_real_affine_is_exact(ct_dir: Path, tmp_path: Path) -> None:
    # example_seg_dicom is stored LAS: a flipped axis must survive the round trip.
    source = read_volume(ct_dir / "example_seg_dicom.nii.gz")
    out = tmp_path / "seg.nii.gz"
    write_mask(source, out)
    image = nib.load(out)
    # A NIfTI input's mask carries the input's own geometry fields (here sform code 2), verbatim.
    original = nib.load(ct_dir / "example_seg_dicom.nii.gz").header
    for key in ("sform_code", "qform_code", "srow_x", "srow_y", "srow_z", "quatern_b", "quatern_c",
                "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z", "pixdim", "xyzt_units"):
        np.testing.assert_array_equal(image.header[key], original[key], err_msg=key)
    assert image.get_data_dtype() == np.uint8
    np.testing.assert_allclose(image.affine, source.affine, rtol=0, atol=1e-6)
    np.testing.assert_allclose(image.get_qform(), source.affine, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), source.array)
    again = read_volume(out)
    np.testing.assert_allclose(again.affine, source.affine, rtol=0, atol=1e-6)
    assert again.shape == source.shape


def test_round_trip_of_an_oblique_float64_affine(tmp_path: Path) -> None:
    affine = _oblique_affine()
    labels = _labels()
    out = tmp_path / "deep" / "er" / "CASE.nii.gz"  # parent folders are created
    write_mask(Volume(labels, affine), out)
    image = nib.load(out)
    _check_header(image)
    # nibabel returns the sform, stored as float32: exact to float32 rounding of each entry.
    np.testing.assert_array_equal(image.affine, affine.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(image.affine, affine, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(image.get_qform(), affine, rtol=1e-6, atol=1e-4)  # quaternion, float32
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), labels)


def test_uncompressed_nii(tmp_path: Path) -> None:
    write_mask(Volume(_labels(), np.eye(4)), tmp_path / "m.nii")
    assert (tmp_path / "m.nii").read_bytes()[344:348] == b"n+1\x00"
    _check_header(nib.load(tmp_path / "m.nii"))


def test_mask_to_nifti_bytes() -> None:
    volume = Volume(_labels().astype(bool), _oblique_affine())
    data = mask_to_nifti_bytes(volume)
    assert data[:2] == b"\x1f\x8b"
    image = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    _check_header(image)
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), volume.array.astype(np.uint8))
    np.testing.assert_allclose(image.affine, volume.affine, rtol=1e-6, atol=1e-6)
    assert mask_to_nifti_bytes(volume) == data  # reproducible bytes


@pytest.mark.parametrize(
    ("array", "fact"),
    [
        (np.full((3, 3, 3), 256, np.int32), "0..255"),
        (np.full((3, 3, 3), -1, np.int16), "0..255"),
        (np.full((3, 3, 3), 1.5, np.float32), "whole numbers"),
    ],
)
def test_labels_must_fit_uint8(tmp_path: Path, array: np.ndarray, fact: str) -> None:
    with pytest.raises(ValueError, match=fact):
        write_mask(Volume(array, np.eye(4)), tmp_path / "m.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_suffix_must_be_nifti(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.nii\.gz or \.nii"):
        write_mask(Volume(_labels(), np.eye(4)), tmp_path / "m.nrrd")


def test_temp_name_cannot_pass_for_an_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append(Path(src).name)
        real_replace(src, dst)

    monkeypatch.setattr(writers.os, "replace", spy)
    write_mask(Volume(_labels(), np.eye(4)), tmp_path / "CASE.nii.gz")
    assert seen[0].startswith(".CASE.nii.gz.tmp-") and not seen[0].endswith(".nii.gz")
    assert [p.name for p in tmp_path.iterdir()] == ["CASE.nii.gz"]


def test_failure_mid_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = writers._write_image

    def write_half_then_fail(image, fh, *, compress):
        real_write(image, fh, compress=compress)
        fh.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(writers, "_write_image", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_mask(Volume(_labels(), np.eye(4)), tmp_path / "CASE.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_failed_rename_keeps_the_old_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "CASE.nii.gz"
    out.write_bytes(b"previous result")

    def broken_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(writers.os, "replace", broken_replace)
    with pytest.raises(OSError, match="rename failed"):
        write_mask(Volume(_labels(), np.eye(4)), out)
    assert [p.name for p in tmp_path.iterdir()] == ["CASE.nii.gz"]
    assert out.read_bytes() == b"previous result"
