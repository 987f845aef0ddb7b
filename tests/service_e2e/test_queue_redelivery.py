"""A job whose worker is killed is back on a worker soon after the visibility timeout, not at
kombu's own restore tick (every tenth 10-second tick: about 100 s, measured 96.5 s before
``restore_lost_jobs_periodically``). Real redis-server and two formula workers."""

from __future__ import annotations

import signal
import time

import pytest
from api.apikit import ct_array, nifti_gz_bytes
from service_e2e.queue_kit import running_cluster
from service_e2e.redis_kit import REDIS_SERVER
from service_e2e.serverkit import wait_for

from service.queue.celery_app import RESTORE_EVERY_S, make_celery
from service.queue.job_files import RESULT_FILE, RUNNING_FILE, read_json
from service.queue.submission import submit_job
from service.settings import Settings

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (make redis)")


def test_a_killed_workers_job_restarts_within_the_visibility_timeout_and_a_few_seconds(tmp_path):
    with running_cluster(tmp_path) as cluster:
        settings = Settings(queue_url=cluster.redis.url, storage_dir=cluster.storage)
        source = tmp_path / "ct.nii.gz"
        source.write_bytes(nifti_gz_bytes(ct_array((72, 72, 40))))
        meta = {"filename": "ct.nii.gz", "media_type": "application/gzip", "want_preview": False, "overlap": None}
        job_id = submit_job(cluster.storage, make_celery(settings), settings, meta=meta,
                            place_input=lambda path: path.write_bytes(source.read_bytes()))
        folder = cluster.storage / job_id
        wait_for(lambda: read_json(folder / RUNNING_FILE) is not None, timeout=60, what="the job to start")
        victim = read_json(folder / RUNNING_FILE)["worker"]
        cluster.workers[victim].send_signal(signal.SIGKILL)
        killed = time.time()
        cluster.workers[victim].wait(timeout=10)

        visibility_s = int(cluster.env["SWINXSEG_QUEUE_VISIBILITY_TIMEOUT_S"])
        wait_for(lambda: (read_json(folder / RUNNING_FILE) or {}).get("worker") not in {None, victim},
                 timeout=visibility_s + 3 * RESTORE_EVERY_S, what="another worker to take the job")
        wait_for(lambda: (folder / RESULT_FILE).exists(), timeout=60, what="the result")
        result = read_json(folder / RESULT_FILE)
        assert result["status"] == "done" and result["worker"] != victim
        assert result["started_at"] - killed >= visibility_s - 1  # not before the timeout: it may be alive
