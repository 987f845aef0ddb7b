"""The job status's ``progress`` (stage, windows, queue position) and the CT image route."""

from __future__ import annotations

import gzip
import threading

import nibabel as nib
import numpy as np
from api.apikit import AFFINE, ct_array, nifti_gz_bytes
from api.test_jobs import submit, wait_status


def test_progress_from_queued_to_done(client, fake):
    fake.gate = threading.Event()
    running = submit(client).json()
    status = wait_status(client, running, "running")
    assert status["progress"] == {"stage": "inference", "windows_done": 0, "windows_total": 3, "queue_position": None}

    queued = submit(client).json()
    assert queued["progress"] == {"stage": "queued", "windows_done": 0, "windows_total": 0, "queue_position": 1}
    fake.gate.set()
    done = wait_status(client, queued, "done")
    assert done["progress"] == {"stage": "done", "windows_done": 3, "windows_total": 3, "queue_position": None}
    assert wait_status(client, running, "done")["progress"]["stage"] == "done"


def test_a_failed_job_has_no_progress(client):
    good = nifti_gz_bytes()
    job = submit(client, good[: len(good) // 2])  # a valid header, then the gzip stream ends: fails decoding
    assert job.status_code == 202
    failed = wait_status(client, job.json(), "failed")
    assert failed["progress"] is None and "truncated" in failed["error"]["detail"]


def test_image_route_serves_the_ct_on_the_masks_grid(client):
    ct = ct_array()
    job = submit(client, nifti_gz_bytes(ct), params={"image": "true"}).json()
    wait_status(client, job, "done")

    image = client.get(job["links"]["image"])
    assert image.status_code == 200 and image.headers["content-type"] == "application/gzip"
    assert 'filename="case_image.nii.gz"' in image.headers["content-disposition"]
    ct_back = nib.Nifti1Image.from_bytes(gzip.decompress(image.content))
    mask = nib.Nifti1Image.from_bytes(gzip.decompress(client.get(job["links"]["mask"]).content))
    assert ct_back.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(ct_back.dataobj), np.rint(ct).astype(np.int16))
    assert ct_back.shape == mask.shape
    np.testing.assert_allclose(ct_back.affine, mask.affine, atol=1e-5)
    np.testing.assert_allclose(ct_back.affine, AFFINE, atol=1e-5)


def test_image_route_is_404_without_image_true(client):
    job = submit(client).json()
    wait_status(client, job, "done")
    response = client.get(job["links"]["image"])
    assert response.status_code == 404
    assert "image=true" in response.json()["detail"]
