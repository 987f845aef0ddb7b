"""``swinxseg batch --output nifti,rtstruct,seg``: DICOM outputs for DICOM cases, per-case errors
for the others (NIfTI input, blank-UID series), organ statistics in the report."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from dicom_variants import write_variant
from synthetic import intensity_logits

from service.batch import run_batch
from service.inference.predictors import FormulaPredictor
from service.segmenter import Segmenter
from service.settings import Settings


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    predictor = FormulaPredictor(intensity_logits, out_channels=3, device=torch.device("cpu"))
    return Segmenter.from_predictor(Settings(max_input_voxels=50_000_000), predictor)


def test_batch_writes_each_output_and_refuses_per_case(tmp_path, segmenter, real_series_dir, real_slices):
    inputs = tmp_path / "in"
    write_variant(inputs / "prone_ct", real_slices, "prone", crop=(slice(176, 304), slice(176, 304)))
    (inputs / "blank_uids").symlink_to(real_series_dir, target_is_directory=True)
    (inputs / "nifti_0000.nii.gz").symlink_to(real_series_dir.parent / "example_ct_sm.nii.gz")
    out = tmp_path / "out"
    report = run_batch(inputs, out, Settings(), segmenter=segmenter, outputs=("nifti", "rtstruct", "seg"))
    by_case = {case.case: case for case in report.cases}
    ok = by_case["prone_ct"]
    assert ok.status == "ok", ok.error
    assert sorted(p.name for p in out.glob("prone_ct*")) == ["prone_ct.nii.gz", "prone_ct_rtstruct.dcm", "prone_ct_seg.dcm"]
    assert pydicom.dcmread(ok.outputs["rtstruct"]).Modality == "RTSTRUCT"
    assert pydicom.dcmread(ok.outputs["seg"]).Modality == "SEG"
    assert by_case["blank_uids"].status == "failed" and "blank SOP Instance UID" in by_case["blank_uids"].error
    assert by_case["nifti"].status == "failed" and "needs a DICOM series input" in by_case["nifti"].error
    assert not list(out.glob("blank_uids*")) and not list(out.glob("nifti*"))
    mask = np.asarray(nib.load(ok.outputs["nifti"]).dataobj)
    saved = json.loads((out / "report.json").read_text())
    stats = {s["label"]: s for s in next(c for c in saved["cases"] if c["case"] == "prone_ct")["statistics"]}
    assert stats and {label: s["voxels"] for label, s in stats.items()} == {
        int(v): int((mask == v).sum()) for v in np.unique(mask) if v}
    rows = list(csv.DictReader((out / "statistics.csv").open()))
    assert {int(r["label"]) for r in rows if r["case"] == "prone_ct"} == set(stats)
