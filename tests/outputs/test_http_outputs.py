"""``POST /v1/segment?format=rtstruct|seg``: the DICOM object for a DICOM zip; a clean 422
(before inference) for a NIfTI input or a blank-UID series; the server keeps serving."""

from __future__ import annotations

import io

import pydicom
import pytest
from api.apikit import FakeSegmenter, nifti_gz_bytes, serving
from dicom_variants import write_variant, zip_series

from service.settings import Settings


@pytest.fixture
def client(tmp_path):
    settings = Settings(work_dir=tmp_path / "work", queue_size=2, api_key=None, warmup=False,
                        max_upload_mb=64, model_dir=tmp_path / "no-model")
    fake = FakeSegmenter()
    with serving(settings, fake) as test_client:
        yield test_client, fake


@pytest.mark.parametrize("kind", ["rtstruct", "seg"])
def test_dicom_outputs_over_http(tmp_path, client, real_slices, real_series_dir, kind):
    test_client, fake = client
    series = write_variant(tmp_path / "ct", real_slices, "feet_first_supine", crop=(slice(176, 272), slice(176, 272)))
    headers = {"Content-Type": "application/zip", "X-Filename": "abdomen.zip"}
    response = test_client.post("/v1/segment", params={"format": kind}, content=zip_series(series), headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    assert f'filename="abdomen_{kind}.dcm"' in response.headers["content-disposition"]
    ds = pydicom.dcmread(io.BytesIO(response.content))
    ct = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    assert ds.Modality == kind.upper() and ds.StudyInstanceUID == ct.StudyInstanceUID

    calls = len(fake.calls)
    refused = test_client.post("/v1/segment", params={"format": kind}, content=nifti_gz_bytes(),
                               headers={"Content-Type": "application/gzip", "X-Filename": "ct.nii.gz"})
    assert refused.status_code == 422 and "needs a DICOM series input" in refused.json()["detail"]
    blank = test_client.post("/v1/segment", params={"format": kind}, content=zip_series(real_series_dir), headers=headers)
    assert blank.status_code == 422 and blank.json()["error"] == "invalid_dicom_series"
    assert len(fake.calls) == calls  # refused before inference
    assert test_client.get("/healthz").status_code == 200
    assert test_client.post("/v1/segment", content=nifti_gz_bytes(),
                            headers={"Content-Type": "application/gzip"}).status_code == 200
