"""/healthz, /readyz, /v1/model, /metrics, the OpenAPI docs, startup and the app's own registry."""

from __future__ import annotations

import threading

import pytest
from api.apikit import FakeSegmenter, metric_value, post_ct, serving, wait_until
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from service.api.app import create_app
from service.errors import ModelArtifactError


def test_healthz_is_always_200(make_settings, fake):
    fake.warmup_gate = threading.Event()
    with serving(make_settings(), fake, ready=False) as client:
        assert client.get("/healthz").json() == {"status": "ok"}  # alive while warming up
        fake.warmup_gate.set()


def test_readyz_is_503_until_warmed_up(make_settings, fake):
    fake.warmup_gate = threading.Event()
    with serving(make_settings(), fake, ready=False) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["status"] == "warming_up"
        fake.warmup_gate.set()
        wait_until(lambda: client.get("/readyz").status_code == 200)
        assert client.get("/readyz").json() == {"status": "ready", "detail": ""}
    assert fake.warmups == 1


def test_no_warmup_when_disabled(make_settings, fake):
    with serving(make_settings(warmup=False), fake) as client:
        assert client.get("/readyz").status_code == 200
    assert fake.warmups == 0


def test_failed_warmup_keeps_readyz_503_and_says_why(make_settings, fake):
    def broken() -> None:
        raise RuntimeError("cuDNN not found")

    fake.warmup = broken
    with serving(make_settings(), fake, ready=False) as client:
        wait_until(lambda: client.get("/readyz").json()["status"] == "failed")
        assert "cuDNN not found" in client.get("/readyz").json()["detail"]
        assert post_ct(client).status_code == 503
        assert client.get("/healthz").status_code == 200


def test_startup_fails_on_a_missing_model(make_settings, tmp_path):
    app = create_app(make_settings(model_dir=tmp_path / "missing"))
    with pytest.raises(ModelArtifactError), TestClient(app):
        pass
    assert list(tmp_path.glob("swinxseg-*")) == []  # the temp folder went with it


def test_model_describes_the_manifest_and_runtime(client):
    body = client.get("/v1/model").json()

    assert body["name"] == "fake-swinxseg"
    assert body["labels"]["1"] == "liver" and body["labels"]["14"] == "tumor"
    assert body["roi_size"] == [96, 96, 96]
    assert body["target_spacing_mm"] == [1.0, 1.0, 1.0]
    assert body["hu_window"] == [-250.0, 250.0]
    assert body["backend"] == "fake" and body["device"] == "cpu"
    assert body["gpu_mem_cap_mb"] == 4096
    assert "torch" in body["versions"] and "swinxseg_service" in body["versions"]


def test_metrics_are_prometheus_text_from_the_apps_own_registry(client):
    # ...and nothing lands in the process-global default registry.
    post_ct(client)
    response = client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in (
        "swinxseg_http_requests_total",
        "swinxseg_http_request_duration_seconds_bucket",
        "swinxseg_inference_stage_seconds_bucket",
        "swinxseg_case_seconds_bucket",
        "swinxseg_gpu_memory_cap_mb 4096.0",
        "swinxseg_queue_depth",
        "swinxseg_inference_in_flight",
        "swinxseg_windows_run_total 3.0",
        "swinxseg_windows_skipped_total 2.0",
        "swinxseg_peak_rss_mb",
        'swinxseg_model_info{backend="fake",device="cpu",name="fake-swinxseg"} 1.0',
    ):
        assert name in text, name
    assert REGISTRY.get_sample_value("swinxseg_http_requests_total") is None


def test_every_request_is_counted_by_route_template_and_status(client):
    post_ct(client)
    post_ct(client, params={"overlap": 7})
    client.get("/v1/jobs/abc")
    client.get("/no/such/route")

    def count(route: str, method: str, status: str) -> float:
        return metric_value(client, "swinxseg_http_requests_total", route=route, method=method, status=status)

    assert count("/v1/segment", "POST", "200") == 1
    assert count("/v1/segment", "POST", "422") == 1
    assert count("/v1/jobs/{job_id}", "GET", "404") == 1
    assert count("unmatched", "GET", "404") == 1
    assert metric_value(client, "swinxseg_http_request_duration_seconds_count", route="/v1/segment", method="POST") == 2
    assert metric_value(client, "swinxseg_inference_stage_seconds_count", stage="infer") == 1
    assert metric_value(client, "swinxseg_failures_total", reason="validation_error") == 1
    assert metric_value(client, "swinxseg_failures_total", reason="not_found") == 2


def test_gpu_memory_series_per_source(make_settings):
    class GpuFake(FakeSegmenter):
        def segment(self, volume, *, overlap=None):
            result = super().segment(volume, overlap=overlap)
            result.metrics.peak_gpu_mb_torch_allocated = 1500.0
            result.metrics.peak_gpu_mb_torch_reserved = 2000.0
            result.metrics.peak_gpu_mb_nvml = 2600.0
            return result

    with serving(make_settings(), GpuFake()) as client:
        response = post_ct(client)
        assert response.headers["x-peak-gpu-mb"] == "2600.0"
        for source, value in (("torch_allocated", 1500.0), ("torch_reserved", 2000.0), ("nvml", 2600.0)):
            assert metric_value(client, "swinxseg_last_peak_gpu_memory_mb", source=source) == value
            assert metric_value(client, "swinxseg_peak_gpu_memory_mb_count", source=source) == 1


def test_two_apps_do_not_share_metrics(make_settings):
    with serving(make_settings(), FakeSegmenter()) as first, serving(make_settings(), FakeSegmenter()) as second:
        post_ct(first)
        assert metric_value(first, "swinxseg_cases_total") == 1
        assert metric_value(second, "swinxseg_cases_total") == 0


def test_openapi_and_docs(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/segment", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/mask", "/v1/model", "/healthz"} <= set(
        spec["paths"]
    )
    body = spec["paths"]["/v1/segment"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "application/octet-stream" in body
    assert client.get("/docs").status_code == 200


def test_unknown_route_and_method_use_the_error_shape(client):
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong_method = client.get("/v1/segment")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "method_not_allowed"


def test_model_without_a_manifest_is_still_described(make_settings, fake):
    fake.manifest = None
    with serving(make_settings(), fake) as client:
        body = client.get("/v1/model").json()
    assert body["name"] == "unknown" and body["backend"] == "fake"
