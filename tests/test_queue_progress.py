"""The progress of ``swinxseg batch --queue``: a tqdm bar on stderr, or one log line per update."""

from __future__ import annotations

import logging

from service.queue.batch import Progress


def test_the_bar_counts_finished_cases_and_shows_what_runs_and_waits(capsys):
    progress = Progress(3, bar=True)
    progress.update(1, running=2, queued=0)
    progress.update(2, running=0, queued=0)
    progress.close()
    err = capsys.readouterr().err
    assert "cases" in err and "3/3" in err and "running=" in err


def test_without_a_bar_each_update_is_one_log_line(caplog):
    caplog.set_level(logging.INFO, logger="service.queue.batch")
    progress = Progress(4, bar=False)
    progress.update(1, running=1, queued=2)
    progress.update(0, running=1, queued=2)  # nothing finished: no line
    progress.update(3, running=0, queued=0)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["batch: 1/4 case(s) done, 1 running, 2 queued", "batch: 4/4 case(s) done, 0 running, 0 queued"]
