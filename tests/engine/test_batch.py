"""Batch mode: FLARE naming, per-case report, bad cases reported while good ones are segmented."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from synthetic import intensity_logits, make_affine, phantom_in_world

from service.batch import run_batch
from service.inference.predictors import FormulaPredictor
from service.segmenter import Segmenter
from service.settings import Settings


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    predictor = FormulaPredictor(intensity_logits, out_channels=3, device=torch.device("cpu"))
    return Segmenter.from_predictor(Settings(max_input_voxels=50_000_000), predictor)


def _save(path, array, affine):
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def _good_case(path, axcodes="LPS"):
    shape = (90, 70, 40)
    affine = make_affine(shape, (3.0, 3.0, 5.0), axcodes=axcodes)
    hu, _ = phantom_in_world(shape, affine)
    _save(path, hu, affine)
    return shape, affine


def _write_bad_cases(folder):
    (folder / "empty_0000.nii.gz").write_bytes(b"")
    good_bytes = gzip.compress(nib.Nifti1Image(np.zeros((20, 20, 20), np.int16), np.eye(4)).to_bytes())
    (folder / "truncated_0000.nii.gz").write_bytes(good_bytes[: len(good_bytes) // 2])
    _save(folder / "flat_0000.nii.gz", np.zeros((32, 32), np.int16), np.eye(4))
    (folder / "text_0000.nii.gz").write_text("this is not an image\n")
    nan = np.full((20, 20, 20), np.nan, np.float32)
    _save(folder / "nans_0000.nii.gz", nan, np.eye(4))
    header = nib.Nifti1Header()
    header.set_data_shape((10_000, 10_000, 10_000))
    header.set_data_dtype(np.int16)
    (folder / "huge_0000.nii").write_bytes(header.binaryblock + b"\x00" * 4 + b"\x00" * 64)
    one_slice = folder / "one_slice_dicom"
    one_slice.mkdir()
    _write_single_dicom(one_slice / "slice0.dcm")


def _write_single_dicom(path):
    import SimpleITK as sitk

    slice2d = sitk.GetImageFromArray(np.zeros((16, 16), np.int16))
    for tag, value in (("0008|0060", "CT"), ("0020|0032", "0\\0\\0"), ("0020|0037", "1\\0\\0\\0\\1\\0")):
        slice2d.SetMetaData(tag, value)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(path))
    writer.Execute(slice2d)


def test_bad_cases_are_reported_and_good_ones_segmented(tmp_path, segmenter):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    good_shape, good_affine = _good_case(inputs / "good_0000.nii.gz")
    _good_case(inputs / "plain.nii.gz", axcodes="RAS")
    _write_bad_cases(inputs)

    report = run_batch(inputs, outputs, segmenter.settings, segmenter=segmenter)

    by_case = {c.case: c for c in report.cases}
    assert by_case["good"].status == "ok" and by_case["plain"].status == "ok"
    mask = nib.load(outputs / "good.nii.gz")
    assert mask.shape == good_shape
    np.testing.assert_allclose(mask.affine, good_affine, atol=1e-5)
    assert np.asanyarray(mask.dataobj).dtype == np.uint8
    assert (outputs / "plain.nii.gz").exists()

    expected_bad = {"empty", "truncated", "flat", "text", "nans", "huge", "one_slice_dicom"}
    for name in expected_bad:
        case = by_case[name]
        assert case.status == "failed", name
        assert case.error and "Traceback" not in case.error, name
        assert case.error_code not in ("", "internal_error"), f"{name}: {case.error_code} {case.error}"
        assert not (outputs / f"{name}.nii.gz").exists(), name
    # nothing half-written anywhere in the output folder
    assert sorted(p.name for p in outputs.iterdir()) == sorted(["good.nii.gz", "plain.nii.gz", "report.json", "report.csv", "statistics.csv"])

    saved = json.loads((outputs / "report.json").read_text())
    assert saved["counts"] == {"ok": 2, "failed": len(expected_bad), "skipped": 0}
    csv_lines = (outputs / "report.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 1 + len(report.cases)
    good = by_case["good"].metrics
    assert good.windows_run > 0 and good.total_seconds > 0
    assert set(good.seconds) == {"load", "preprocess", "infer", "postprocess", "write"}


def test_skip_existing_and_exit_status(tmp_path, segmenter):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    _good_case(inputs / "case_0000.nii.gz")
    first = run_batch(inputs, outputs, segmenter.settings, segmenter=segmenter)
    assert [c.status for c in first.cases] == ["ok"]
    second = run_batch(inputs, outputs, segmenter.settings, segmenter=segmenter, skip_existing=True)
    assert [c.status for c in second.cases] == ["skipped"]
    assert not second.failed
