"""How far a case has got: its stage and, during inference, windows done of windows to run.

The engine reports (:class:`service.segmenter.Segmenter` calls ``progress(stage, done, total)``
with ``preprocessing``, then ``inference`` after every window batch); the job stores add the
stages around it (``queued``, ``reading``, ``writing``, ``done``) and show it in the job status
(``progress`` in ``GET /v1/jobs/{id}``). Written by the worker thread, read by the event loop:
:meth:`Progress.as_dict` copies the fields under a lock so a reader never sees a done count from
one update with the total of another.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal

Stage = Literal["queued", "reading", "preprocessing", "inference", "writing", "done"]
STAGES: tuple[str, ...] = ("queued", "reading", "preprocessing", "inference", "writing", "done")

#: ``progress(stage, windows_done, windows_total)``; counts are 0 before inference starts.
ProgressCallback = Callable[[str, int, int], None]


class Progress:
    """One case's progress; a callable ``ProgressCallback`` (hand it to ``Segmenter.segment``).

    ``windows_total`` is the windows the sliding window will run (empty windows outside the body
    are skipped and not counted); ``windows_done`` reaches it when inference ends.
    ``on_change``: called (outside the lock) after each update, e.g. to write it to a file.
    """

    def __init__(self, stage: str = "queued", *, on_change: Callable[[dict], None] | None = None) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown progress stage {stage!r}; one of {', '.join(STAGES)}")
        self._lock = threading.Lock()
        self._stage, self._done, self._total = stage, 0, 0
        self._on_change = on_change

    def __call__(self, stage: str, windows_done: int, windows_total: int) -> None:
        self.update(stage, windows_done, windows_total)

    def update(self, stage: str, windows_done: int | None = None, windows_total: int | None = None) -> None:
        """Move to ``stage``; window counts given replace the current ones (kept otherwise)."""
        if stage not in STAGES:
            raise ValueError(f"unknown progress stage {stage!r}; one of {', '.join(STAGES)}")
        with self._lock:
            self._stage = stage
            if windows_total is not None:
                self._total = int(windows_total)
            if windows_done is not None:
                self._done = int(windows_done)
            snapshot = self._snapshot()
        if self._on_change is not None:
            self._on_change(snapshot)

    @property
    def stage(self) -> str:
        return self._stage

    def as_dict(self) -> dict:
        """``{"stage": ..., "windows_done": n, "windows_total": m}`` (one consistent copy)."""
        with self._lock:
            return self._snapshot()

    def _snapshot(self) -> dict:
        return {"stage": self._stage, "windows_done": self._done, "windows_total": self._total}
