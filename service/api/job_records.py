"""The embedded job store's records on disk: one SQLite file (standard library ``sqlite3``).

Why SQLite and not a JSON file per job: a record changes several times (queued, running, done)
and several server processes may share one storage folder; SQLite gives atomic updates and
locking across processes for free, and one query finds the expired or interrupted jobs.

Each record names its *owner*, the work folder of the server process running it
(:mod:`service.workdir`). At start-up a server marks failed the queued or running jobs whose owner
is no longer alive: their process died (or was restarted) before they finished.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

DB_NAME = "jobs.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    filename TEXT,
    media_type TEXT NOT NULL,
    want_preview INTEGER NOT NULL,
    created_at REAL NOT NULL,
    status TEXT NOT NULL,
    started_at REAL,
    finished_at REAL,
    metrics TEXT,
    warnings TEXT NOT NULL DEFAULT '[]',
    error_code TEXT,
    error_detail TEXT,
    expired_at REAL,
    outputs TEXT NOT NULL DEFAULT '["nifti"]',
    statistics TEXT,
    dicomweb TEXT,
    idempotency_key TEXT
)
"""
# Columns added after the first release: a storage folder written by an older server gains them.
_ADDED_COLUMNS = {"outputs": "TEXT NOT NULL DEFAULT '[\"nifti\"]'", "statistics": "TEXT", "dicomweb": "TEXT",
                  "idempotency_key": "TEXT"}
FIELDS = (
    "id", "owner", "filename", "media_type", "want_preview", "created_at", "status",
    "started_at", "finished_at", "metrics", "warnings", "error_code", "error_detail", "expired_at",
    "outputs", "statistics", "dicomweb", "idempotency_key",
)


class JobRecords:
    """Rows of ``<root>/jobs.sqlite3``; every method is one short transaction (thread-safe)."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / DB_NAME
        # check_same_thread=False: jobs update their row from worker threads; the lock serialises.
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            self._db.execute(_SCHEMA)
            present = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
            for name, kind in _ADDED_COLUMNS.items():
                if name not in present:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def save(self, row: dict) -> None:
        values = {**row, "metrics": _dump(row.get("metrics")), "warnings": json.dumps(row.get("warnings") or []),
                  "outputs": json.dumps(list(row.get("outputs") or ["nifti"])), "statistics": _dump(row.get("statistics")),
                  "dicomweb": _dump(row.get("dicomweb"))}
        names = ", ".join(FIELDS)
        marks = ", ".join(f":{name}" for name in FIELDS)
        with self._lock:
            self._db.execute(f"INSERT OR REPLACE INTO jobs ({names}) VALUES ({marks})",  # noqa: S608
                             {name: values.get(name) for name in FIELDS})

    def load(self, job_id: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        record = dict(row)
        record["metrics"] = json.loads(record["metrics"]) if record["metrics"] else None
        record["warnings"] = json.loads(record["warnings"] or "[]")
        record["outputs"] = tuple(json.loads(record["outputs"] or '["nifti"]'))
        record["statistics"] = json.loads(record["statistics"]) if record["statistics"] else None
        record["dicomweb"] = json.loads(record["dicomweb"]) if record.get("dicomweb") else None
        return record

    def find_key(self, key: str) -> str | None:
        """The newest unexpired job with this idempotency key (DICOMweb jobs), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM jobs WHERE idempotency_key = ? AND expired_at IS NULL ORDER BY created_at DESC LIMIT 1",
                (key,),
            ).fetchone()
        return None if row is None else row["id"]

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def expired_by(self, now: float, ttl_s: float) -> list[str]:
        """Ids of the finished jobs whose results are due to go at ``now``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE expired_at IS NULL AND finished_at IS NOT NULL AND finished_at + ? <= ?",
                (ttl_s, now),
            ).fetchall()
        return [row["id"] for row in rows]

    def mark_expired(self, job_id: str, now: float, *, keep: int) -> None:
        """Keep the id (410 rather than 404) and drop all but the ``keep`` newest expired ids."""
        with self._lock:
            self._db.execute("UPDATE jobs SET expired_at = ? WHERE id = ?", (now, job_id))
            self._db.execute(
                "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE expired_at IS NOT NULL "
                "ORDER BY expired_at DESC LIMIT -1 OFFSET ?)",
                (keep,),
            )

    def unfinished(self) -> list[dict]:
        """Queued and running jobs of every owner."""
        with self._lock:
            rows = self._db.execute("SELECT id, owner FROM jobs WHERE status IN ('queued', 'running')").fetchall()
        return [dict(row) for row in rows]

    def count_live(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE expired_at IS NULL").fetchone()[0]


def _dump(value: object) -> str | None:
    return None if value is None else json.dumps(value)
