"""bench.queue_workers end to end at its smallest (2 jobs of one window, 1 then 2 real workers on a
real redis-server): the table's rows say what ran. No timing assertions (a benchmark prints)."""

from __future__ import annotations

import shutil

import pytest

from bench.queue_workers import main


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed (make redis)")
def test_one_and_two_workers_give_a_row_each(capsys):
    assert main(["--jobs", "2", "--workers", "1,2", "--shape", "96,96,96"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    cells = [[cell.strip() for cell in row] for row in rows]
    assert [row[:2] for row in cells] == [["1", "2"], ["2", "2"]]
    assert cells[0][4] == "1.00" and cells[0][8] == "2" and float(cells[0][7]) > 0 and float(cells[1][4]) > 0
    assert cells[1][8] in {"1/1", "2"}  # jobs per worker add up to the two jobs
    assert "1 windows of the model" in out and "1 thread per worker" in out
