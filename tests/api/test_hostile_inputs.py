"""Issue 15 through the API with the real engine (formula network): hostile uploads get a
specific 4xx, never a 500, a file read off the server's disk or unbounded work."""

from __future__ import annotations

import gzip
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from api.apikit import ct_array, serving, wait_until, work_files
from service_e2e.formula_app import bright_logits, formula_manifest

from service.api.gpu_guard import GpuGuard
from service.inference.predictors import FormulaPredictor
from service.segmenter import Segmenter
from service.settings import Settings

OCTET = {"Content-Type": "application/octet-stream"}


def _segmenter(settings: Settings, *, seconds_per_window: float = 0.0, windows: list | None = None) -> Segmenter:
    def logits(batch: torch.Tensor) -> torch.Tensor:
        if windows is not None:
            windows.append(batch.shape[0])
        time.sleep(seconds_per_window)
        return bright_logits(batch)

    predictor = FormulaPredictor(logits, out_channels=2, device=torch.device("cpu"), name="formula")
    return Segmenter.from_predictor(settings, predictor, formula_manifest())


def _settings(tmp_path: Path, **overrides) -> Settings:
    values = dict(work_dir=tmp_path, queue_size=2, max_upload_mb=4, api_key=None, warmup=False,
                  device="cpu", sw_batch_size=1)
    values.update(overrides)
    return Settings(**values)


def _nifti(array: np.ndarray, spacing: tuple[float, float, float]) -> bytes:
    affine = np.diag([*spacing, 1.0])
    image = nib.Nifti1Image(array, affine)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes())


def _mha_pointing_at(target: str) -> bytes:
    return (
        "ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementType = MET_UCHAR\n"
        f"ElementDataFile = {target}\n"
    ).encode()


def _job_done(client, job: dict, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = client.get(job["links"]["self"]).json()
        if view["status"] in ("done", "failed"):
            return view
        time.sleep(0.05)
    raise AssertionError(f"job {job['id']} did not finish")


@pytest.mark.parametrize("target", ["/etc/passwd", "/dev/zero"])
@pytest.mark.parametrize("route", ["/v1/segment?filename=x.mha&format=png", "/v1/jobs?filename=x.mha"])
def test_upload_naming_a_server_file_is_refused(tmp_path: Path, target: str, route: str) -> None:
    settings = _settings(tmp_path)
    with serving(settings, _segmenter(settings)) as client:
        response = client.post(route, content=_mha_pointing_at(target), headers=OCTET)
        assert response.status_code == 415, response.text
        body = response.json()
        assert body["error"] == "unsupported_format"
        assert "ElementDataFile" in body["detail"] and "own bytes" in body["detail"]
        assert "root:" not in response.text
        assert work_files(client) == []


@pytest.mark.parametrize("spacing_mm", [1e5, 1600.0])
def test_huge_spacing_is_refused_before_the_grid_is_allocated(tmp_path: Path, spacing_mm: float) -> None:
    settings = _settings(tmp_path)
    data = _nifti(np.zeros((2, 2, 2), np.int16), (spacing_mm,) * 3)
    assert len(data) < 200  # a few bytes on the wire
    with serving(settings, _segmenter(settings)) as client:
        response = client.post("/v1/segment?filename=tiny.nii.gz", content=data, headers=OCTET)
        assert response.status_code == 413, response.text
        detail = response.json()["detail"]
        assert "max_model_grid_voxels" in detail and "the limit is 200,000,000" in detail
        assert "input 2x2x2" in detail


def test_excessive_overlap_is_refused_before_any_window_runs(tmp_path: Path) -> None:
    windows: list[int] = []
    settings = _settings(tmp_path, max_windows_per_case=50)
    with serving(settings, _segmenter(settings, windows=windows)) as client:
        data = _nifti(ct_array((64, 64, 40)), (1.5, 1.5, 2.5))
        response = client.post("/v1/segment?filename=a.nii.gz&overlap=0.99", content=data, headers=OCTET)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert "max_windows_per_case" in detail and "more than the 50 allowed" in detail
        assert windows == []
        assert client.post("/v1/segment?filename=a.nii.gz", content=data, headers=OCTET).status_code == 200


def test_delete_of_a_running_job_stops_it_between_windows_and_frees_the_slot(tmp_path: Path) -> None:
    windows: list[int] = []
    settings = _settings(tmp_path)
    data = _nifti(ct_array((64, 64, 40)), (1.5, 1.5, 2.5))
    with serving(settings, _segmenter(settings, seconds_per_window=0.25, windows=windows)) as client:
        running = client.post("/v1/jobs?filename=a.nii.gz", content=data, headers=OCTET).json()
        wait_until(lambda: len(windows) >= 1, timeout=30, what="the first window")
        assert client.delete(running["links"]["self"]).status_code == 204
        assert client.get(running["links"]["self"]).status_code == 404
        stopped_at = len(windows)
        # The slot is free again: the next job runs to the end.
        windows_before = len(windows)
        follower = client.post("/v1/jobs?filename=b.nii.gz", content=data, headers=OCTET).json()
        assert _job_done(client, follower)["status"] == "done"
        total = len(windows) - windows_before
        assert stopped_at < total  # the deleted case did not run all its windows
        assert stopped_at <= 2  # it stopped at the next window boundary
        assert not (client.app.state.runtime.jobs.root / running["id"]).exists()


@pytest.mark.parametrize("filename", ["a$\\foo$.nii.gz", "$\\frac{1}{0}$_^{x}.nii.gz", "a\nb\x1b[31m$.nii.gz"])
def test_file_names_are_drawn_literally_in_previews(tmp_path: Path, filename: str) -> None:
    settings = _settings(tmp_path)
    data = _nifti(ct_array(), (1.5, 1.5, 2.5))
    with serving(settings, _segmenter(settings)) as client:
        response = client.post("/v1/segment?format=png", content=data,
                               headers={**OCTET, "X-Filename": filename.replace("\n", "").replace("\x1b", "")})
        assert response.status_code == 200, response.text
        assert response.content.startswith(b"\x89PNG")
        job = client.post("/v1/jobs", files={"file": (filename, data, "application/gzip")}).json()
        assert _job_done(client, job)["status"] == "done"
        assert client.get(job["links"]["preview"]).content.startswith(b"\x89PNG")


def test_retry_after_follows_the_running_case_not_a_stale_average(monkeypatch) -> None:
    import asyncio

    async def scenario() -> tuple[int, int]:
        guard = GpuGuard(queue_size=2)
        for _ in range(20):
            guard._record(1.0)  # many 1-s cases: the average says ~1 s
        clock = [1000.0]
        monkeypatch.setattr("service.api.gpu_guard.time.monotonic", lambda: clock[0])
        running = guard.admit()
        async with running.running():
            clock[0] += 100.0  # this case has been running for 100 s
            guard.admit()
            guard.admit()
            with pytest.raises(Exception) as info:
                guard.admit()
            return int(info.value.headers["Retry-After"]), guard.retry_after_s()

    header, estimate = asyncio.run(scenario())
    # 2 cases wait behind a case already 100 s in: at least 50 s left + 2 x 100 s.
    assert header == estimate and header >= 250


def test_small_threads_do_not_leak(tmp_path: Path) -> None:
    # A guard against the cancellation path leaving worker threads behind.
    before = threading.active_count()
    settings = _settings(tmp_path)
    with serving(settings, _segmenter(settings)) as client:
        client.post("/v1/segment?filename=x.mha", content=_mha_pointing_at("/etc/passwd"), headers=OCTET)
    assert threading.active_count() <= before + 1
