"""Where job records and results live: a folder that outlives the server process.

The per-process work folder (:mod:`service.workdir`) is removed when its server stops and swept
when it died, so durable job data cannot live there. ``SWINXSEG_STORAGE_DIR`` names the folder
(in queue mode a volume every worker mounts); without it, ``swinxseg_jobs/`` directly under the
work base (``SWINXSEG_WORK_DIR`` or the system temp folder), whose name the start-up sweep
(``swinxseg-*``) never matches.
"""

from __future__ import annotations

import re
from pathlib import Path

from service.settings import Settings
from service.workdir import ensure_base

JOBS_FOLDER = "swinxseg_jobs"
_JOB_ID = re.compile(r"[0-9a-f]{32}")


def storage_root(settings: Settings) -> Path:
    """The jobs folder (created if missing).

    Raises:
        SwinxsegError (``invalid_settings``): the folder cannot be created or written.
    """
    if settings.storage_dir is not None:
        return ensure_base(settings.storage_dir, setting="SWINXSEG_STORAGE_DIR")
    return ensure_base(ensure_base(settings.work_dir) / JOBS_FOLDER)


def is_job_id(job_id: str) -> bool:
    """Ids are uuid4 hex; anything else (``..``, a path) never names a folder."""
    return _JOB_ID.fullmatch(job_id) is not None
