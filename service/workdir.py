"""The per-process temp folder: every temporary file of a server lives in it.

``claim_work_dir(base)`` makes ``base`` (``SWINXSEG_WORK_DIR``, default the system temp folder)
if it is missing, removes what dead processes left in it, and creates this process's folder
``swinxseg-<pid>-<random>/`` holding an ``flock``-ed lock file. The kernel drops the lock when
the process ends however it ends (``kill -9`` included), so at the next start-up a folder whose
lock can be taken belongs to nobody and is removed: spooled uploads, half-extracted zips, job
files. Folders of live servers (lock held) and folders without a lock file (not ours to judge)
are left alone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from service.errors import SwinxsegError

log = logging.getLogger(__name__)

PREFIX = "swinxseg-"
LOCK_NAME = ".owner.lock"


@dataclass
class WorkDir:
    """This process's folder; :meth:`release` removes it and drops the lock."""

    path: Path
    _lock_fd: int

    def release(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._lock_fd)


def ensure_base(base: Path | None, *, setting: str = "SWINXSEG_WORK_DIR") -> Path:
    """``base`` (created with its parents if missing), or the system temp folder.

    Raises:
        SwinxsegError (code ``invalid_settings``): it cannot be created or is not a folder.
    """
    folder = Path(base) if base is not None else Path(tempfile.gettempdir())
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SwinxsegError(
            f"{setting} {folder} cannot be created: {exc.strerror or exc}", code="invalid_settings"
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SwinxsegError(f"{setting} {folder} is not writable", code="invalid_settings")
    return folder


def sweep_stale(base: Path) -> list[Path]:
    """Remove the folders of dead processes in ``base``; returns what was removed."""
    removed = []
    for folder in sorted(base.glob(f"{PREFIX}*")):
        lock = folder / LOCK_NAME
        if folder.is_symlink() or not folder.is_dir() or not lock.is_file():
            continue
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # held: a live server
            continue
        shutil.rmtree(folder, ignore_errors=True)
        os.close(fd)
        removed.append(folder)
    if removed:
        log.warning("removed %d temp folder(s) left by stopped servers in %s", len(removed), base)
    return removed


def claim_work_dir(base: Path | None) -> WorkDir:
    """Create (if needed) and sweep ``base``, then make and lock this process's folder in it."""
    base = ensure_base(base)
    sweep_stale(base)
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return WorkDir(path=path, _lock_fd=fd)


def is_alive(folder: Path) -> bool:
    """Whether the process that claimed ``folder`` still runs (its lock is held; this process's
    own folder counts as alive too: ``flock`` conflicts across open files of one process)."""
    try:
        fd = os.open(Path(folder) / LOCK_NAME, os.O_RDWR)
    except OSError:
        return False  # swept or never ours: its owner is gone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
