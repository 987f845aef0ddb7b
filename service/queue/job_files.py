"""One queued job's folder in shared storage, as the API and the workers both read it.

``<storage>/<id>/``: ``job.json`` (what was submitted: written by the API before the task is
sent), ``input.bin`` (the upload, removed once the result is written), ``running.json`` (the
worker that took it, and when), ``progress.json`` (stage and windows done, rewritten as the case
runs), then the named result files (``mask.nii.gz``, ``preview.png``)
and ``result.json`` last. ``result.json`` is what makes a job finished; every file is written
to a temp name and renamed, so a reader (or a worker that takes over after another died) never
sees half a file, and a second delivery of a finished job finds ``result.json`` and stops.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

JOB_FILE, RUNNING_FILE, RESULT_FILE = "job.json", "running.json", "result.json"
PROGRESS_FILE = "progress.json"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}-", delete=False)
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: dict) -> None:
    write_atomic(path, json.dumps(value).encode())


def read_json(path: Path) -> dict | None:
    """The file's object, or ``None`` when it does not exist (yet, or any more)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
