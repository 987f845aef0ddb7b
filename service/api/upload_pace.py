"""How long an upload may take: a stall timeout and a minimum average rate.

A place in the wait queue is taken before the body is read (so a full server refuses at once),
which means a client that declares a large body and then sends a byte every few seconds would
hold that place indefinitely; a handful of them would lock everyone else out. Each wait for
the next chunk is therefore bounded by the sooner of

- ``idle_timeout_s``: no byte at all for that long (a stalled upload), and
- the rate deadline ``start + grace_s + received / min_bytes_per_s``: after the grace period the
  upload must have averaged at least ``min_bytes_per_s`` (a crawling upload).

Either way the upload is dropped with 408 and its queue place and spool file are released.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from service.api.errors import HttpError


class UploadTimeoutError(HttpError):
    """The upload stalled or crawled below the minimum rate (HTTP 408; the connection is closed)."""

    code, http_status = "upload_timeout", 408

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Connection": "close"})


@dataclass
class UploadPace:
    """Deadlines of one upload. Times in seconds, rates in bytes per second (0 = no rate check)."""

    idle_timeout_s: float = 30.0
    min_bytes_per_s: int = 65_536
    grace_s: float = 10.0
    started: float = field(default_factory=time.monotonic)

    def next_wait_s(self, received: int) -> float:
        """Seconds the next chunk may take; raises UploadTimeoutError when the rate deadline passed."""
        elapsed = time.monotonic() - self.started
        wait = self.idle_timeout_s
        if self.min_bytes_per_s > 0:
            rate_deadline = self.grace_s + received / self.min_bytes_per_s
            if rate_deadline <= elapsed:
                raise self.too_slow(received)
            wait = min(wait, rate_deadline - elapsed)
        return wait

    def timed_out(self, received: int, waited_s: float) -> UploadTimeoutError:
        """The error for a wait that ran out: a stall or the rate deadline."""
        if waited_s >= self.idle_timeout_s - 1e-3:
            return UploadTimeoutError(
                f"upload stalled: nothing received for {self.idle_timeout_s:g} s after {received:,} bytes "
                "(upload_idle_timeout_s); the upload was dropped"
            )
        return self.too_slow(received)

    def too_slow(self, received: int) -> UploadTimeoutError:
        elapsed = time.monotonic() - self.started
        return UploadTimeoutError(
            f"upload too slow: {received:,} bytes in {elapsed:.1f} s, below the minimum of "
            f"{self.min_bytes_per_s:,} bytes/s after the first {self.grace_s:g} s (upload_min_bytes_per_s); "
            "the upload was dropped"
        )
