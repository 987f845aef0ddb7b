"""The embedded store's SQLite records: a folder written by an older server (no outputs or
statistics columns) is upgraded in place, and its rows still load."""

from __future__ import annotations

import sqlite3

from service.api.job_records import DB_NAME, JobRecords

_OLD_SCHEMA = """CREATE TABLE jobs (id TEXT PRIMARY KEY, owner TEXT NOT NULL, filename TEXT,
    media_type TEXT NOT NULL, want_preview INTEGER NOT NULL, created_at REAL NOT NULL, status TEXT NOT NULL,
    started_at REAL, finished_at REAL, metrics TEXT, warnings TEXT NOT NULL DEFAULT '[]', error_code TEXT,
    error_detail TEXT, expired_at REAL)"""


def test_an_older_records_file_gains_the_new_columns(tmp_path):
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.execute(_OLD_SCHEMA)
        db.execute("INSERT INTO jobs (id, owner, media_type, want_preview, created_at, status) "
                   "VALUES ('a' , 'w', 'application/gzip', 0, 1.0, 'done')")
    records = JobRecords(tmp_path)
    old = records.load("a")
    assert old["outputs"] == ("nifti",) and old["statistics"] is None
    records.save({**old, "id": "b", "outputs": ["nifti", "seg"], "statistics": [{"label": 1, "voxels": 3}]})
    new = records.load("b")
    assert new["outputs"] == ("nifti", "seg") and new["statistics"] == [{"label": 1, "voxels": 3}]
    records.close()
    JobRecords(tmp_path).close()  # opening an upgraded file again changes nothing
