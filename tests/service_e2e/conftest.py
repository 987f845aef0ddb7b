"""Fixtures for the end-to-end tests: real server subprocesses on free 127.0.0.1 ports.

Helpers (ports, process control, /proc reads) live in ``serverkit.py``.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_e2e.serverkit import (
    BIN,
    LOOPBACK,
    REPO,
    ServerProcess,
    child_pids,
    clean_env,
    formula_server_argv,
    free_port,
    log_tail,
    run_server,
)

from service.settings import DEFAULT_MODEL_DIR

log = logging.getLogger(__name__)

CT_DIR = REPO / ".." / "shared" / "data" / "ct"


@pytest.fixture(scope="session")
def ct_dir() -> Path:
    """The real CT fixtures, read in place (never copied into the project)."""
    if not (CT_DIR / "example_ct_sm.nii.gz").is_file():
        pytest.skip(f"real CT fixtures not found at {CT_DIR}")
    return CT_DIR.resolve()


@pytest.fixture(scope="session")
def serve_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """The model folder ``swinxseg serve`` should load: ``None`` means its default.

    The default is ``Settings().model_dir`` (``weights/demo``), and the tests use it whenever
    ``weights/demo/manifest.json`` exists. Fallback, for a tree where the demo weights are not
    there yet (they are trained separately): export a tiny random-init model (``tiny`` preset,
    TorchScript + ONNX, seed 0) once per session into a temp folder, and pass it as ``--model``.
    The HTTP contract under test (shape, affine, dtype, headers) does not depend on the weights.
    """
    if (DEFAULT_MODEL_DIR / "manifest.json").is_file():
        return None
    from model_export.export import export_model

    folder = tmp_path_factory.mktemp("tiny-random-model")
    log.warning("no demo weights at %s: exporting a tiny random-init model to %s", DEFAULT_MODEL_DIR, folder)
    export_model(
        checkpoint=None, preset="tiny", out_dir=folder, formats=("torchscript", "onnx"), random_init=True, seed=0
    )
    return folder


def assert_clean_exit(server: ServerProcess, work_dir: Path) -> None:
    """After SIGTERM: a graceful shutdown (no SIGKILL needed), and the lifespan removed the
    server's temp folder under ``work_dir``.

    uvicorn re-raises the captured SIGTERM once it has shut down, so the exit status is -SIGTERM,
    not 0; the removed temp folder is what proves the shutdown ran.
    """
    assert not server.killed, f"SIGTERM did not stop the server:\n{log_tail(server.log_path)}"
    assert server.proc.returncode in (0, -signal.SIGTERM), (
        f"exit code {server.proc.returncode}:\n{log_tail(server.log_path)}"
    )
    leftovers = sorted(p.name for p in work_dir.glob("swinxseg-*"))
    assert leftovers == [], f"temp folders left behind: {leftovers}"


@pytest.fixture(scope="module")
def swinxseg_server(serve_model_dir: Path | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``swinxseg serve`` (the console script) on a free port, with the default model when present."""
    root = tmp_path_factory.mktemp("serve")
    work_dir = root / "work"
    work_dir.mkdir()
    port = free_port()
    argv = [str(BIN / "swinxseg"), "serve", "--host", LOOPBACK, "--port", str(port)]
    if serve_model_dir is not None:
        argv += ["--model", str(serve_model_dir)]
    env = clean_env(SWINXSEG_WORK_DIR=str(work_dir))
    with run_server(argv, port=port, env=env, log_path=root / "serve.log") as server:
        yield server
        assert child_pids(server.pid) == [], "the server started child processes"
    assert_clean_exit(server, work_dir)


@pytest.fixture
def formula_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A fresh uvicorn subprocess serving ``formula_app`` (the real engine, a threshold for a
    network), with the default settings but no warm-up (nothing to warm)."""
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    port = free_port()
    env = clean_env(SWINXSEG_WORK_DIR=str(work_dir), SWINXSEG_WARMUP="false")
    with run_server(formula_server_argv(port), port=port, env=env, log_path=tmp_path / "server.log") as server:
        yield server
    assert_clean_exit(server, work_dir)
