"""Queue mode: K jobs on one worker against the same K jobs on two, printed as one table.

    python -m bench.queue_workers [--jobs 8] [--workers 1,2] [--shape 144,144,96] [--model weights/demo]

Real components: Debian's ``redis-server`` on a free loopback port, and ``swinxseg worker``
processes (CPU, one thread each, warmed up before the clock starts) sharing a temporary storage
folder. The K jobs are submitted at once through :func:`service.queue.submission.submit_job`, the
path the API and ``swinxseg batch --queue`` use; each is the same synthetic CT (a soft-tissue box
with a brighter core, 1 mm voxels) so every job costs the same.

Columns: ``makespan s`` first submission to last result; ``jobs/min`` K over the makespan;
``x`` throughput over the first row's; ``queue wait s`` mean seconds from submission to a worker
taking the job; ``per job s`` mean seconds a worker spent on one (read, segment, write); ``CPU s
per job`` the workers' user + system CPU seconds over the run divided by K (constant when a slower
``per job s`` comes from sharing the cores, not from more work); ``jobs per worker`` how they spread. On 2 cores with one thread per worker, two workers should give about 2x.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from service.queue.job_files import JOB_FILE, RESULT_FILE, read_json
from service.settings import Settings

log = logging.getLogger("bench.queue_workers")
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, *, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    """``redis-server`` without persistence on a free loopback port; (process, URL)."""
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed (make redis)")
    port = _free_port()
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    _wait(answers, timeout=30, what="redis-server")
    return proc, f"redis://127.0.0.1:{port}/0"


def write_ct(path: Path, shape: tuple[int, int, int]) -> Path:
    hu = np.full(shape, -1000, dtype=np.int16)
    hu[8:-8, 8:-8, 8:-8] = 40
    hu[24:-24, 24:-24, 24:-24] = 150
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(hu, affine), path)
    return path


def start_workers(count: int, env: dict[str, str], logs: Path) -> list[subprocess.Popen]:
    """``count`` workers, each warmed up and consuming (Celery's ``ready.`` line) on return."""
    procs = []
    for index in range(count):
        log_path = logs / f"worker{count}-{index}.log"
        with open(log_path, "wb") as out:
            procs.append(subprocess.Popen([str(BIN / "swinxseg"), "worker", "--name", f"w{index + 1}"], env=env,
                                          stdout=out, stderr=subprocess.STDOUT))
    for index, proc in enumerate(procs):
        log_path = logs / f"worker{count}-{index}.log"

        def ready(proc=proc, log_path=log_path) -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited:\n{log_path.read_text(errors='replace')[-3000:]}")
            return " ready." in log_path.read_text(errors="replace")

        _wait(ready, timeout=300, what=f"worker {index} ready")
    return procs


def cpu_seconds(procs: list[subprocess.Popen]) -> float:
    """User + system CPU seconds the processes have used (Linux /proc; 0 elsewhere)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in procs:
        try:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def run_config(workers: int, *, jobs: int, ct: Path, base_env: dict[str, str], tmp: Path) -> dict:
    """K jobs on ``workers`` fresh worker processes; the row of the table."""
    from service.queue.celery_app import make_celery
    from service.queue.submission import submit_job

    storage = tmp / f"storage-{workers}"
    storage.mkdir()
    env = {**base_env, "SWINXSEG_STORAGE_DIR": str(storage), "SWINXSEG_QUEUE_NAME": f"bench{workers}"}
    procs = start_workers(workers, env, tmp)
    try:
        settings = Settings(queue_url=env["SWINXSEG_QUEUE_URL"], queue_name=env["SWINXSEG_QUEUE_NAME"],
                            storage_dir=storage)
        celery = make_celery(settings)
        meta = {"filename": ct.name, "media_type": "application/octet-stream", "want_preview": False, "overlap": None}
        cpu_before = cpu_seconds(procs)
        ids = [submit_job(storage, celery, settings, place_input=lambda p: shutil.copyfile(ct, p), meta=meta)
               for _ in range(jobs)]
        _wait(lambda: all((storage / i / RESULT_FILE).exists() for i in ids), timeout=3600, what="the jobs",
              interval=0.1)
        cpu_per_job = (cpu_seconds(procs) - cpu_before) / jobs
    finally:
        stop(procs)
    records = [(read_json(storage / i / JOB_FILE), read_json(storage / i / RESULT_FILE)) for i in ids]
    failed = [r for _, r in records if r["status"] != "done"]
    if failed:
        raise RuntimeError(f"{len(failed)} job(s) failed: {failed[0].get('error')}")
    makespan = max(r["finished_at"] for _, r in records) - min(m["created_at"] for m, _ in records)
    spread: dict[str, int] = {}
    for _, result in records:
        spread[result["worker"]] = spread.get(result["worker"], 0) + 1
    return {
        "workers": workers, "jobs": jobs, "makespan_s": makespan, "jobs_per_min": 60 * jobs / makespan,
        "queue_wait_s": statistics.mean(r["started_at"] - m["created_at"] for m, r in records),
        "per_job_s": statistics.mean(r["finished_at"] - r["started_at"] for _, r in records),
        "cpu_per_job_s": cpu_per_job, "spread": sorted(spread.values(), reverse=True),
        "backend": records[0][1]["metrics"]["backend"], "windows": records[0][1]["metrics"]["windows_run"],
    }


def table(rows: list[dict]) -> str:
    header = "| workers | jobs | makespan s | jobs/min | x | queue wait s | per job s | CPU s per job | jobs per worker |"
    lines = [header, "| " + " | ".join("---" for _ in range(9)) + " |"]
    base = rows[0]["jobs_per_min"]
    for row in rows:
        lines.append(f"| {row['workers']} | {row['jobs']} | {row['makespan_s']:.1f} | {row['jobs_per_min']:.1f} | "
                     f"{row['jobs_per_min'] / base:.2f} | {row['queue_wait_s']:.1f} | {row['per_job_s']:.2f} | "
                     f"{row['cpu_per_job_s']:.2f} | "
                     f"{'/'.join(map(str, row['spread']))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=8, help="jobs per configuration (default 8)")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    parser.add_argument("--shape", default="144,144,96", help="the synthetic CT's voxels, 1 mm (default 144,144,96)")
    parser.add_argument("--model", type=Path, help="exported model folder (default: the demo weights)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    shape = tuple(int(v) for v in args.shape.split(","))
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as name:
        tmp = Path(name)
        redis, url = start_redis(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SWINXSEG_")}
        env.update(SWINXSEG_QUEUE_URL=url, SWINXSEG_WORK_DIR=str(tmp / "work"), SWINXSEG_DEVICE="cpu",
                   SWINXSEG_CPU_THREADS="1", OMP_NUM_THREADS="1", SWINXSEG_WORKER_METRICS_PORT="0",
                   SWINXSEG_WARMUP="true")
        if args.model:
            env["SWINXSEG_MODEL_DIR"] = str(args.model)
        try:
            ct = write_ct(tmp / "ct.nii.gz", shape)
            rows = [run_config(int(n), jobs=args.jobs, ct=ct, base_env=env, tmp=tmp) for n in args.workers.split(",")]
        finally:
            redis.terminate()
            redis.wait(timeout=30)
    print(f"{args.jobs} jobs of a {'x'.join(map(str, shape))} CT (1 mm, {rows[0]['windows']} windows of the model), "
          f"backend {rows[0]['backend']}, CPU, 1 thread per worker, on {os.cpu_count()} cores; "
          f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
