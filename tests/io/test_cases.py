"""Case names (the one rule batch, HTTP and training use) and batch case discovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import InvalidInputError
from service.io.cases import case_name, case_name_for, find_cases


@pytest.mark.parametrize(
    ("name", "case"),
    [
        ("CASE_0000.nii.gz", "CASE"),
        ("ct.nii", "ct"),
        ("x.NRRD", "x"),
        ("x.nhdr", "x"),
        ("series_0000.zip", "series"),
        ("upload.gz", "upload"),
        ("scan_0000", "scan"),  # no suffix: the FLARE tag still goes
        ("scan", "scan"),
        ("scan.v2", "scan.v2"),  # not an image suffix: part of the name
        ("case_0000_0000.nii", "case_0000"),  # one tag, at the end
        ("case_00001.nii", "case_00001"),
        ("_0000.nii.gz", "_0000"),  # nothing would be left
        (".nii.gz", ""),
    ],
)
def test_case_name_drops_the_image_suffix_then_the_flare_channel_tag(name: str, case: str) -> None:
    assert case_name(name) == case


@pytest.mark.parametrize(
    ("name", "case"),
    [
        ("CASE_0000.nii.gz", "CASE"),
        ("FLARE23_0042_0000.nii.gz", "FLARE23_0042"),
        ("x.nii.gz", "x"),
        ("x.NII.GZ", "x"),
        ("x.nii", "x"),
        ("x.nrrd", "x"),
        ("x.mha", "x"),
        ("x.mhd", "x"),
        ("patient_1234.nii.gz", "patient_1234"),
        ("series.zip", "series"),
    ],
)
def test_case_name_for_files(name: str, case: str) -> None:
    assert case_name_for(Path("/data") / name) == case


def test_case_name_for_dicom_folder(tmp_path: Path) -> None:
    (tmp_path / "dir_0000").mkdir()
    assert case_name_for(tmp_path / "dir_0000") == "dir_0000"


def test_find_cases(tmp_path: Path, dicom_series, axial) -> None:
    for name in ["b_0000.nii.gz", "a.nrrd", "c.mha", "d.zip", ".hidden.nii.gz", "notes.txt", "e.raw"]:
        (tmp_path / name).write_bytes(b"x")
    dicom_series(tmp_path / "ct_dicom" / "nested", axial([0, 2]))
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / ".hidden_dir").mkdir()
    found = [p.name for p in find_cases(tmp_path)]
    assert found == ["a.nrrd", "b_0000.nii.gz", "c.mha", "ct_dicom", "d.zip"]


def test_find_cases_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        find_cases(tmp_path / "absent")
