"""Issue 16 in batch mode: warnings in report.json / report.csv, refusals by setting, the reader
chosen from the bytes, and masks whose NIfTI header mirrors the input's."""

from __future__ import annotations

import csv
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

SHAPE = (40, 30, 14)  # 120 x 90 x 70 mm: few windows, body and both structures


@pytest.fixture(scope="module")
def predictor() -> FormulaPredictor:
    return FormulaPredictor(intensity_logits, out_channels=3, device=torch.device("cpu"))


def _image(array, affine, *, qcode=1, scode=1) -> nib.Nifti1Image:
    image = nib.Nifti1Image(array, None)
    image.set_qform(affine, code=qcode)
    image.set_sform(affine, code=scode)
    image.header["qform_code"], image.header["sform_code"] = qcode, scode
    return image


def _inputs(folder) -> np.ndarray:
    folder.mkdir()
    affine = make_affine(SHAPE, (3.0, 3.0, 5.0), axcodes="LPS")
    hu, _ = phantom_in_world(SHAPE, affine)
    hu[:, :3, :] = -1000  # this small field of view lies inside the body: give it some air behind
    nib.save(_image(hu, affine), folder / "clean_0000.nii.gz")
    nib.save(_image(hu, affine, qcode=0, scode=0), folder / "codes0_0000.nii.gz")
    scaled = ((np.clip(hu, -160, 240) + 160) / 400.0).astype(np.float32)
    nib.save(_image(scaled, affine), folder / "rescaled_0000.nii.gz")
    plain = _image(hu, affine).to_bytes()
    (folder / "gzname_0000.nii.gz").write_bytes(plain)  # row 4: plain bytes, gz name
    (folder / "plainname_0000.nii").write_bytes(gzip.compress(plain))  # and the reverse
    return affine


def test_batch_reports_warnings_and_reads_by_the_bytes(tmp_path, predictor):
    _inputs(tmp_path / "in")
    segmenter = Segmenter.from_predictor(Settings(), predictor)

    report = run_batch(tmp_path / "in", tmp_path / "out", segmenter.settings, segmenter=segmenter)

    by_case = {c.case: c for c in report.cases}
    assert {c: by_case[c].status for c in by_case} == dict.fromkeys(
        ("clean", "codes0", "gzname", "plainname", "rescaled"), "ok"
    )
    expected = {"clean": [], "gzname": [], "plainname": [], "codes0": ["orientation_unknown"],
                "rescaled": ["intensity_not_hu"]}
    saved = {c["case"]: c for c in json.loads((tmp_path / "out" / "report.json").read_text())["cases"]}
    rows = {r["case"]: r for r in csv.DictReader((tmp_path / "out" / "report.csv").open())}
    for case, codes in expected.items():
        assert [w["code"] for w in saved[case]["warnings"]] == codes, case
        assert rows[case]["warning_codes"] == "; ".join(codes)
        assert all(code in rows[case]["warnings"] for code in codes)
    assert "codes0_0000.nii.gz" in saved["codes0"]["warnings"][0]["message"]
    # Row 2: the mask mirrors the input header (codes 0 stay 0), so every reader puts it on the image.
    mask = nib.load(tmp_path / "out" / "codes0.nii.gz")
    assert (int(mask.header["qform_code"]), int(mask.header["sform_code"])) == (0, 0)
    np.testing.assert_allclose(mask.affine, nib.load(tmp_path / "in" / "codes0_0000.nii.gz").affine)
    # Row 4: both misnamed files give the clean case's mask.
    clean = np.asanyarray(nib.load(tmp_path / "out" / "clean.nii.gz").dataobj)
    for case in ("gzname", "plainname"):
        np.testing.assert_array_equal(np.asanyarray(nib.load(tmp_path / "out" / f"{case}.nii.gz").dataobj), clean)


def test_batch_refuses_chosen_warning_codes_and_says_why(tmp_path, predictor):
    _inputs(tmp_path / "in")
    for name in ("gzname_0000.nii.gz", "plainname_0000.nii"):
        (tmp_path / "in" / name).unlink()  # not needed here
    settings = Settings(refuse_warnings="orientation_unknown,intensity_not_hu")
    segmenter = Segmenter.from_predictor(settings, predictor)

    report = run_batch(tmp_path / "in", tmp_path / "out", settings, segmenter=segmenter)

    by_case = {c.case: c for c in report.cases}
    for case, code in (("codes0", "orientation_unknown"), ("rescaled", "intensity_not_hu")):
        assert by_case[case].status == "failed"
        assert by_case[case].error_code == "warning_refused"
        assert code in by_case[case].error
        assert [w["code"] for w in by_case[case].warnings] == [code]
        assert not (tmp_path / "out" / f"{case}.nii.gz").exists()
    assert by_case["clean"].status == "ok"
