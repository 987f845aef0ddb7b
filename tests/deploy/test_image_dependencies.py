"""The container image's pip installs resolve, for the image's Python on Linux x86_64, without a
Docker engine: the test runs the same `deploy/image-requirements.sh` the Dockerfile runs and asks pip
to resolve its output (``pip install --dry-run --report``), downloading metadata but installing nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
SCRIPT = REPO / "deploy" / "image-requirements.sh"
# The oldest glibc the project's wheels need up to the newest the base (Ubuntu 24.04: glibc 2.39) has.
# pip takes platform tags literally, so every manylinux_2_N the base satisfies is named.
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(39, 16, -1)] + ["manylinux2014_x86_64"]
# pip's own words when it could not reach the package index (not when a pin does not exist).
_OFFLINE_MARKERS = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name")


def _arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert match, f"ARG {name} missing from the Dockerfile"
    return match.group(1).strip('"')


def _onnxruntime_gpu_version() -> str:
    name, _, version = _arg("ONNXRUNTIME_REQUIREMENT").partition("==")
    assert name == "onnxruntime-gpu[cuda,cudnn]", name  # the shipped default is the CUDA build
    return version


def _image_requirements(lock: Path = REPO / "requirements.lock") -> list[str]:
    args = [_arg(n) for n in ("TORCH_VERSION", "ONNXRUNTIME_REQUIREMENT", "SETUPTOOLS_VERSION")]
    result = subprocess.run(["sh", str(SCRIPT), str(lock), *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line.strip()]


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        name, _, version = line.partition("==")
        pins[re.sub(r"\[.*\]", "", name).lower().replace("_", "-")] = version
    return pins


def test_image_requirements_replace_only_torch_and_onnxruntime():
    lock = _pins((REPO / "requirements.lock").read_text().splitlines())
    image = _pins(_image_requirements())

    assert image.pop("torch") == lock.pop("torch")
    assert image.pop("onnxruntime-gpu") == _onnxruntime_gpu_version()
    assert "onnxruntime" not in image
    lock.pop("onnxruntime")
    assert image.pop("setuptools") == _arg("SETUPTOOLS_VERSION")
    assert image == lock


def test_image_requirements_script_refuses_missing_arguments():
    result = subprocess.run(["sh", str(SCRIPT), "requirements.lock"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "usage:" in result.stderr


@pytest.mark.slow
def test_image_pip_installs_resolve_for_the_image_python_and_platform(tmp_path: Path):
    requirements = tmp_path / "requirements-image.txt"
    requirements.write_text("\n".join(_image_requirements()) + "\n")
    report = tmp_path / "report.json"
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
        "--only-binary=:all:", "--target", str(tmp_path / "never-written"),
        "--python-version", _arg("PYTHON_VERSION"), "--implementation", "cp",
        *[arg for platform in PLATFORMS for arg in ("--platform", platform)],
        "--report", str(report), "-r", str(requirements),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if result.returncode != 0 and any(marker in result.stderr for marker in _OFFLINE_MARKERS):
        pytest.skip(f"the package index is unreachable from here: {result.stderr.strip()[-300:]}")
    assert result.returncode == 0, result.stderr[-3000:]

    resolved = {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert resolved["torch"] == _arg("TORCH_VERSION")  # the index's wheel, not a +cpu/+cuXXX local build
    assert resolved["onnxruntime-gpu"] == _onnxruntime_gpu_version()
    # The index's Linux torch wheel carries CUDA through NVIDIA's pip packages, and onnxruntime-gpu's
    # extras resolved to the same CUDA runtime and cuDNN, so both load one set of libraries.
    assert resolved["nvidia-cuda-runtime"].split(".")[0] == "13", resolved["nvidia-cuda-runtime"]
    assert resolved["nvidia-cudnn-cu13"].split(".")[0] == "9", resolved["nvidia-cudnn-cu13"]
    for name, version in _pins(requirements.read_text().splitlines()).items():
        assert resolved.get(name) == version, f"{name}: wanted {version}, resolved {resolved.get(name)}"
