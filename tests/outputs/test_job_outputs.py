"""``POST /v1/jobs?outputs=``: one result link per output kind, the statistics in the job status
and at ``/statistics``; DICOM outputs refused at submission for a non-DICOM upload and before
inference for a series they cannot refer to; nothing half-written; the server keeps serving."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from api.apikit import FakeSegmenter, nifti_gz_bytes, serving, wait_until
from dicom_variants import write_variant, zip_series

from service.io.readers import read_volume
from service.settings import Settings

ZIP_HEADERS = {"Content-Type": "application/zip", "X-Filename": "abdomen.zip"}



def _finished(client, job: dict) -> dict:
    seen: dict = {}

    def finished() -> bool:
        seen.update(client.get(job["links"]["self"]).json())
        return seen["status"] in ("done", "failed")

    wait_until(finished, timeout=60, what=f"job {job['id']} finished")
    return seen


@pytest.fixture
def client(tmp_path):
    settings = Settings(work_dir=tmp_path / "work", queue_size=2, api_key=None, warmup=False,
                        max_upload_mb=64, model_dir=tmp_path / "no-model", storage_dir=tmp_path / "jobs")
    fake = FakeSegmenter()
    with serving(settings, fake) as test_client:
        yield test_client, fake, tmp_path / "jobs"


@pytest.fixture
def series(tmp_path, real_slices) -> Path:
    return write_variant(tmp_path / "ct", real_slices, "feet_first_supine", crop=(slice(176, 272), slice(176, 272)))


def test_every_output_has_a_link_and_downloads(client, series):
    test_client, _, _ = client
    submitted = test_client.post("/v1/jobs", params={"outputs": "seg,rtstruct,nifti", "preview": "false"},
                                 content=zip_series(series), headers=ZIP_HEADERS)
    assert submitted.status_code == 202, submitted.text
    assert submitted.json()["outputs"] == ["nifti", "rtstruct", "seg"]
    job = _finished(test_client, submitted.json())
    assert job["status"] == "done", job
    links = job["links"]["outputs"]
    assert sorted(links) == ["nifti", "rtstruct", "seg"]
    ct = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    for kind, suffix, media in (("rtstruct", "_rtstruct.dcm", "application/dicom"),
                                ("seg", "_seg.dcm", "application/dicom")):
        response = test_client.get(links[kind])
        assert response.status_code == 200 and response.headers["content-type"] == media
        assert f'filename="abdomen{suffix}"' in response.headers["content-disposition"]
        ds = pydicom.dcmread(io.BytesIO(response.content))
        assert ds.Modality == kind.upper()
        assert ds.StudyInstanceUID == ct.StudyInstanceUID and ds.PatientID == ct.PatientID
    nifti = test_client.get(links["nifti"])
    assert nifti.status_code == 200 and nifti.headers["content-type"] == "application/gzip"
    assert nifti.content == test_client.get(job["links"]["mask"]).content


def test_statistics_in_the_status_and_their_own_route(client, series):
    test_client, _, _ = client
    submitted = test_client.post("/v1/jobs", params={"preview": "false"}, content=zip_series(series), headers=ZIP_HEADERS)
    job = _finished(test_client, submitted.json())
    assert job["status"] == "done", job
    route = test_client.get(job["links"]["statistics"])
    assert route.status_code == 200
    body = route.json()
    assert body["coordinates"] == "RAS+ mm" and body["organs"] == job["statistics"]

    mask = nib.Nifti1Image.from_bytes(gzip.decompress(test_client.get(job["links"]["mask"]).content))
    ct = read_volume(series, max_voxels=10**8)
    labels = np.asarray(mask.dataobj)
    (organ,) = [o for o in body["organs"] if o["label"] == 1]  # the fake segmenter: label 1 where HU > 50
    voxels = int((labels == 1).sum())
    assert organ["voxels"] == voxels > 0
    assert organ["volume_ml"] == pytest.approx(voxels * float(np.prod(ct.spacing)) / 1000, rel=1e-6)
    assert organ["mean_hu"] == pytest.approx(float(ct.array[labels == 1].mean()), abs=1e-3)
    assert {o["label"] for o in body["organs"]} == set(np.unique(labels)) - {0}


def test_output_not_asked_for_is_404_and_unfinished_is_409(client, series):
    test_client, fake, _ = client
    import threading

    fake.gate = threading.Event()
    submitted = test_client.post("/v1/jobs", params={"preview": "false"}, content=zip_series(series), headers=ZIP_HEADERS)
    job = submitted.json()
    assert list(job["links"]["outputs"]) == ["nifti"]
    wait_until(fake.started.is_set, what="case started")
    assert test_client.get(job["links"]["statistics"]).status_code == 409
    fake.gate.set()
    job = _finished(test_client, job)
    missing = test_client.get(job["links"]["self"] + "/outputs/rtstruct")
    assert missing.status_code == 404 and "outputs=nifti" in missing.json()["detail"]


def test_dicom_outputs_of_a_nifti_upload_refused_at_submission(client):
    test_client, fake, jobs_dir = client
    before = sorted(jobs_dir.iterdir()) if jobs_dir.exists() else []
    for kind in ("rtstruct", "seg"):
        refused = test_client.post("/v1/jobs", params={"outputs": f"nifti,{kind}"}, content=nifti_gz_bytes(),
                                   headers={"Content-Type": "application/gzip", "X-Filename": "ct.nii.gz"})
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"] == "invalid_input"
        assert "needs a DICOM series input" in refused.json()["detail"]
    unknown = test_client.post("/v1/jobs", params={"outputs": "png"}, content=nifti_gz_bytes(),
                               headers={"Content-Type": "application/gzip"})
    assert unknown.status_code == 422 and "unknown output png" in unknown.json()["detail"]
    assert not fake.calls
    after = sorted(path for path in jobs_dir.iterdir() if path.is_dir()) if jobs_dir.exists() else []
    assert [p for p in after if p not in before] == []  # no job folder was created


def test_blank_uid_series_fails_the_job_before_inference(client, real_series_dir, series):
    test_client, fake, jobs_dir = client
    submitted = test_client.post("/v1/jobs", params={"outputs": "rtstruct", "preview": "false"},
                                 content=zip_series(real_series_dir), headers=ZIP_HEADERS)
    job = _finished(test_client, submitted.json())
    assert job["status"] == "failed" and job["error"]["error"] == "invalid_dicom_series"
    assert "blank SOP Instance UID" in job["error"]["detail"]
    assert not fake.calls  # refused before inference
    assert not list((jobs_dir / job["id"]).glob("*.dcm")) and not (jobs_dir / job["id"] / "mask.nii.gz").exists()
    assert test_client.get(job["links"]["outputs"]["rtstruct"]).status_code == 409
    ok = _finished(test_client, test_client.post("/v1/jobs", params={"outputs": "rtstruct", "preview": "false"},
                                                 content=zip_series(series), headers=ZIP_HEADERS).json())
    assert ok["status"] == "done"
