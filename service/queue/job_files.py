"""One queued job's folder in shared storage, as the API and the workers both read it.

``<storage>/<id>/``: ``job.json`` (what was submitted: written by the API before the task is
sent), ``input.bin`` (the upload, removed once the result is written), ``running.json`` (the
worker that took it, and when), ``progress.json`` (stage and windows done, rewritten as the case
runs), then the named result files (``mask.nii.gz``, ``preview.png``)
and ``result.json`` last. ``result.json`` is what makes a job finished; every file is written
to a temp name and renamed, so a reader (or a worker that takes over after another died) never
sees half a file, and a second delivery of a finished job finds ``result.json`` and stops.
``result.json`` is written once (:func:`write_json_once`): when two deliveries of one job ran
at the same time (a case longer than the visibility timeout), the first result stays; a later
delivery that failed because the first had already removed ``input.bin`` cannot replace it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import tempfile
from pathlib import Path

JOB_FILE, RUNNING_FILE, RESULT_FILE = "job.json", "running.json", "result.json"
PROGRESS_FILE = "progress.json"

log = logging.getLogger(__name__)
# Filesystems without hard links (some SMB and FUSE mounts) answer these to os.link.
_NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK}


def _written_temp(path: Path, data: bytes) -> Path:
    """``data`` in a synced temp file beside ``path`` (the caller renames or links it, then
    removes what is left)."""
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}-", delete=False)
    try:
        with handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
    return Path(handle.name)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    scratch = _written_temp(path, data)
    try:
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise


def write_json(path: Path, value: dict) -> None:
    write_atomic(path, json.dumps(value).encode())


def write_json_once(path: Path, value: dict) -> bool:
    """Create ``path`` holding ``value`` unless it exists; True when this call created it.

    Atomic for readers and writers alike: the JSON goes to a temp file that is then hard-linked
    to ``path`` (``link`` fails when the name is taken, unlike ``rename``, which replaces). On a
    filesystem without hard links it falls back to check-then-rename, which leaves a window of
    a few microseconds between two writers.
    """
    scratch = _written_temp(path, json.dumps(value).encode())
    try:
        try:
            os.link(scratch, path)
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            log.debug("no hard links in %s (%s): check-then-rename", path.parent, exc)
            if path.exists():
                return False
            os.replace(scratch, path)
            return True
    finally:
        scratch.unlink(missing_ok=True)


def read_json(path: Path) -> dict | None:
    """The file's object, or ``None`` when it does not exist (yet, or any more)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
