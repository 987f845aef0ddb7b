"""A queue-mode cluster for the end-to-end tests: Debian's redis-server, worker processes around the
formula model (``service_e2e.formula_worker``, CPU, one thread each) and, on demand, the API, all
on loopback ports with temporary folders.

Each forward pass of the workers sleeps ``window_delay_s`` so that jobs last long enough to
spread over both workers and to kill a worker (or a batch) in the middle of one.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from service_e2e.formula_app import DELAY_ENV
from service_e2e.redis_kit import RedisServer, new_redis
from service_e2e.serverkit import (
    REPO,
    clean_env,
    formula_server_argv,
    free_port,
    log_tail,
    run_server,
    stop_process,
    wait_for,
)


@dataclass
class Cluster:
    tmp: Path
    redis: RedisServer
    env: dict[str, str]
    window_delay_s: float = 0.15
    api_port: int = field(default_factory=free_port)
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def storage(self) -> Path:
        return Path(self.env["SWINXSEG_STORAGE_DIR"])

    def start_worker(self, name: str, *, metrics_port: int = 0) -> None:
        log_path = self.tmp / f"{name}.log"
        env = {**self.env, DELAY_ENV: str(self.window_delay_s), "SWINXSEG_SW_BATCH_SIZE": "1",
               "SWINXSEG_WORKER_METRICS_PORT": str(metrics_port), "PYTHONPATH": f"{REPO / 'tests'}:{REPO}"}
        with open(log_path, "wb") as log:
            self.workers[name] = subprocess.Popen([sys.executable, "-m", "service_e2e.formula_worker", name],
                                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        proc = self.workers[name]

        def ready() -> bool:
            assert proc.poll() is None, f"worker {name} exited:\n{log_tail(log_path)}"
            return " ready." in log_path.read_text(errors="replace")

        wait_for(ready, timeout=120, what=f"worker {name} ready")

    def api(self, name: str, **extra: str):
        return run_server(formula_server_argv(self.api_port), port=self.api_port, env={**self.env, **extra},
                          log_path=self.tmp / f"api-{name}.log")


@contextmanager
def running_cluster(tmp: Path, workers=("w1", "w2"), *, window_delay_s: float = 0.15) -> Iterator[Cluster]:
    """Redis and ``workers`` started (each ready: warmed up, consuming); all stopped after."""
    redis = new_redis(tmp / "redis")
    env = clean_env(
        SWINXSEG_QUEUE_URL=redis.url, SWINXSEG_STORAGE_DIR=str(tmp / "storage"), SWINXSEG_WORK_DIR=str(tmp / "work"),
        SWINXSEG_DEVICE="cpu", SWINXSEG_CPU_THREADS="1", SWINXSEG_WARMUP="false",
        SWINXSEG_QUEUE_VISIBILITY_TIMEOUT_S="4", OMP_NUM_THREADS="1",
    )
    cluster = Cluster(tmp=tmp, redis=redis, env=env, window_delay_s=window_delay_s)
    try:
        for name in workers:
            cluster.start_worker(name)
        yield cluster
    finally:
        for proc in cluster.workers.values():
            stop_process(proc, timeout=20)
        redis.stop()
