"""``swinxseg serve``: flags over environment, one uvicorn worker, our log config kept."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
from api.apikit import FakeSegmenter
from fastapi import FastAPI

from service.api import app as app_module
from service.api import serve_cli
from service.errors import ModelArtifactError, SwinxsegError


@pytest.fixture(autouse=True)
def restore_logging():
    """run() reconfigures the root logger; give pytest's handlers back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("SWINXSEG_PORT", "9000")
    monkeypatch.setenv("SWINXSEG_GPU_MEM_CAP_MB", "2048")
    monkeypatch.setenv("SWINXSEG_API_KEY", "from-env")

    settings = serve_cli.settings_from_args(parse("--port", "8123", "--model", "/models/x", "--device", "cpu"))

    assert settings.port == 8123
    assert settings.gpu_mem_cap_mb == 2048  # env kept where no flag was given
    assert settings.api_key == "from-env"
    assert settings.model_dir == Path("/models/x")
    assert settings.device == "cpu"


def test_invalid_settings_are_a_typed_error():
    with pytest.raises(SwinxsegError, match="queue_size"):
        serve_cli.settings_from_args(parse("--queue-size", "0"))


@pytest.fixture
def no_model_load(monkeypatch) -> FakeSegmenter:
    fake = FakeSegmenter()
    monkeypatch.setattr(app_module, "build_segmenter", lambda settings: fake)
    return fake


def test_run_starts_one_uvicorn_worker_with_our_logging(monkeypatch, no_model_load):
    import uvicorn

    seen: dict = {}

    def fake_run(app, **kwargs):
        seen.update(kwargs, app=app)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    code = serve_cli.run(parse("--host", "0.0.0.0", "--port", "8001", "--backend", "onnx", "--log-json"))

    assert code == 0
    assert isinstance(seen["app"], FastAPI)  # serving the model loaded before uvicorn started
    assert seen["app"].state.settings.backend == "onnx"
    assert (seen["host"], seen["port"], seen["workers"]) == ("0.0.0.0", 8001, 1)
    assert seen["log_config"] is None and seen["access_log"] is False


def test_a_missing_model_is_a_typed_error_before_the_server_starts(monkeypatch, tmp_path):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: pytest.fail("uvicorn must not start"))
    with pytest.raises(ModelArtifactError):
        serve_cli.run(parse("--model", str(tmp_path / "missing")))


def test_startup_failure_becomes_the_exit_code(monkeypatch, no_model_load):
    import uvicorn

    def failing_run(app, **kwargs):
        raise SystemExit(3)

    monkeypatch.setattr(uvicorn, "run", failing_run)
    assert serve_cli.run(parse()) == 3
