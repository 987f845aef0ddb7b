"""A real queue-mode worker around the formula predictor (``python -m service_e2e.formula_worker NAME``
with ``tests`` on the path): the Celery worker of ``swinxseg worker``, without a model folder."""

from __future__ import annotations

import sys

from service_e2e.formula_app import formula_segmenter

from service.logs import configure_logging
from service.queue.worker_cli import run_worker
from service.settings import Settings

if __name__ == "__main__":
    settings = Settings()
    configure_logging(level="INFO")
    sys.exit(run_worker(settings, formula_segmenter(settings), hostname=sys.argv[1]))
