"""Concurrent clients against ONE real server process: only 200 or 429, never a 5xx, bounded
memory, and /metrics counts every request.

``tests/api/test_load.py`` runs the same traffic against uvicorn in a thread of the test process
with a fake segmenter; this one is the deployed shape: a separate process (so its RSS is its
own), the real engine (a formula for a network), the production queue size.
"""

from __future__ import annotations

import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
from api.apikit import nifti_gz_bytes
from service_e2e.serverkit import metric_samples, rss_mb

log = logging.getLogger(__name__)

CLIENTS, REQUESTS_EACH = 8, 3
# Generous on purpose (24 small cases grow a ~380 MB server by ~20 MB): it catches runaway growth,
# such as a thread pool or a full-size buffer per request, without flaking on allocator noise.
RSS_GROWTH_LIMIT_MB = 1500


def test_concurrent_clients_get_200_or_429_and_every_request_is_counted(formula_server):
    base = formula_server.base_url
    body = nifti_gz_bytes()  # 24x20x16 synthetic CT: milliseconds per case
    rss_before = rss_mb(formula_server.pid)

    def client_session(_: int) -> list[httpx.Response]:
        with httpx.Client(base_url=base, timeout=60) as client:
            return [
                client.post("/v1/segment", content=body, headers={"Content-Type": "application/gzip"})
                for _ in range(REQUESTS_EACH)
            ]

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        responses = [r for session in pool.map(client_session, range(CLIENTS)) for r in session]
    rss_after = rss_mb(formula_server.pid)

    tally = Counter(r.status_code for r in responses)
    log.info("statuses %s; server RSS %.0f -> %.0f MB", dict(tally), rss_before, rss_after)
    assert set(tally) <= {200, 429}, {r.status_code: r.text[:300] for r in responses if r.status_code >= 500}
    assert tally[200] >= 1
    assert all("Retry-After" in r.headers for r in responses if r.status_code == 429)
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_MB, f"RSS {rss_before:.0f} -> {rss_after:.0f} MB"

    counted = {
        labels["status"]: value
        for labels, value in metric_samples(base, "swinxseg_http_requests_total")
        if labels["route"] == "/v1/segment"
    }
    assert sum(counted.values()) == CLIENTS * REQUESTS_EACH
    assert counted == {str(status): float(n) for status, n in tally.items()}
