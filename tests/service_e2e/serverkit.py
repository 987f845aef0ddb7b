"""Helpers for the end-to-end tests: free loopback ports, real server subprocesses, /proc reads.

Every process started here is stopped by its own id (SIGTERM, then SIGKILL after a timeout);
nothing is matched by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port that was free a moment ago (the OS picks it; a clash with another test is unlikely)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any ``SWINXSEG_*`` variable (a developer's API key or model folder
    must not leak into the server under test), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWINXSEG_")}
    env.update(extra)
    return env


def log_tail(path: Path, chars: int = 4000) -> str:
    text = path.read_text(errors="replace") if path.is_file() else "(no log)"
    return text[-chars:]


def wait_for(predicate: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.2) -> float:
    """Poll until ``predicate()``; returns the seconds it took, raises AssertionError after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    base_url: str
    log_path: Path
    killed: bool = False  # SIGTERM was not enough

    @property
    def pid(self) -> int:
        return self.proc.pid


def _ready(server: ServerProcess) -> bool:
    if server.proc.poll() is not None:
        raise AssertionError(
            f"server exited with code {server.proc.returncode} before it was ready:\n{log_tail(server.log_path)}"
        )
    try:
        return httpx.get(f"{server.base_url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:  # not listening yet
        return False


def stop_process(proc: subprocess.Popen, *, timeout: float = 30) -> bool:
    """SIGTERM (uvicorn's graceful shutdown runs the lifespan's cleanup), SIGKILL if it hangs.
    Returns whether it had to be killed."""
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return True


@contextmanager
def run_server(
    argv: Sequence[str], *, port: int, env: dict[str, str], log_path: Path, ready_timeout: float = 120
) -> Iterator[ServerProcess]:
    """Start ``argv`` (a server listening on 127.0.0.1:``port``), wait for ``/readyz`` 200, yield,
    then stop it. The server's output goes to ``log_path`` (shown when it fails to start)."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(list(argv), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = ServerProcess(proc=proc, base_url=f"http://{LOOPBACK}:{port}", log_path=log_path)
    try:
        try:
            wait_for(lambda: _ready(server), timeout=ready_timeout, what=f"{server.base_url}/readyz")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log_tail(log_path)}") from None
        yield server
    finally:
        server.killed = stop_process(proc)


def formula_server_argv(port: int) -> list[str]:
    """uvicorn serving :func:`service_e2e.formula_app.create_formula_app` (one worker)."""
    return [
        sys.executable, "-m", "uvicorn", "--factory", "service_e2e.formula_app:create_formula_app",
        "--app-dir", str(REPO / "tests"), "--host", LOOPBACK, "--port", str(port),
        "--workers", "1", "--no-access-log", "--log-level", "warning",
    ]


def rss_mb(pid: int) -> float:
    """Current resident set size of ``pid`` in MB, from /proc (psutil is not a dependency)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # the value is in kB
    raise AssertionError(f"no VmRSS line in /proc/{pid}/status")


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (a server must not leave workers behind)."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.is_file() else []


def metric_samples(base_url: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name`` on the server's /metrics, with its labels."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]
