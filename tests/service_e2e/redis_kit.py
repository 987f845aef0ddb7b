"""A real Redis (Debian's ``redis-server``) on a free loopback port with a temporary folder and no
persistence, started and stopped by its own process id."""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from service_e2e.serverkit import LOOPBACK, free_port, stop_process, wait_for

REDIS_SERVER = shutil.which("redis-server")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    folder: Path
    port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        assert REDIS_SERVER is not None
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - the child writes to it
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(lambda: _answers(self.port), timeout=30, what=f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10)
            self.proc = None


def new_redis(folder: Path) -> RedisServer:
    folder.mkdir(parents=True, exist_ok=True)
    server = RedisServer(folder=folder, port=free_port())
    server.start()
    return server
