"""A real uvicorn server on 127.0.0.1 under concurrent clients: only 200 or 429, never a 5xx,
and the metrics count every request."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from api.apikit import FakeSegmenter, nifti_gz_bytes
from prometheus_client.parser import text_string_to_metric_families

from service.api.app import create_app

CLIENTS, REQUESTS_EACH = 8, 3


@contextmanager
def live_server(app) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    base = f"http://127.0.0.1:{port}"
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        while httpx.get(f"{base}/readyz").status_code != 200:
            time.sleep(0.02)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def http_requests_total(base: str, route: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics").text
    by_status: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "swinxseg_http_requests_total" and sample.labels["route"] == route:
                by_status[sample.labels["status"]] = sample.value
    return by_status


@pytest.mark.slow
def test_concurrent_clients_get_200_or_429_and_every_request_is_counted(make_settings):
    fake = FakeSegmenter(seconds=0.05)
    app = create_app(make_settings(queue_size=2), segmenter=fake)
    body = nifti_gz_bytes()

    def client_session(_: int) -> list[int]:
        with httpx.Client(timeout=60) as client:
            return [
                client.post(
                    f"{base}/v1/segment", content=body, headers={"Content-Type": "application/gzip"}
                ).status_code
                for _ in range(REQUESTS_EACH)
            ]

    with live_server(app) as base:
        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            statuses = [code for codes in pool.map(client_session, range(CLIENTS)) for code in codes]
        counted = http_requests_total(base, "/v1/segment")

    tally = Counter(statuses)
    assert set(tally) <= {200, 429}, tally
    assert tally[200] >= 1
    assert fake.max_concurrent == 1
    assert counted == {str(code): float(n) for code, n in tally.items()}


@pytest.mark.slow
def test_oversized_chunked_upload_is_refused_before_it_is_all_sent(make_settings):
    """A raw socket, chunked upload without Content-Length: the 413 must come back while we are
    still sending, i.e. the server counts bytes as they arrive instead of buffering the body."""
    app = create_app(make_settings(max_upload_mb=1), segmenter=FakeSegmenter())
    chunk = b"\0" * 65536
    limit_to_send = 256 * 2**20
    with live_server(app) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(
                b"POST /v1/segment HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            sent, reply = 0, b""
            while sent < limit_to_send:
                readable, _, _ = select.select([conn], [], [], 0)
                if readable:
                    reply = conn.recv(65536)
                    break
                try:
                    conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                except OSError:  # the server closed on us: read what it said
                    reply = conn.recv(65536)
                    break
                sent += len(chunk)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert sent < 32 * 2**20, f"sent {sent} bytes before the refusal"
        assert httpx.get(f"{base}/healthz").status_code == 200
