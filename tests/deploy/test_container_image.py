"""The image, built and run for real: the CPU variant of the Dockerfile, built with rootful podman
by `deploy/image-test.sh`, runs the FLARE contract and the HTTP service.

Marked ``image``: `make test` leaves these out, `make image-test` (and `.ci/run` after the suite,
where podman installs) runs them. They skip only where podman is not installed or we are not root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from service_e2e.serverkit import free_port, wait_for

from phantoms.generator import make_phantom
from service.io.writers import write_ct

pytestmark = pytest.mark.image

REPO = Path(__file__).resolve().parents[2]
TAG = "localhost/swinxseg:cpu-test"
STATE = Path(os.environ.get("SWINXSEG_IMAGE_STATE", "/var/tmp/swinxseg-image-test"))
APP_UID = 1000
STOP_WITHIN_S = 15  # uvicorn's graceful shutdown on SIGTERM; podman would SIGKILL after its timeout


def _podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, CONTAINERS_CONF=str(STATE / "containers.conf"))
    result = subprocess.run(
        ["podman", "--runtime", "runc", *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {result.returncode}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None or shutil.which("debootstrap") is None:
        pytest.skip("podman/debootstrap are not installed (make image-test installs them with apt-get)")
    if os.geteuid() != 0:
        pytest.skip("the image test needs rootful podman (run as root)")
    started = time.monotonic()
    build = subprocess.run(
        ["bash", str(REPO / "deploy" / "image-test.sh"), TAG], capture_output=True, text=True, timeout=3000
    )
    assert build.returncode == 0, build.stdout + build.stderr
    print(f"\n{build.stdout.strip()}\nimage-test: base + build took {time.monotonic() - started:.0f} s")
    return TAG


def _phantom_case(folder: Path, name: str, seed: int) -> Path:
    """A small LPS phantom on an anisotropic grid, as a FLARE input ``NAME_0000.nii.gz``."""
    ct, _ = make_phantom(seed=seed, shape=(72, 60, 28), spacing=(2.2, 2.4, 5.0), orientation="LPS")
    path = folder / f"{name}_0000.nii.gz"
    write_ct(ct, path)
    return path


def test_flare_contract_writes_masks_on_the_input_grid_as_the_non_root_user(image: str, tmp_path: Path):
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    outputs.mkdir()
    outputs.chmod(0o777)  # the container writes as uid 1000, not as the host's root
    source = _phantom_case(inputs, "case", seed=4242)

    _podman(
        "run", "--rm", "--network", "none",
        "-v", f"{inputs}:/workspace/inputs:ro", "-v", f"{outputs}:/workspace/outputs",
        image, "/bin/bash", "-c", "sh predict.sh",
    )  # fmt: skip

    mask_path = outputs / "case.nii.gz"
    assert mask_path.is_file(), sorted(p.name for p in outputs.iterdir())
    assert mask_path.stat().st_uid == APP_UID
    image_nii, mask_nii = nib.load(str(source)), nib.load(str(mask_path))
    assert mask_nii.shape == image_nii.shape
    np.testing.assert_allclose(mask_nii.affine, image_nii.affine, atol=1e-5)
    labels = np.unique(np.asarray(mask_nii.dataobj))
    assert labels.min() >= 0 and labels.max() <= 14 and len(labels) > 1  # organs found, not all background


def test_service_in_the_container_is_healthy_segments_and_stops_on_sigterm(image: str, tmp_path: Path):
    port = free_port()
    name = f"swinxseg-image-test-{port}"
    started = time.monotonic()
    _podman(
        "run", "-d", "--name", name, "--network", "host", "-e", f"SWINXSEG_PORT={port}", image,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        cold_start = wait_for(lambda: _status(f"{base}/readyz") == 200, timeout=180, what="/readyz 200")
        print(f"\nimage-test: cold start (container start to /readyz 200) {time.monotonic() - started:.1f} s")
        assert cold_start < 180
        assert _podman("healthcheck", "run", name, check=False).returncode == 0

        case = _phantom_case(tmp_path, "svc", seed=4243)
        response = httpx.post(
            f"{base}/v1/segment", params={"filename": case.name}, content=case.read_bytes(), timeout=300
        )
        assert response.status_code == 200, response.text[:500]
        returned = tmp_path / "mask.nii.gz"
        returned.write_bytes(response.content)
        mask_nii, image_nii = nib.load(str(returned)), nib.load(str(case))
        assert mask_nii.shape == image_nii.shape
        np.testing.assert_allclose(mask_nii.affine, image_nii.affine, atol=1e-5)

        metrics = httpx.get(f"{base}/metrics", timeout=30)
        assert metrics.status_code == 200 and "swinxseg_" in metrics.text

        stop_started = time.monotonic()
        _podman("stop", "-t", "60", name)
        stop_seconds = time.monotonic() - stop_started
        print(f"image-test: stopped on SIGTERM in {stop_seconds:.1f} s")
        state = _podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert stop_seconds < STOP_WITHIN_S and state == "0", (stop_seconds, state)
    finally:
        _podman("rm", "-f", name, check=False)


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return 0
