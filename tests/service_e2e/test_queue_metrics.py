"""Queue mode's metrics for real: the API's gauges of the Celery queue (depth, oldest job's wait)
read from Redis, and a worker's own /metrics port counting the cases it ran."""

from __future__ import annotations

import httpx
import pytest
from api.apikit import nifti_gz_bytes
from service_e2e.queue_kit import running_cluster
from service_e2e.redis_kit import REDIS_SERVER
from service_e2e.serverkit import LOOPBACK, free_port, metric_samples, wait_for

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (make redis)")
GZ = {"Content-Type": "application/gzip"}


def value(base_url: str, name: str) -> float:
    (sample,) = metric_samples(base_url, name)
    return sample[1]


def test_api_gauges_follow_the_queue_and_each_worker_counts_its_cases(tmp_path):
    with running_cluster(tmp_path, workers=()) as cluster, cluster.api("metrics") as api:
        assert value(api.base_url, "swinxseg_job_queue_depth") == 0
        assert value(api.base_url, "swinxseg_job_queue_oldest_seconds") == 0
        jobs = [httpx.post(f"{api.base_url}/v1/jobs?preview=false", content=nifti_gz_bytes(), headers=GZ,
                           timeout=30).json()["id"] for _ in range(3)]
        assert value(api.base_url, "swinxseg_job_queue_depth") == 3  # no worker yet: all wait
        wait_for(lambda: value(api.base_url, "swinxseg_job_queue_oldest_seconds") >= 1, timeout=10,
                 what="the oldest job's wait to grow")

        port = free_port()
        cluster.start_worker("metered", metrics_port=port)
        worker_url = f"http://{LOOPBACK}:{port}"
        wait_for(lambda: all(httpx.get(f"{api.base_url}/v1/jobs/{job}").json()["status"] == "done" for job in jobs),
                 timeout=120, what="the three jobs")
        assert value(worker_url, "swinxseg_cases_total") == 3
        assert value(worker_url, "swinxseg_case_seconds_count") == 3
        assert value(worker_url, "swinxseg_queue_wait_seconds_sum") >= 3  # each waited >= 1 s for a worker
        assert value(api.base_url, "swinxseg_job_queue_depth") == 0
        assert value(api.base_url, "swinxseg_job_queue_oldest_seconds") == 0
