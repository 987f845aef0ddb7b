"""Two deliveries of one queued job (a case longer than the visibility timeout runs on two
workers at once): the first result stays, whatever the second one meets. No Redis needed:
``run_job`` is called directly, as the Celery task does."""

from __future__ import annotations

import threading

from api.apikit import FakeSegmenter, nifti_gz_bytes

from service.api.jobs import INPUT_NAME
from service.api.metrics import ServiceMetrics
from service.errors import SwinxsegError
from service.queue.job_files import JOB_FILE, RESULT_FILE, read_json, write_json, write_json_once
from service.queue.worker import WorkerContext, run_job
from service.settings import Settings

JOB_ID = "0123456789abcdef0123456789abcdef"


def test_write_json_once_keeps_the_first_value_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / RESULT_FILE
    assert write_json_once(path, {"status": "done"}) is True
    assert write_json_once(path, {"status": "failed"}) is False
    assert read_json(path) == {"status": "done"}
    assert [p.name for p in tmp_path.iterdir()] == [RESULT_FILE]


def _job_folder(root):
    folder = root / "storage" / JOB_ID
    folder.mkdir(parents=True)
    (folder / INPUT_NAME).write_bytes(nifti_gz_bytes())
    write_json(folder / JOB_FILE, {"id": JOB_ID, "filename": "c.nii.gz", "media_type": "application/gzip",
                                   "want_preview": False, "overlap": None, "created_at": 0.0})
    return folder


def _context(root, name: str, segmenter) -> WorkerContext:
    work = root / f"work-{name}"
    work.mkdir()
    return WorkerContext(segmenter=segmenter, settings=Settings(), storage=root / "storage", work_dir=work,
                         metrics=ServiceMetrics(gpu_mem_cap_mb=4096), name=name)


def test_a_second_delivery_that_fails_after_the_first_finished_does_not_replace_its_result(tmp_path):
    folder = _job_folder(tmp_path)
    first, second = FakeSegmenter(), FakeSegmenter()
    first.gate, second.gate = threading.Event(), threading.Event()
    second.error = SwinxsegError("input.bin vanished", code="unreadable_input")
    returned: dict[str, dict] = {}

    def deliver(name, segmenter):
        returned[name] = run_job(JOB_ID, _context(tmp_path, name, segmenter))

    threads = [threading.Thread(target=deliver, args=("w1", first)), threading.Thread(target=deliver, args=("w2", second))]
    for thread in threads:
        thread.start()
    assert first.started.wait(10) and second.started.wait(10)  # both deliveries are in the case
    first.gate.set()
    threads[0].join(10)
    assert read_json(folder / RESULT_FILE)["status"] == "done"
    assert not (folder / INPUT_NAME).exists()  # the first delivery removed the input
    second.gate.set()
    threads[1].join(10)

    result = read_json(folder / RESULT_FILE)
    assert result["status"] == "done" and result["worker"] == "w1" and result["error"] is None
    assert returned == {"w1": {"status": "done", "worker": "w1"}, "w2": {"status": "done", "worker": "w1"}}
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_a_delivery_of_a_finished_job_does_not_run_it_again(tmp_path):
    folder = _job_folder(tmp_path)
    segmenter = FakeSegmenter()
    assert run_job(JOB_ID, _context(tmp_path, "w1", segmenter))["status"] == "done"
    assert run_job(JOB_ID, _context(tmp_path, "w2", segmenter)) == {"status": "done"}
    assert len(segmenter.calls) == 1 and read_json(folder / RESULT_FILE)["worker"] == "w1"
