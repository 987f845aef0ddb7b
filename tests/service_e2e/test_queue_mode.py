"""Queue mode for real: Debian's redis-server, the API process and two worker processes (formula
model on the CPU, one thread each), all on loopback ports with temporary folders (``queue_kit``).
"""

from __future__ import annotations

import gzip
import io
import signal
from collections.abc import Iterator

import httpx
import nibabel as nib
import numpy as np
import pydicom
import pytest
from api.apikit import AFFINE, ct_array, nifti_gz_bytes
from dicom_variants import fixture_slices, write_variant, zip_series
from service_e2e.queue_kit import Cluster, running_cluster
from service_e2e.redis_kit import REDIS_SERVER
from service_e2e.serverkit import REPO, wait_for

from service.queue.job_files import RESULT_FILE, RUNNING_FILE, read_json

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (make redis)")
GZ = {"Content-Type": "application/gzip"}
SMALL, LARGE = (40, 40, 24), (72, 72, 40)
SERIES_DIR = REPO / ".." / "shared" / "data" / "ct" / "example_ct_dicom"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("queue")) as cluster:
        yield cluster


def submit(base_url: str, shape=SMALL) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/jobs?preview=false&filename=c.nii.gz",
                      content=nifti_gz_bytes(ct_array(shape)), headers=GZ, timeout=30)


def status(base_url: str, job_id: str) -> dict:
    return httpx.get(f"{base_url}/v1/jobs/{job_id}", timeout=10).json()


def wait_done(base_url: str, job_id: str, timeout: float = 90) -> dict:
    seen: dict = {}

    def finished() -> bool:
        seen.update(status(base_url, job_id))
        return seen["status"] in {"done", "failed"}

    wait_for(finished, timeout=timeout, what=f"job {job_id}")
    assert seen["status"] == "done", f"job {job_id} {seen['status']}: {seen.get('error')} (warnings {seen.get('warnings')})"
    return seen


def check_mask(base_url: str, job: dict, shape) -> None:
    response = httpx.get(f"{base_url}{job['links']['mask']}", timeout=30)
    assert response.status_code == 200, response.text
    image = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    assert image.shape == shape
    np.testing.assert_allclose(image.affine, AFFINE, atol=1e-3)
    assert np.asarray(image.dataobj).max() == 1  # the bright core is labelled


def test_jobs_spread_over_both_workers_and_survive_an_api_restart(cluster):
    with cluster.api("first") as api:
        assert httpx.post(f"{api.base_url}/v1/segment", content=nifti_gz_bytes(), headers=GZ).status_code == 409
        jobs = [submit(api.base_url).json() for _ in range(8)]
        for job in jobs:
            wait_done(api.base_url, job["id"])
            check_mask(api.base_url, job, SMALL)
    workers = {read_json(cluster.storage / job["id"] / RESULT_FILE)["worker"] for job in jobs}
    assert workers == {"w1", "w2"}

    with cluster.api("second") as api:  # a new API process answers from Redis and the storage
        for job in jobs[:2]:
            assert status(api.base_url, job["id"])["status"] == "done"
            check_mask(api.base_url, job, SMALL)


@pytest.mark.slow
def test_a_job_whose_worker_is_killed_completes_on_the_other(cluster):
    with cluster.api("kill") as api:
        job = submit(api.base_url, shape=LARGE).json()
        folder = cluster.storage / job["id"]
        wait_for(lambda: read_json(folder / RUNNING_FILE) is not None, timeout=60, what="the job to start")
        victim = read_json(folder / RUNNING_FILE)["worker"]
        cluster.workers[victim].send_signal(signal.SIGKILL)
        cluster.workers[victim].wait(timeout=10)
        assert read_json(folder / RESULT_FILE) is None  # killed mid-case: nothing written yet

        wait_done(api.base_url, job["id"], timeout=120)
        result = read_json(folder / RESULT_FILE)
        assert result["worker"] != victim
        check_mask(api.base_url, job, LARGE)
        assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no half-written temp file
    cluster.start_worker(victim)


def test_redis_down_answers_503_and_work_resumes_when_it_is_back(cluster):
    with cluster.api("redis") as api:
        cluster.redis.stop()
        refused = submit(api.base_url)
        assert refused.status_code == 503 and refused.headers["retry-after"], refused.text
        assert refused.json()["error"] == "queue_unavailable" and "unreachable" in refused.json()["detail"]
        ready = httpx.get(f"{api.base_url}/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["status"] == "queue_unreachable"
        assert not [p for p in cluster.storage.iterdir() if not p.name.startswith(".")
                    and read_json(p / RESULT_FILE) is None]  # nothing half-queued

        cluster.redis.start()
        wait_for(lambda: httpx.get(f"{api.base_url}/readyz", timeout=30).status_code == 200, timeout=30,
                 what="readyz 200")
        job = submit(api.base_url)
        assert job.status_code == 202, job.text
        wait_done(api.base_url, job.json()["id"], timeout=120)


def test_expiry_removes_the_stored_files(cluster):
    with cluster.api("expiry", SWINXSEG_JOB_TTL_S="1") as api:
        job = submit(api.base_url).json()
        wait_done(api.base_url, job["id"])
        wait_for(lambda: httpx.get(f"{api.base_url}/v1/jobs/{job['id']}").status_code == 410, timeout=30,
                 what="expiry")
        assert not (cluster.storage / job["id"]).exists()


def test_dicom_outputs_and_statistics_come_from_the_worker(cluster, tmp_path):
    if not SERIES_DIR.is_dir():
        pytest.skip(f"real DICOM series not found at {SERIES_DIR}")
    series = write_variant(tmp_path / "ct", fixture_slices(SERIES_DIR.resolve()), "head_first_supine",
                           crop=(slice(200, 248), slice(200, 248)))
    with cluster.api("outputs") as api:
        submitted = httpx.post(f"{api.base_url}/v1/jobs?preview=false&outputs=rtstruct,seg&filename=ct.zip",
                               content=zip_series(series), headers={"Content-Type": "application/zip"}, timeout=30)
        assert submitted.status_code == 202, submitted.text
        job = wait_done(api.base_url, submitted.json()["id"], timeout=120)
        assert sorted(job["links"]["outputs"]) == ["rtstruct", "seg"]
        ct = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
        for kind, url in job["links"]["outputs"].items():
            response = httpx.get(f"{api.base_url}{url}", timeout=30)
            assert response.status_code == 200 and response.headers["content-type"] == "application/dicom"
            ds = pydicom.dcmread(io.BytesIO(response.content))
            assert ds.Modality == kind.upper() and ds.StudyInstanceUID == ct.StudyInstanceUID
        stats = httpx.get(f"{api.base_url}{job['links']['statistics']}", timeout=30).json()
        assert stats["organs"] == job["statistics"] and stats["organs"], stats
        assert all(organ["volume_ml"] > 0 for organ in stats["organs"])


def test_progress_and_the_ct_image_come_from_the_worker(cluster):
    with cluster.api("progress") as api:
        response = httpx.post(f"{api.base_url}/v1/jobs?preview=false&image=true&filename=c.nii.gz",
                              content=nifti_gz_bytes(ct_array(LARGE)), headers=GZ, timeout=30)
        assert response.status_code == 202, response.text
        job = response.json()
        # An idle worker may have taken it already.
        assert job["progress"]["stage"] in {"queued", "reading", "preprocessing", "inference"}
        seen: list[dict] = []

        def finished() -> bool:
            current = status(api.base_url, job["id"])
            if current["status"] == "running":
                seen.append(current["progress"])
            return current["status"] in {"done", "failed"}

        wait_for(finished, timeout=120, what=f"job {job['id']}", interval=0.1)
        done = status(api.base_url, job["id"])
        assert done["status"] == "done", done
        total = done["metrics"]["windows_run"]
        assert done["progress"] == {"stage": "done", "windows_done": total, "windows_total": total,
                                    "queue_position": None}
        inference = [p for p in seen if p["stage"] == "inference"]
        assert any(0 < p["windows_done"] < p["windows_total"] == total for p in inference), seen
        done_counts = [p["windows_done"] for p in inference]
        assert done_counts == sorted(done_counts)

        image = httpx.get(f"{api.base_url}{done['links']['image']}", timeout=30)
        assert image.status_code == 200
        ct = nib.Nifti1Image.from_bytes(gzip.decompress(image.content))
        np.testing.assert_array_equal(np.asarray(ct.dataobj), ct_array(LARGE))
        np.testing.assert_allclose(ct.affine, AFFINE, atol=1e-3)
