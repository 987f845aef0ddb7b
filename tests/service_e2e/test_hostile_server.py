"""Issue 15 against a real server on 127.0.0.1: slow uploads, uvicorn's own 400s, log
injection, crash leftovers in the work folder, and the memory an upload costs.

The server is ``hostile_app.py`` (the formula app served like ``swinxseg serve``). Every loop
here is bounded and every socket goes to loopback only.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from service_e2e.serverkit import (
    LOOPBACK,
    REPO,
    ServerProcess,
    clean_env,
    free_port,
    log_tail,
    run_server,
    wait_for,
)


def _argv() -> list[str]:
    import sys

    return [sys.executable, str(REPO / "tests" / "service_e2e" / "hostile_app.py")]


def _env(work_dir: Path, port: int, **extra: str) -> dict[str, str]:
    return clean_env(
        SWINXSEG_WORK_DIR=str(work_dir), SWINXSEG_PORT=str(port), SWINXSEG_HOST=LOOPBACK,
        SWINXSEG_WARMUP="false", SWINXSEG_DEVICE="cpu", SWINXSEG_LOG_JSON="false", **extra,
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    port = free_port()
    env = _env(tmp_path / "work", port, SWINXSEG_QUEUE_SIZE="2", SWINXSEG_UPLOAD_IDLE_TIMEOUT_S="3",
               SWINXSEG_UPLOAD_MIN_BYTES_PER_S="2000", SWINXSEG_UPLOAD_RATE_GRACE_S="2")
    with run_server(_argv(), port=port, env=env, log_path=tmp_path / "server.log") as proc:
        yield proc


def _nifti_gz() -> bytes:
    hu = np.full((24, 20, 16), -1000, np.int16)
    hu[4:-4, 4:-4, 3:-3] = 150
    image = nib.Nifti1Image(hu, np.diag([1.5, 1.5, 2.5, 1.0]))
    image.set_sform(image.affine, code=1)
    return gzip.compress(image.to_bytes())


def _port(server: ServerProcess) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def _raw_exchange(port: int, data: bytes, *, timeout: float = 10) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


class SlowUploader(threading.Thread):
    """Declares a 1 MB body, then sends one byte every 0.5 s until answered (at most 60 bytes)."""

    def __init__(self, port: int, *, multipart: bool) -> None:
        super().__init__(daemon=True)
        self.port, self.multipart = port, multipart
        self.answer = b""
        self.sent = 0

    def run(self) -> None:
        if self.multipart:
            head = (b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
                    b"Content-Type: multipart/form-data; boundary=bb\r\n\r\n"
                    b'--bb\r\nContent-Disposition: form-data; name="file"; filename="a.nii.gz"\r\n\r\n')
        else:
            head = (b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
                    b"Content-Type: application/octet-stream\r\n\r\n")
        with socket.create_connection((LOOPBACK, self.port), timeout=5) as sock:
            sock.sendall(head)
            sock.settimeout(0.5)
            for _ in range(60):
                try:
                    if not self.answer:  # once answered, only read (until the server closes)
                        sock.sendall(b"x")
                        self.sent += 1
                    data = sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                self.answer += data


def test_slow_uploads_are_dropped_and_legitimate_clients_served(server: ServerProcess) -> None:
    port = _port(server)
    attackers = [SlowUploader(port, multipart=False), SlowUploader(port, multipart=True)]
    for attacker in attackers:
        attacker.start()
    depth = lambda: httpx.get(f"{server.base_url}/metrics", timeout=5).text  # noqa: E731
    wait_for(lambda: "swinxseg_queue_depth 2.0" in depth(), timeout=10, what="the attack to fill the queue")
    assert httpx.get(f"{server.base_url}/healthz", timeout=5).status_code == 200  # still answering

    started, statuses = time.monotonic(), []
    for _ in range(40):  # bounded: the slow uploads must be dropped within grace + a few seconds
        response = httpx.post(f"{server.base_url}/v1/segment?filename=a.nii.gz", content=_nifti_gz(),
                              headers={"Content-Type": "application/gzip"}, timeout=30)
        statuses.append(response.status_code)
        if response.status_code != 429:
            break
        assert int(response.headers["Retry-After"]) >= 1
        time.sleep(0.5)
    assert statuses[0] == 429, statuses  # the attack did hold every place at first
    assert statuses[-1] == 200, (statuses, log_tail(server.log_path))
    assert time.monotonic() - started < 15
    for attacker in attackers:
        attacker.join(timeout=40)
        assert attacker.answer.startswith(b"HTTP/1.1 408"), attacker.answer[:300]
        body = json.loads(attacker.answer.split(b"\r\n\r\n", 1)[1])
        assert body["error"] == "upload_timeout" and "too slow" in body["detail"]
        assert attacker.sent < 20  # dropped after the grace period, not after the whole body
    # The places were given back: the queue is empty again.
    assert "swinxseg_queue_depth 0.0" in depth()


def test_uvicorns_own_400_is_json(server: ServerProcess) -> None:
    for request in (b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
                    b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                    b"NOT-HTTP\r\n\r\n"):
        answer = _raw_exchange(_port(server), request)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), answer[:200]
        assert b"content-type: application/json" in head.lower()
        assert json.loads(body)["error"] == "bad_request"


def test_control_characters_in_a_url_do_not_forge_log_lines(server: ServerProcess) -> None:
    _raw_exchange(_port(server), b"GET /x%0a2030-01-01%20INFO%20forged%0d%1b[31m HTTP/1.1\r\nHost: x\r\n"
                  b"Connection: close\r\n\r\n")
    wait_for(lambda: "forged" in server.log_path.read_text(errors="replace"), timeout=10, what="the access line")
    lines = server.log_path.read_text(errors="replace").splitlines()
    forged = [line for line in lines if "forged" in line]
    assert forged and all(not line.startswith("2030") for line in forged)
    assert all("\\n2030-01-01 INFO forged\\r\\x1b[31m" in line for line in forged), forged


def test_work_dir_is_created_and_a_killed_servers_leftovers_are_swept(tmp_path: Path) -> None:
    work_dir = tmp_path / "not" / "yet" / "there"
    port = free_port()
    with run_server(_argv(), port=port, env=_env(work_dir, port), log_path=tmp_path / "first.log") as first:
        uploader = SlowUploader(port, multipart=False)
        uploader.start()
        wait_for(lambda: list(work_dir.glob("swinxseg-*/upload-*")), timeout=10, what="a spooled upload")
        first.proc.kill()  # kill -9 in the middle of the upload
        first.proc.wait(timeout=10)
    leftovers = list(work_dir.glob("swinxseg-*"))
    assert leftovers and list(work_dir.glob("swinxseg-*/upload-*"))  # the crash left them behind
    port = free_port()
    with run_server(_argv(), port=port, env=_env(work_dir, port), log_path=tmp_path / "second.log") as second:
        assert not any(p.exists() for p in leftovers), "start-up did not sweep the dead server's folder"
        assert len(list(work_dir.glob("swinxseg-*"))) == 1  # only the live server's own
        assert "removed 1 temp folder" in second.log_path.read_text()
    uploader.join(timeout=40)


def _vm_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(key)


def upload_peak_mb(base_url: str, pid: int, size_bytes: int) -> tuple[float, int]:
    """Stream ``size_bytes`` of zeros to ``base_url`` and return (growth of the server's peak
    RSS in MB, the response status). Zeros are no volume format: the upload is spooled whole,
    then refused (415) by the format check, so this measures the upload path alone."""
    baseline = _vm_kb(pid, "VmRSS")
    chunk = bytes(1 << 20)

    def body() -> Iterator[bytes]:
        for _ in range(size_bytes // len(chunk)):
            yield chunk

    response = httpx.post(f"{base_url}/v1/segment", content=body(),
                          headers={"Content-Type": "application/octet-stream"}, timeout=600)
    return (_vm_kb(pid, "VmHWM") - baseline) / 1024, response.status_code


def test_an_upload_is_streamed_to_disk_not_held_in_memory(server: ServerProcess) -> None:
    httpx.get(f"{server.base_url}/v1/model", timeout=10)
    # Warm the upload path first so lazily imported code is not counted.
    upload_peak_mb(server.base_url, server.pid, 4 << 20)
    growth_mb, status = upload_peak_mb(server.base_url, server.pid, 256 << 20)
    assert status == 415
    assert growth_mb < 48, f"the server's peak RSS grew {growth_mb:.1f} MB for a 256 MiB upload"
