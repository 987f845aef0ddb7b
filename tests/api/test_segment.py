"""POST /v1/segment: inputs, outputs, headers, and every error status it can answer."""

from __future__ import annotations

import gzip
import io
import json
import threading

import nibabel as nib
import numpy as np
import pytest
from api.apikit import (
    AFFINE,
    ct_array,
    metric_value,
    nifti_gz_bytes,
    post_ct,
    serving,
    wait_until,
    work_files,
)


def _mask_of(response) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(response.content))


def test_raw_body_returns_mask_on_the_input_grid(client, fake):
    response = post_ct(client, params={"filename": "Case 07.nii.gz"})

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/gzip"
    assert response.headers["content-disposition"] == 'attachment; filename="Case_07_mask.nii.gz"'
    mask = _mask_of(response)
    assert mask.shape == ct_array().shape
    np.testing.assert_allclose(mask.affine, AFFINE, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(mask.dataobj), (ct_array() > 50).astype(np.uint8))
    assert np.asarray(mask.dataobj).dtype == np.uint8


def test_headers_carry_runtime_memory_metrics_and_request_id(client):
    response = post_ct(client, headers={"X-Request-ID": "trace-123"})

    assert response.headers["x-request-id"] == "trace-123"
    assert float(response.headers["x-runtime-seconds"]) >= 0
    assert response.headers["x-peak-gpu-mb"] == "n/a"  # the fake runs on the CPU
    metrics = json.loads(response.headers["x-segmentation-metrics"])
    assert metrics["input_shape"] == list(ct_array().shape)
    assert metrics["windows_run"] == 3
    assert {"load", "preprocess", "infer", "postprocess", "write"} <= set(metrics["seconds"])


def test_request_id_is_generated_when_absent_or_unsafe(client):
    generated = post_ct(client).headers["x-request-id"]
    unsafe = post_ct(client, headers={"X-Request-ID": "bad id\twith spaces"}).headers["x-request-id"]
    assert len(generated) == 32 and len(unsafe) == 32 and generated != unsafe


def test_multipart_upload_names_the_mask_after_the_file(client):
    files = {"file": ("liver_001.nii.gz", nifti_gz_bytes(), "application/gzip")}
    response = client.post("/v1/segment", files=files, data={"note": "ignored"})

    assert response.status_code == 200, response.text
    assert 'filename="liver_001_mask.nii.gz"' in response.headers["content-disposition"]
    assert _mask_of(response).shape == ct_array().shape


def test_overlap_is_passed_to_the_segmenter(client, fake):
    assert post_ct(client, params={"overlap": 0.25}).status_code == 200
    assert fake.calls[-1]["overlap"] == 0.25


def test_png_format_returns_the_preview(client):
    response = post_ct(client, params={"format": "png"}, headers={"X-Filename": "abdomen.nii.gz"})

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert 'filename="abdomen_preview.png"' in response.headers["content-disposition"]
    assert work_files(client) == []


@pytest.mark.parametrize("overlap", [-0.1, 1.0, 1.5, "half"])
def test_bad_overlap_is_422(client, fake, overlap):
    response = post_ct(client, params={"overlap": overlap})

    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "validation_error" and "overlap" in body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert fake.calls == []


def test_wrong_media_type_is_415(client):
    response = client.post("/v1/segment", content=b"{}", headers={"Content-Type": "application/json"})
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_format"


def test_bytes_that_are_no_volume_format_are_415(client):
    response = post_ct(client, b"just some text, not a CT at all", headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 415
    assert "not a supported volume format" in response.json()["detail"]


def test_truncated_volume_is_422_naming_the_problem(client):
    data = nifti_gz_bytes()
    response = post_ct(client, data[: len(data) // 2], params={"filename": "broken.nii.gz"})

    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_input"
    assert "broken.nii.gz" in body["detail"] and "truncated" in body["detail"]


def test_2d_image_is_422(client):
    response = post_ct(client, nifti_gz_bytes(np.zeros((16, 16), np.int16), np.eye(4)))
    assert response.status_code == 422
    assert "2D" in response.json()["detail"]


def test_empty_body_is_400(client):
    response = client.post("/v1/segment", content=b"", headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"


def test_multipart_without_file_field_is_400(client):
    response = client.post("/v1/segment", files={"other": ("x.nii.gz", b"abc")})
    assert response.status_code == 400
    assert "'file'" in response.json()["detail"]


def test_declared_content_length_over_the_limit_is_413_before_reading(client, fake):
    too_big = 1 * 2**20 + 1  # max_upload_mb=1 in the test settings
    response = client.post(
        "/v1/segment", content=b"x" * too_big, headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status_code == 413
    assert response.json()["error"] == "input_too_large"
    assert fake.calls == []


def test_streamed_body_over_the_limit_is_413_as_soon_as_it_crosses(client):
    sent = []

    def chunks():  # no Content-Length: the server has to count while streaming
        for _ in range(64):
            sent.append(1)
            yield b"\0" * 65536

    response = client.post("/v1/segment", content=chunks(), headers={"Content-Type": "application/octet-stream"})

    assert response.status_code == 413
    assert "1 MB" in response.json()["detail"]
    assert work_files(client) == []


def test_multipart_over_the_limit_is_413(client):
    response = client.post("/v1/segment", files={"file": ("big.nii.gz", io.BytesIO(b"\0" * (2 * 2**20)))})
    assert response.status_code == 413


def test_unexpected_exception_is_500_without_traceback_and_server_keeps_serving(client, fake):
    fake.error = RuntimeError("secret internal state /etc/passwd")
    response = post_ct(client)

    assert response.status_code == 500
    body = response.json()
    assert body == {
        "error": "internal_error",
        "detail": "internal server error; the server log has the details",
        "request_id": response.headers["x-request-id"],
    }
    assert "secret" not in response.text and "Traceback" not in response.text
    fake.error = None
    assert client.get("/healthz").status_code == 200
    assert post_ct(client).status_code == 200
    assert metric_value(client, "swinxseg_failures_total", reason="internal_error") == 1


def test_inference_error_is_500_with_its_own_message(client, fake):
    from service.errors import InferenceError

    fake.error = InferenceError("out of GPU memory under the 4096 MB cap")
    response = post_ct(client)
    assert response.status_code == 500
    assert response.json()["error"] == "inference_failed"
    assert "4096 MB" in response.json()["detail"]


def test_queue_full_is_429_with_retry_after(make_settings, fake):
    fake.gate = threading.Event()
    with serving(make_settings(queue_size=1), fake) as client:
        running = client.post("/v1/jobs", content=nifti_gz_bytes(), headers={"Content-Type": "application/gzip"})
        wait_until(lambda: client.get(running.json()["links"]["self"]).json()["status"] == "running")
        waiting = client.post("/v1/jobs", content=nifti_gz_bytes(), headers={"Content-Type": "application/gzip"})
        assert waiting.status_code == 202

        refused = post_ct(client)
        assert refused.status_code == 429
        assert refused.json()["error"] == "queue_full"
        assert int(refused.headers["retry-after"]) >= 1
        assert metric_value(client, "swinxseg_queue_depth") == 1
        assert metric_value(client, "swinxseg_inference_in_flight") == 1

        fake.gate.set()
        for job in (running, waiting):
            wait_until(lambda job=job: client.get(job.json()["links"]["self"]).json()["status"] == "done")
        assert post_ct(client).status_code == 200
        assert fake.max_concurrent == 1


def test_sync_requests_wait_their_turn_one_inference_at_a_time(make_settings, fake):
    fake.seconds = 0.05
    with serving(make_settings(queue_size=4), fake) as client:
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(post_ct(client).status_code)) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert results == [200, 200, 200]
    assert fake.max_concurrent == 1


def test_503_until_the_model_is_warmed_up(make_settings, fake):
    fake.warmup_gate = threading.Event()
    with serving(make_settings(), fake, ready=False) as client:
        response = post_ct(client)
        assert response.status_code == 503
        assert response.json()["error"] == "model_not_ready"
        assert "warming up" in response.json()["detail"]
        assert response.headers["retry-after"]
        fake.warmup_gate.set()
        wait_until(lambda: client.get("/readyz").status_code == 200)
        assert post_ct(client).status_code == 200


def test_no_temp_file_outlives_requests(client):
    post_ct(client)
    post_ct(client, b"garbage", headers={"Content-Type": "application/octet-stream"})
    data = nifti_gz_bytes()
    post_ct(client, data[:100])
    assert work_files(client) == []


def test_temp_folder_is_removed_at_shutdown(make_settings, fake, tmp_path):
    with serving(make_settings(), fake) as client:
        work_dir = client.app.state.runtime.work_dir
        assert work_dir.parent == tmp_path
        post_ct(client)
    assert not work_dir.exists()
