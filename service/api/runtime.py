"""What one running app holds between startup and shutdown (built in the lifespan)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from service.api.cases import SegmenterLike
from service.api.gpu_guard import GpuGuard
from service.api.jobs import JobStore
from service.api.metrics import ServiceMetrics
from service.settings import Settings

log = logging.getLogger(__name__)

ModelStatus = Literal["loading", "warming_up", "ready", "failed"]


@dataclass
class ModelState:
    """The served model and how far it got: requests are taken only when ``ready``."""

    segmenter: SegmenterLike | None = None
    status: ModelStatus = "loading"
    detail: str = ""

    def mark(self, status: ModelStatus, detail: str = "") -> None:
        self.status, self.detail = status, detail
        log.info("model %s%s", status, f": {detail}" if detail else "")


@dataclass
class Runtime:
    settings: Settings
    metrics: ServiceMetrics
    work_dir: Path  # per-app temp folder, removed at shutdown
    guard: GpuGuard
    jobs: JobStore
    model: ModelState = field(default_factory=ModelState)
