"""The jobs API: 202 submit, polling, mask/preview downloads, 404/409/410, delete and expiry."""

from __future__ import annotations

import gzip
import threading

import nibabel as nib
import numpy as np
from api.apikit import ct_array, metric_value, nifti_gz_bytes, post_ct, serving, wait_until, work_files


def submit(client, data: bytes | None = None, *, params: dict | None = None, **kwargs):
    # Previews cost matplotlib time: only the tests about them ask for one.
    return post_ct(client, data, path="/v1/jobs", params={"preview": "false", **(params or {})}, **kwargs)


def wait_status(client, job: dict, status: str) -> dict:
    seen: dict = {}

    def reached() -> bool:
        seen.update(client.get(job["links"]["self"]).json())
        return seen["status"] == status

    wait_until(reached, what=f"job {job['id']} {status}")
    return seen


def test_submit_poll_and_download(client):
    response = submit(client, params={"filename": "case_3.nii.gz", "overlap": 0.3, "preview": "true"})

    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] in {"queued", "running", "done"}
    assert response.headers["location"] == job["links"]["self"] == f"/v1/jobs/{job['id']}"
    done = wait_status(client, job, "done")
    assert done["metrics"]["input_shape"] == list(ct_array().shape)
    assert done["error"] is None and done["finished_at"] and done["expires_at"]

    mask = client.get(job["links"]["mask"])
    assert mask.status_code == 200
    assert mask.headers["content-type"] == "application/gzip"
    assert 'filename="case_3_mask.nii.gz"' in mask.headers["content-disposition"]
    image = nib.Nifti1Image.from_bytes(gzip.decompress(mask.content))
    np.testing.assert_array_equal(np.asarray(image.dataobj), (ct_array() > 50).astype(np.uint8))

    preview = client.get(job["links"]["preview"])
    assert preview.status_code == 200
    assert preview.content.startswith(b"\x89PNG")


def test_mask_of_an_unfinished_job_is_409(client, fake):
    fake.gate = threading.Event()
    job = submit(client).json()
    wait_status(client, job, "running")

    response = client.get(job["links"]["mask"])
    assert response.status_code == 409
    assert response.json()["error"] == "conflict"
    assert client.get(job["links"]["preview"]).status_code == 409
    fake.gate.set()
    wait_status(client, job, "done")


def test_unknown_job_is_404(client):
    for path in ("/v1/jobs/0123456789abcdef0123456789abcdef", "/v1/jobs/nope/mask", "/v1/jobs/nope/preview.png"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"] == "not_found"
    assert client.delete("/v1/jobs/nope").status_code == 404


def test_failed_job_reports_its_error(client):
    # What the format sniff refuses is refused at submission, without a job...
    refused = submit(client, b"not a volume", headers={"Content-Type": "application/octet-stream"})
    assert refused.status_code == 415 and refused.json()["error"] == "unsupported_format"
    assert metric_value(client, "swinxseg_failures_total", reason="unsupported_format") == 1
    # ...what only decoding finds fails the job.
    data = nifti_gz_bytes()
    job = submit(client, data[: len(data) // 2]).json()
    failed = wait_status(client, job, "failed")

    assert failed["error"]["error"] == "invalid_input"
    assert client.get(job["links"]["mask"]).status_code == 409
    assert metric_value(client, "swinxseg_failures_total", reason="invalid_input") == 1


def test_unexpected_error_in_a_job_hides_the_details(client, fake):
    fake.error = RuntimeError("secret")
    failed = wait_status(client, submit(client).json(), "failed")
    assert failed["error"] == {"error": "internal_error", "detail": "internal error; the server log has the details"}


def test_delete_removes_the_job_and_its_files(client):
    job = submit(client).json()
    wait_status(client, job, "done")
    assert work_files(client)  # the mask

    response = client.delete(job["links"]["self"])
    assert response.status_code == 204 and response.content == b""
    assert client.get(job["links"]["self"]).status_code == 404
    assert work_files(client) == []


def test_delete_a_queued_job_gives_its_queue_place_back(make_settings, fake):
    fake.gate = threading.Event()
    with serving(make_settings(queue_size=1), fake) as client:
        running = submit(client).json()
        wait_status(client, running, "running")
        queued = submit(client).json()
        assert submit(client).status_code == 429

        assert client.delete(queued["links"]["self"]).status_code == 204
        wait_until(lambda: client.app.state.runtime.guard.waiting == 0, what="queue place back")
        again = submit(client)
        assert again.status_code == 202
        fake.gate.set()
        wait_status(client, again.json(), "done")
        assert len(fake.calls) == 2  # the deleted job never ran


def test_preview_false_means_no_preview(client):
    job = submit(client, params={"preview": "false"}).json()
    wait_status(client, job, "done")
    assert client.get(job["links"]["preview"]).status_code == 404
    assert client.get(job["links"]["mask"]).status_code == 200


def test_results_expire_after_the_ttl(client):
    job = submit(client).json()
    wait_status(client, job, "done")
    store = client.app.state.runtime.jobs
    finished = store.clock()
    store.clock = lambda: finished + store.ttl_s + 1

    assert store.reap() == [job["id"]]
    assert work_files(client) == []
    response = client.get(job["links"]["self"])
    assert response.status_code == 410
    assert response.json()["error"] == "gone"
    assert client.get(job["links"]["mask"]).status_code == 410


def test_reaper_runs_on_its_own(make_settings, fake):
    with serving(make_settings(job_ttl_s=1), fake) as client:
        job = submit(client).json()
        wait_status(client, job, "done")
        wait_until(lambda: client.get(job["links"]["self"]).status_code == 410, timeout=5, what="expiry")
        assert work_files(client) == []


def test_submit_checks_input_like_segment(client):
    assert submit(client, params={"overlap": 2}).status_code == 422
    assert client.post("/v1/jobs", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 415
    too_big = client.post(
        "/v1/jobs", content=b"\0" * (2**20 + 10), headers={"Content-Type": "application/octet-stream"}
    )
    assert too_big.status_code == 413
    assert work_files(client) == []


def test_shutdown_cancels_queued_jobs_waits_for_the_running_one_and_removes_files(make_settings, fake):
    fake.gate = threading.Event()
    with serving(make_settings(), fake) as client:
        done = submit(client).json()
        fake.gate.set()
        wait_status(client, done, "done")
        fake.gate.clear()
        running = submit(client).json()
        wait_status(client, running, "running")
        submit(client)  # queued behind it
        work_dir = client.app.state.runtime.work_dir
        threading.Timer(0.3, fake.gate.set).start()  # the running case ends during shutdown
    assert not work_dir.exists()
    assert len(fake.calls) == 2


def test_job_links_are_usable(client):
    job = submit(client).json()
    assert set(job["links"]) == {"self", "mask", "preview", "statistics", "outputs", "image"}
    assert job["links"]["image"].endswith("/image.nii.gz")
    assert job["links"]["preview"].endswith("/preview.png")
    assert job["links"]["outputs"] == {"nifti": f"/v1/jobs/{job['id']}/outputs/nifti"}
    wait_status(client, job, "done")
    for name in ("mask", "statistics"):
        assert client.get(job["links"][name]).status_code == 200


def test_queued_jobs_wait_on_disk_and_are_decoded_only_in_the_slot(client, fake):
    fake.gate = threading.Event()
    running = submit(client).json()
    wait_status(client, running, "running")
    queued = submit(client).json()

    store = client.app.state.runtime.jobs
    assert store.get(queued["id"]).input_path.is_file()
    assert not store.get(running["id"]).input_path.exists()  # decoded, then removed
    fake.gate.set()
    wait_status(client, queued, "done")
    assert not store.get(queued["id"]).input_path.exists()
