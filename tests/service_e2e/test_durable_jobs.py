"""The embedded job store survives a real restart of the server process.

A finished job still answers (status and mask) after the server stopped and started again; a job
that was running when the server was killed with SIGKILL is reported failed (``interrupted``)
by the next server, with nothing left of its input.
"""

from __future__ import annotations

import gzip
import signal

import httpx
import nibabel as nib
import numpy as np
from api.apikit import AFFINE, ct_array, nifti_gz_bytes
from service_e2e.formula_app import DELAY_ENV
from service_e2e.serverkit import clean_env, formula_server_argv, free_port, run_server, wait_for

OCTET = {"Content-Type": "application/gzip"}


def _status(base_url: str, job_id: str) -> dict:
    return httpx.get(f"{base_url}/v1/jobs/{job_id}", timeout=10).json()


def _submit(base_url: str, shape=(40, 40, 24)) -> dict:
    response = httpx.post(f"{base_url}/v1/jobs?preview=false&filename=c.nii.gz",
                          content=nifti_gz_bytes(ct_array(shape)), headers=OCTET, timeout=30)
    assert response.status_code == 202, response.text
    return response.json()


def test_jobs_survive_a_restart_and_running_ones_are_marked_interrupted(tmp_path):
    port = free_port()
    env = clean_env(SWINXSEG_WORK_DIR=str(tmp_path / "work"), SWINXSEG_DEVICE="cpu", SWINXSEG_CPU_THREADS="1",
                    SWINXSEG_WARMUP="false")
    argv = formula_server_argv(port)
    with run_server(argv, port=port, env=env, log_path=tmp_path / "first.log") as server:
        done = _submit(server.base_url)
        wait_for(lambda: _status(server.base_url, done["id"])["status"] == "done", timeout=60, what="job done")

    slow_env = {**env, DELAY_ENV: "2"}  # each window sleeps: the next job is still running when killed
    with run_server(argv, port=port, env=slow_env, log_path=tmp_path / "second.log") as server:
        assert _status(server.base_url, done["id"])["status"] == "done"  # after a graceful restart
        running = _submit(server.base_url, shape=(96, 96, 64))
        wait_for(lambda: _status(server.base_url, running["id"])["status"] == "running", timeout=60, what="running")
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=30)

    with run_server(argv, port=port, env=env, log_path=tmp_path / "third.log") as server:
        finished = _status(server.base_url, done["id"])
        assert finished["status"] == "done" and finished["metrics"]["input_shape"] == [40, 40, 24]
        mask = httpx.get(f"{server.base_url}{done['links']['mask']}", timeout=30)
        assert mask.status_code == 200
        image = nib.Nifti1Image.from_bytes(gzip.decompress(mask.content))
        assert image.shape == (40, 40, 24)
        np.testing.assert_allclose(image.affine, AFFINE, atol=1e-3)

        lost = _status(server.base_url, running["id"])
        assert lost["status"] == "failed"
        assert lost["error"]["error"] == "interrupted" and "restart" in lost["error"]["detail"]
        assert httpx.get(f"{server.base_url}{running['links']['mask']}", timeout=10).status_code == 409
        jobs_root = tmp_path / "work" / "swinxseg_jobs"
        assert not (jobs_root / running["id"] / "input.bin").exists()
