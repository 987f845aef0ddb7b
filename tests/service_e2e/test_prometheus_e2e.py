"""A real Prometheus server scrapes a real service process: the latency and GPU-memory series
arrive in Prometheus' own query API.

Needs the ``prometheus`` binary (``make prometheus`` installs Debian's package); skipped without it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api.apikit import nifti_gz_bytes
from service_e2e.serverkit import LOOPBACK, free_port, log_tail, metric_samples, stop_process, wait_for

from service.settings import Settings

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="the prometheus binary is not on PATH (`make prometheus` installs it)"
)

SEGMENT_REQUESTS = 2
# Scrapes every second: a series shows up within a few scrapes; the bound covers a loaded machine.
SERIES_TIMEOUT_S = 60

CONFIG = """\
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: swinxseg
    metrics_path: /metrics
    static_configs:
      - targets: ["{target}"]
"""


@pytest.fixture
def prometheus(formula_server, tmp_path: Path) -> Iterator[str]:
    """Prometheus on a free loopback port, scraping ``formula_server``; yields its base URL."""
    config = tmp_path / "prometheus.yml"
    config.write_text(CONFIG.format(target=formula_server.base_url.removeprefix("http://")))
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address={LOOPBACK}:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://{LOOPBACK}:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {proc.returncode}:\n{log_tail(log_path)}")
        try:
            return httpx.get(f"{base}/-/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(ready, timeout=60, what="prometheus /-/ready")
        yield base
    finally:
        stop_process(proc)


def query(prometheus_url: str, promql: str) -> list[dict]:
    """The instant vector of ``promql`` (``[]`` when it has no series yet)."""
    answer = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def eventually(prometheus_url: str, promql: str) -> list[dict]:
    """Poll until ``promql`` returns at least one series (bounded)."""
    found: list[dict] = []

    def has_series() -> bool:
        found[:] = query(prometheus_url, promql)
        return bool(found)

    wait_for(has_series, timeout=SERIES_TIMEOUT_S, what=f"Prometheus to return {promql!r}", interval=0.5)
    return found


def test_prometheus_scrapes_latency_and_gpu_memory_series(formula_server, prometheus):
    for _ in range(SEGMENT_REQUESTS):
        response = httpx.post(
            f"{formula_server.base_url}/v1/segment",
            content=nifti_gz_bytes(),
            headers={"Content-Type": "application/gzip"},
            timeout=60,
        )
        assert response.status_code == 200, response.text

    # The scrape works at all (target up), then the series the dashboards use.
    assert eventually(prometheus, 'up{job="swinxseg"} == 1')
    latency = eventually(
        prometheus,
        f'swinxseg_http_request_duration_seconds_count{{route="/v1/segment",method="POST"}} >= {SEGMENT_REQUESTS}',
    )
    assert float(latency[0]["value"][1]) == SEGMENT_REQUESTS
    assert eventually(prometheus, 'swinxseg_inference_stage_seconds_count{stage="infer"} > 0')

    cap = eventually(prometheus, "swinxseg_gpu_memory_cap_mb")
    assert float(cap[0]["value"][1]) == Settings().gpu_mem_cap_mb
    # The last case's peak is only measured on a GPU: Prometheus must hold exactly the label sets
    # the service exposes (none on a CPU-only server, one per measurement source on CUDA).
    exposed = metric_samples(formula_server.base_url, "swinxseg_last_peak_gpu_memory_mb")
    device = httpx.get(f"{formula_server.base_url}/v1/model", timeout=10).json()["device"]
    if device.startswith("cuda"):
        assert exposed, "a CUDA server must expose its last case's peak GPU memory"
        scraped = eventually(prometheus, "swinxseg_last_peak_gpu_memory_mb")
        assert {s["metric"]["source"] for s in scraped} == {labels["source"] for labels, _ in exposed}
    else:
        assert exposed == []
        assert query(prometheus, "swinxseg_last_peak_gpu_memory_mb") == []
