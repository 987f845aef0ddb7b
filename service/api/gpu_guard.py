"""One inference at a time per process, and a bounded wait queue in front of it.

The GPU memory cap is per process, so two concurrent cases would each assume the whole cap:
the guard serialises inference with an ``asyncio.Semaphore(1)``. A case is *admitted* (takes a
queue place) before its upload is read, so a full server answers 429 at once instead of after
receiving gigabytes, and memory stays bounded by ``queue_size + 1`` cases.

Usage::

    with guard.admit() as ticket:      # QueueFullError (429) when queue_size cases already wait
        volume = await decode(...)     # still holding the queue place
        async with ticket.running():   # waits for the slot; the queue place becomes the slot
            await run_in_thread(segment)
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

from service.api.errors import QueueFullError

# Starting guess for Retry-After before any case has been timed.
_INITIAL_CASE_SECONDS = 10.0
_MAX_RETRY_AFTER_S = 3600


class GpuGuard:
    """Create inside the running event loop (the app's lifespan), one per app."""

    def __init__(self, queue_size: int) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.queue_size = queue_size
        self.waiting = 0  # admitted, not yet running
        self.in_flight = 0  # holding the slot (0 or 1)
        self._slot = asyncio.Semaphore(1)
        self._mean_case_seconds = _INITIAL_CASE_SECONDS
        self._running_since: float | None = None  # monotonic start of the case holding the slot

    def admit(self) -> Ticket:
        """Take a queue place or raise :class:`QueueFullError` with a ``Retry-After`` estimate."""
        if self.waiting >= self.queue_size:
            raise QueueFullError(
                f"{self.waiting} cases already wait for the model (queue size {self.queue_size}); retry later",
                retry_after_s=self.retry_after_s(),
            )
        self.waiting += 1
        return Ticket(self)

    def retry_after_s(self) -> int:
        """Seconds until the queue has worked through the cases ahead: what is left of the running
        case plus one case time per waiting case. The case time is the moving average of recent
        cases, but never less than the running case has already taken (a run of small cases
        must not make a long one look short); the running case is assumed to need at least
        half a case time more."""
        per_case = self._mean_case_seconds
        remaining = 0.0
        if self._running_since is not None:
            elapsed = time.monotonic() - self._running_since
            per_case = max(per_case, elapsed)
            remaining = max(per_case - elapsed, 0.5 * per_case)
        estimate = remaining + self.waiting * per_case
        return int(min(_MAX_RETRY_AFTER_S, max(1, math.ceil(estimate))))

    def _record(self, seconds: float) -> None:
        # Exponential moving average: follows a change of case sizes within a few cases.
        self._mean_case_seconds = 0.7 * self._mean_case_seconds + 0.3 * seconds


class Ticket:
    """A queue place; :meth:`running` turns it into the inference slot. Close it when done."""

    def __init__(self, guard: GpuGuard) -> None:
        self._guard = guard
        self._state = "waiting"  # -> "running" -> "done", or "waiting" -> "done"

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        if self._state != "waiting":
            raise RuntimeError(f"ticket is {self._state}, cannot run again")
        await self._guard._slot.acquire()
        guard = self._guard
        guard.waiting -= 1
        guard.in_flight += 1
        self._state = "running"
        started = guard._running_since = time.monotonic()
        try:
            yield
        finally:
            guard._running_since = None
            guard.in_flight -= 1
            guard._record(time.monotonic() - started)
            self._state = "done"
            guard._slot.release()

    def close(self) -> None:
        """Give the queue place back if the case never reached the slot (bad input, cancelled)."""
        if self._state == "waiting":
            self._guard.waiting -= 1
        self._state = "done"

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
