"""Real CTs through the batch mode: every mask carries its input's geometry.

The formula predictor covers all three real inputs (NIfTI int32, NIfTI int16, a JPEG 2000 DICOM
series with blank UIDs); a tiny random-weight export runs the real network path on the small scan.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from synthetic import CT_DIR, intensity_logits

from service.batch import run_batch
from service.inference.predictors import FormulaPredictor
from service.io.sitk_reader import sitk_geometry_to_ras_affine
from service.segmenter import Segmenter
from service.settings import Settings

pytestmark = pytest.mark.skipif(not CT_DIR.is_dir(), reason=f"real CT fixtures not found at {CT_DIR}")

CASES = ("example_ct.nii.gz", "example_ct_sm.nii.gz", "example_ct_dicom")


def _link_cases(folder: Path, names=CASES) -> None:
    folder.mkdir()
    for name in names:
        source = (CT_DIR / name).resolve()
        (folder / name).symlink_to(source, target_is_directory=source.is_dir())


def _expected_geometry(name: str) -> tuple[tuple[int, ...], np.ndarray]:
    source = CT_DIR / name
    if source.is_dir():  # what SimpleITK reads from the series, in RAS terms
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(source)))
        image = reader.Execute()
        affine = sitk_geometry_to_ras_affine(image.GetDirection(), image.GetSpacing(), image.GetOrigin())
        return image.GetSize(), affine
    header = nib.load(source)
    return header.shape, header.affine


def _assert_geometry(outputs: Path, report) -> None:
    for case in report.cases:
        assert case.status == "ok", f"{case.case}: {case.error}"
        source_name = Path(case.input).name
        mask = nib.load(outputs / f"{case.case}.nii.gz")
        shape, affine = _expected_geometry(source_name)
        assert mask.shape == tuple(shape), case.case
        np.testing.assert_allclose(mask.affine, affine, atol=1e-4, err_msg=case.case)
        assert np.asanyarray(mask.dataobj).dtype == np.uint8


def test_real_cases_keep_their_geometry_with_a_formula_predictor(tmp_path):
    predictor = FormulaPredictor(intensity_logits, out_channels=3, device=torch.device("cpu"))
    segmenter = Segmenter.from_predictor(Settings(sw_batch_size=2), predictor)
    _link_cases(tmp_path / "in")
    report = run_batch(tmp_path / "in", tmp_path / "out", segmenter.settings, segmenter=segmenter)
    assert sorted(c.case for c in report.cases) == ["example_ct", "example_ct_dicom", "example_ct_sm"]
    _assert_geometry(tmp_path / "out", report)
    dicom = next(c for c in report.cases if c.case == "example_ct_dicom")
    assert dicom.metrics.input_shape == (512, 512, 20)
    np.testing.assert_allclose(dicom.metrics.input_spacing_mm, (0.977, 0.977, 2.0), atol=1e-3)


@pytest.fixture(scope="module")
def tiny_random_model(tmp_path_factory) -> Path:
    from model_export.export import export_model

    folder = tmp_path_factory.mktemp("tiny-random")
    export_model(checkpoint=None, preset="tiny", out_dir=folder, formats=("onnx",), random_init=True, seed=3)
    return folder


def test_tiny_random_export_segments_a_real_scan(tmp_path, tiny_random_model):
    """The real network path (ONNX Runtime, the CPU default); TorchScript parity is the export's test."""
    _link_cases(tmp_path / "in", names=("example_ct_sm.nii.gz",))
    backend = "onnx"
    settings = Settings(model_dir=tiny_random_model, backend=backend, device="cpu")
    report = run_batch(tmp_path / "in", tmp_path / "out", settings)
    _assert_geometry(tmp_path / "out", report)
    metrics = report.cases[0].metrics
    assert metrics.backend.lower().startswith(backend[:4])
    assert metrics.windows_run > 0
