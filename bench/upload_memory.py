"""Peak server memory of one upload: ``python -m bench.upload_memory [--gib 1]``.

Starts the formula app (the real service and engine, a threshold for a network) the way
``swinxseg serve`` serves a model, on a free 127.0.0.1 port with a temporary work folder,
streams ``--gib`` GiB of zeros to ``POST /v1/segment`` in 1 MiB chunks, and prints how far the
server's peak RSS (``VmHWM``) rose above its RSS before the upload. Zeros are no volume format:
the body is spooled to disk whole, then refused with 415, so the figure is the upload path's.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from service_e2e.serverkit import clean_env, free_port, run_server  # noqa: E402


def _vm_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="upload size in GiB (default 1)")
    args = parser.parse_args()
    size = int(args.gib * 2**30)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = clean_env(SWINXSEG_WORK_DIR=f"{tmp}/work", SWINXSEG_PORT=str(port), SWINXSEG_WARMUP="false",
                        SWINXSEG_DEVICE="cpu", SWINXSEG_MAX_UPLOAD_MB=str(max(2048, size // 2**20 + 1)))
        argv = [sys.executable, str(REPO / "tests" / "service_e2e" / "hostile_app.py")]
        with run_server(argv, port=port, env=env, log_path=Path(tmp) / "server.log") as server:
            base = server.base_url
            httpx.post(f"{base}/v1/segment", content=bytes(1 << 20), timeout=60)  # warm the path
            before = _vm_kb(server.pid, "VmRSS")
            chunk = bytes(1 << 20)
            started = time.perf_counter()
            response = httpx.post(f"{base}/v1/segment", content=(chunk for _ in range(size // len(chunk))),
                                  headers={"Content-Type": "application/octet-stream"}, timeout=600)
            seconds = time.perf_counter() - started
            peak = _vm_kb(server.pid, "VmHWM")
    print(f"upload {size / 2**30:.2f} GiB in {seconds:.1f} s -> HTTP {response.status_code}; server RSS before "
          f"{before / 1024:.1f} MB, peak {peak / 1024:.1f} MB: +{(peak - before) / 1024:.1f} MB for the upload")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
