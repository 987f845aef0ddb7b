"""Progress from the engine: stage order, and windows done reaching windows to run."""

from __future__ import annotations

import threading

import pytest
import torch
from synthetic import intensity_logits, make_affine, phantom_in_world

from service.errors import CaseCancelledError
from service.inference.predictors import FormulaPredictor
from service.inference.stitcher import sliding_window_labels
from service.progress import STAGES, Progress
from service.segmenter import Segmenter
from service.settings import Settings
from service.volume import Volume


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    predictor = FormulaPredictor(intensity_logits, out_channels=3, device=torch.device("cpu"))
    return Segmenter.from_predictor(Settings(max_input_voxels=50_000_000, sw_batch_size=2), predictor)


@pytest.fixture(scope="module")
def volume() -> Volume:
    shape = (90, 70, 40)
    affine = make_affine(shape, (3.0, 3.0, 5.0))
    hu, _ = phantom_in_world(shape, affine)
    return Volume(hu, affine)


def test_windows_done_reaches_windows_total(segmenter, volume):
    calls: list[tuple[str, int, int]] = []
    result = segmenter.segment(volume, progress=lambda *call: calls.append(call))

    assert calls[0] == ("preprocessing", 0, 0)
    inference = [call for call in calls if call[0] == "inference"]
    total = result.metrics.windows_run
    assert total > 2  # several batches of 2, so the counts really move
    assert all(t == total for _, _, t in inference)
    assert inference[0][1] == 0 and inference[-1][1] == total
    done = [d for _, d, _ in inference]
    assert done == sorted(done) and len(done) == len(set(done))  # one report per batch, increasing
    assert len(inference) == 1 + -(-total // 2)  # the start, then every batch of sw_batch_size 2


def test_skipped_windows_are_not_counted():
    image = torch.zeros((64, 64, 64))
    image[:20, :20, :20] = 1.0  # the body is only in one corner

    class Corner:
        def touches(self, start, stop):
            return start[0] < 20 and start[1] < 20 and start[2] < 20

    predictor = FormulaPredictor(lambda x: torch.cat([1 - x, x], dim=1), out_channels=2, device=torch.device("cpu"))
    seen: list[tuple[int, int]] = []
    result = sliding_window_labels(image, predictor, roi=(32, 32, 32), overlap=0.5, body=Corner(),
                                   on_windows=lambda done, total: seen.append((done, total)))
    assert result.windows_skipped > 0
    assert seen[-1] == (result.windows_run, result.windows_run)


def test_progress_stops_where_the_case_was_cancelled(segmenter, volume):
    progress = Progress()
    stop = threading.Event()

    def report(stage: str, done: int, total: int) -> None:
        progress(stage, done, total)
        if done >= 2:
            stop.set()

    with pytest.raises(CaseCancelledError):
        segmenter.segment(volume, progress=report, should_stop=stop.is_set)
    snapshot = progress.as_dict()
    assert snapshot["stage"] == "inference"
    assert 2 <= snapshot["windows_done"] < snapshot["windows_total"]


def test_progress_keeps_counts_across_later_stages_and_refuses_unknown_ones():
    changes: list[dict] = []
    progress = Progress(on_change=changes.append)
    progress("inference", 5, 5)
    progress.update("writing")
    assert progress.as_dict() == {"stage": "writing", "windows_done": 5, "windows_total": 5}
    assert [c["stage"] for c in changes] == ["inference", "writing"]
    with pytest.raises(ValueError, match="unknown progress stage 'thinking'"):
        progress.update("thinking")
    assert STAGES[0] == "queued" and STAGES[-1] == "done"
