"""docker-compose.yml's ``scale`` profile (Redis, the queue-mode API, N GPU workers) and the
Prometheus jobs that scrape it: the services agree with each other and with the app (settings,
ports, storage), and ``--scale worker=N`` can work (no fixed host port on a worker)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
yaml = pytest.importorskip("yaml")


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _prometheus() -> dict:
    return yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())


def test_scale_profile_services_share_the_queue_and_the_storage_volume():
    services = _compose()["services"]
    redis, api, worker = services["redis"], services["api"], services["worker"]
    for service in (redis, api, worker):
        assert service["profiles"] == ["scale"]
    assert "profiles" not in services["swinxseg"]  # `docker compose up` alone is unchanged
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+", redis["image"]), "pin the Redis tag"
    assert "--appendonly" in redis["command"]  # queued jobs survive a Redis restart
    for key in ("SWINXSEG_QUEUE_URL", "SWINXSEG_STORAGE_DIR"):
        assert api["environment"][key] == worker["environment"][key], key
    url = urlsplit(api["environment"]["SWINXSEG_QUEUE_URL"])
    assert url.scheme == "redis" and url.hostname == "redis"
    storage = api["environment"]["SWINXSEG_STORAGE_DIR"]
    volume = f"jobs:{storage}"
    assert volume in api["volumes"] and volume in worker["volumes"]
    assert "jobs" in _compose()["volumes"]
    # The image creates the mount point owned by its non-root user, so the new volume is writable.
    assert re.search(rf"mkdir -p .*{re.escape(storage)}", (REPO / "Dockerfile").read_text())
    for service in (api, worker):
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["image"] == services["swinxseg"]["image"]


def test_scale_profile_api_and_workers_match_the_app():
    services = _compose()["services"]
    api, worker = services["api"], services["worker"]
    fields = {f"SWINXSEG_{name.upper()}" for name in Settings.model_fields}
    for service in (api, worker):
        assert set(service["environment"]) <= fields, set(service["environment"]) - fields
    assert api["command"] == ["serve"] and worker["command"] == ["worker"]
    (published,) = api["ports"]
    assert published.split(":")[-1] == api["environment"]["SWINXSEG_PORT"] == str(Settings().port)
    assert "ports" not in worker  # a fixed host port would stop `--scale worker=2`
    assert worker["expose"] == [worker["environment"]["SWINXSEG_WORKER_METRICS_PORT"]]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert worker["deploy"]["resources"]["limits"]["memory"]
    assert "reservations" not in api["deploy"]["resources"]  # the queue-mode API holds no model
    assert worker["healthcheck"]["test"][-2:] == ["/app/deploy/healthcheck.py", "worker"]


def test_prometheus_scrapes_the_api_and_every_worker_replica():
    services = _compose()["services"]
    jobs = {job["job_name"]: job for job in _prometheus()["scrape_configs"]}
    for name, service, port in (("swinxseg-api", "api", services["api"]["environment"]["SWINXSEG_PORT"]),
                                ("swinxseg-worker", "worker",
                                 services["worker"]["environment"]["SWINXSEG_WORKER_METRICS_PORT"])):
        (sd,) = jobs[name]["dns_sd_configs"]  # one address per replica
        assert sd["names"] == [service] and sd["type"] == "A" and str(sd["port"]) == port
        assert jobs[name]["metrics_path"] == "/metrics"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (make prometheus)")
def test_prometheus_config_passes_promtool():
    result = subprocess.run(["promtool", "check", "config", str(REPO / "deploy" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_worker_healthcheck_reads_the_worker_metrics_port(tmp_path):
    """deploy/healthcheck.py worker: 0 while the metrics port answers, 1 once nothing listens."""
    import os
    import sys

    from prometheus_client import CollectorRegistry, start_http_server
    from service_e2e.serverkit import free_port

    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=CollectorRegistry())
    env = {**os.environ, "SWINXSEG_WORKER_METRICS_PORT": str(port)}
    script = str(REPO / "deploy" / "healthcheck.py")
    try:
        assert subprocess.run([sys.executable, script, "worker"], env=env, timeout=30).returncode == 0
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert subprocess.run([sys.executable, script, "worker"], env=env, timeout=30,
                          capture_output=True).returncode == 1
