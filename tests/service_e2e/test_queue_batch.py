"""``swinxseg batch IN OUT --queue redis://...`` for real: the CLI process sends a folder's cases to
two worker processes (formula model, CPU) through Debian's redis-server, writes the masks and
reports a local batch writes, and, killed mid-run and started again, sends only the cases that
have no mask yet."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import redis
from api.apikit import AFFINE, ct_array
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from service_e2e.formula_app import formula_segmenter
from service_e2e.queue_kit import Cluster, running_cluster
from service_e2e.redis_kit import REDIS_SERVER
from service_e2e.serverkit import BIN, REPO, free_port, wait_for

from service.batch import CSV_COLUMNS, run_batch
from service.queue.batch import STATE_FILE
from service.queue.job_files import RESULT_FILE, RUNNING_FILE, read_json
from service.settings import Settings

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (make redis)")
SHAPES = [(40, 40, 24), (48, 40, 24), (40, 48, 28), (44, 44, 24), (40, 40, 32), (48, 48, 24)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("queue_batch")) as cluster:
        yield cluster


def dicom_series(folder: Path, hu: np.ndarray) -> None:
    """``hu`` (rows, columns, slices) as an uncompressed CT series (pydicom), 1.5 mm pixels, 2.5 mm apart."""
    folder.mkdir()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(hu.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.Modality, ds.InstanceNumber = "SWX-QUEUE", "CT", k + 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 2.5 * k], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1.5, 1.5], 2.5
        ds.Rows, ds.Columns = hu.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(hu[:, :, k]).astype(np.int16).tobytes()
        pydicom.dcmwrite(folder / f"slice{k:03d}.dcm", ds, enforce_file_format=True)


def case_folder(folder: Path, *, broken: bool = False) -> Path:
    """Six FLARE-named CTs of different shapes, a note that is not a case and, with ``broken``,
    a DICOM series folder (sent as a zip), a .nii.gz that is no gzip (refused before it is
    sent) and a 2D NIfTI (refused by the worker)."""
    folder.mkdir()
    for index, shape in enumerate(SHAPES):
        image = nib.Nifti1Image(ct_array(shape), AFFINE)
        image.set_sform(AFFINE, code=1)
        image.set_qform(AFFINE, code=1)
        nib.save(image, folder / f"case{index}_0000.nii.gz")
    (folder / "notes.txt").write_text("not a case\n")
    if broken:
        (folder / "broken_0000.nii.gz").write_bytes(b"\x1f\x8b this is not a gzip stream")
        nib.save(nib.Nifti1Image(np.zeros((40, 40), np.int16), AFFINE), folder / "flat_0000.nii.gz")
        dicom_series(folder / "series", ct_array((40, 40, 16)))
    return folder


def batch(cluster: Cluster, inputs: Path, outputs: Path, *extra: str, log_name: str) -> subprocess.Popen:
    log = open(cluster.tmp / f"{log_name}.log", "wb")  # noqa: SIM115 - the child writes to it
    with log:
        return subprocess.Popen(
            [str(BIN / "swinxseg"), "batch", str(inputs), str(outputs), "--queue", cluster.redis.url,
             "--storage-dir", str(cluster.storage), "--no-progress", *extra],
            cwd=REPO, env={k: v for k, v in cluster.env.items() if k != "SWINXSEG_QUEUE_URL"},
            stdout=log, stderr=subprocess.STDOUT,
        )


def worker_runs(cluster: Cluster) -> list[tuple[str, str]]:
    """(job id, worker) of every job a worker finished, from the workers' logs."""
    runs = []
    for name in cluster.workers:
        text = (cluster.tmp / f"{name}.log").read_text(errors="replace")
        runs += re.findall(r"job ([0-9a-f]{32}) (?:done|failed) on (\w+)", text)
    return runs


def cluster_idle(cluster: Cluster) -> bool:
    """Nothing waits on the Celery list and no job folder is running (a job the batch recorded
    but was killed before sending is neither: it is withdrawn by the next run)."""
    waiting = redis.Redis.from_url(cluster.redis.url).llen(Settings().queue_name)
    running = [p for p in cluster.storage.iterdir() if (p / RUNNING_FILE).exists() and not (p / RESULT_FILE).exists()]
    return waiting == 0 and not running


def mask_data(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_batch_on_the_queue_writes_what_a_local_batch_writes(cluster, tmp_path):
    inputs = case_folder(tmp_path / "in", broken=True)
    before = len(worker_runs(cluster))
    proc = batch(cluster, inputs, tmp_path / "queued", log_name="batch-same")
    assert proc.wait(timeout=240) == 1, (cluster.tmp / "batch-same.log").read_text()  # 1: some cases failed
    log = (cluster.tmp / "batch-same.log").read_text()
    assert "7 ok, 2 failed, 1 skipped" in log, log
    assert {"w1", "w2"} == set(re.findall(r"ok on (w\d)", log)), log  # both workers took cases
    assert len(worker_runs(cluster)) - before == 8  # the cases and the 2D one, not the broken gzip

    settings = Settings(device="cpu", cpu_threads=1, work_dir=tmp_path / "work")
    local = run_batch(inputs, tmp_path / "local", settings, segmenter=formula_segmenter(settings))
    queued = json.loads((tmp_path / "queued" / "report.json").read_text())
    expected = local.to_dict()
    assert [(c["case"], c["status"], c["error_code"]) for c in queued["cases"]] == [
        (c["case"], c["status"], c["error_code"]) for c in expected["cases"]]
    assert queued["counts"] == expected["counts"] == {"ok": 7, "failed": 2, "skipped": 1}
    for index, shape in enumerate(SHAPES):
        mask = mask_data(tmp_path / "queued" / f"case{index}.nii.gz")
        assert mask.shape == shape and mask.max() == 1
        np.testing.assert_array_equal(mask, mask_data(tmp_path / "local" / f"case{index}.nii.gz"))
        assert (tmp_path / "queued" / f"case{index}.nii.gz").stat().st_mode & 0o777 == 0o644
    series = mask_data(tmp_path / "queued" / "series.nii.gz")  # the DICOM series, zipped for the worker
    assert series.shape == (40, 40, 16) and series.max() == 1
    np.testing.assert_array_equal(series, mask_data(tmp_path / "local" / "series.nii.gz"))
    for name in ("broken", "flat"):
        failed = next(c for c in queued["cases"] if c["case"] == name)
        assert failed["error"] and failed["error_code"] not in {"", "internal_error"}, failed
    with open(tmp_path / "queued" / "report.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 10
    assert all(float(row["total_s"]) > 0 for row in rows if row["status"] == "ok")
    assert not [p for p in cluster.storage.iterdir() if not p.name.startswith(".")]  # the batch removed its jobs
    assert not (tmp_path / "queued" / STATE_FILE).exists() or read_json(tmp_path / "queued" / STATE_FILE) == {}


def test_a_killed_batch_started_again_sends_only_the_cases_without_a_mask(cluster, tmp_path):
    inputs, outputs = case_folder(tmp_path / "in"), tmp_path / "out"
    before = len(worker_runs(cluster))
    first = batch(cluster, inputs, outputs, "--in-flight", "2", log_name="batch-killed")

    def frozen_with_jobs_out() -> bool:
        """Stop the batch (SIGSTOP) at a moment with a mask written and jobs out on the cluster."""
        first.send_signal(signal.SIGSTOP)
        if any(outputs.glob("case*.nii.gz")) and read_json(outputs / STATE_FILE):
            return True
        first.send_signal(signal.SIGCONT)
        return False

    wait_for(frozen_with_jobs_out, timeout=120, what="a mask written and jobs still out", interval=0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    done_before = {p.name: p.stat().st_mtime_ns for p in outputs.glob("case*.nii.gz")}
    out_on_cluster = read_json(outputs / STATE_FILE) or {}
    assert len(done_before) < len(SHAPES) and out_on_cluster  # killed with jobs still out
    wait_for(lambda: cluster_idle(cluster), timeout=120, what="the jobs out to finish with nobody waiting")

    second = batch(cluster, inputs, outputs, log_name="batch-again")
    assert second.wait(timeout=240) == 0, (cluster.tmp / "batch-again.log").read_text()
    report = json.loads((outputs / "report.json").read_text())
    skipped = {c["case"] for c in report["cases"] if c["status"] == "skipped" and c["error_code"] != "not_a_case"}
    assert skipped == {name.removesuffix(".nii.gz") for name in done_before}
    assert report["counts"] == {"ok": len(SHAPES) - len(skipped), "failed": 0, "skipped": len(skipped) + 1}
    assert {p.name: p.stat().st_mtime_ns for p in outputs.glob("case*.nii.gz") if p.name in done_before} == done_before
    assert len(list(outputs.glob("case*.nii.gz"))) == len(SHAPES)
    assert len(worker_runs(cluster)) - before == len(SHAPES)  # every case ran exactly once over both runs
    assert not [p for p in cluster.storage.iterdir() if not p.name.startswith(".")]


def test_dicom_outputs_on_the_queue_match_a_local_batch(cluster, tmp_path):
    """``--output nifti,rtstruct``: the series gets CASE.nii.gz and CASE_rtstruct.dcm from the
    worker; a NIfTI case fails as locally (an RT Structure Set needs a DICOM source series)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    dicom_series(inputs / "series", ct_array((40, 40, 16)))
    image = nib.Nifti1Image(ct_array((40, 40, 24)), AFFINE)
    nib.save(image, inputs / "plain_0000.nii.gz")
    proc = batch(cluster, inputs, tmp_path / "queued", "--output", "nifti,rtstruct", log_name="batch-dicom")
    assert proc.wait(timeout=240) == 1, (cluster.tmp / "batch-dicom.log").read_text()

    settings = Settings(device="cpu", cpu_threads=1, work_dir=tmp_path / "work")
    local = run_batch(inputs, tmp_path / "local", settings, segmenter=formula_segmenter(settings),
                      outputs=("nifti", "rtstruct"))
    queued = json.loads((tmp_path / "queued" / "report.json").read_text())
    assert [(c["case"], c["status"], c["error_code"]) for c in queued["cases"]] == [
        (c.case, c.status, c.error_code) for c in local.cases]
    assert [c["status"] for c in queued["cases"]] == ["failed", "ok"]  # plain, series
    series = next(c for c in queued["cases"] if c["case"] == "series")
    assert set(series["outputs"]) == {"nifti", "rtstruct"}
    rtstruct = pydicom.dcmread(tmp_path / "queued" / "series_rtstruct.dcm")
    assert rtstruct.Modality == "RTSTRUCT" and len(rtstruct.ROIContourSequence) >= 1
    local_series = json.loads((tmp_path / "local" / "report.json").read_text())["cases"][1]
    assert series["statistics"] and series["statistics"] == local_series["statistics"]  # from the worker
    assert not (tmp_path / "queued" / "plain.nii.gz").exists()  # a failed case writes nothing


def test_an_unreachable_queue_stops_the_batch_before_anything_is_copied(tmp_path):
    inputs = case_folder(tmp_path / "in")
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    result = subprocess.run(
        [str(BIN / "swinxseg"), "batch", str(inputs), str(tmp_path / "out"), "--queue", dead,
         "--storage-dir", str(tmp_path / "storage"), "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("SWINXSEG_")},
    )
    assert result.returncode == 1, result.stderr
    assert f"the job queue {dead} is unreachable" in result.stderr
    assert not [p for p in (tmp_path / "storage").iterdir() if not p.name.startswith(".")]
    assert not list((tmp_path / "out").glob("*.nii.gz"))


def test_a_batch_before_any_worker_warns_then_finishes_when_one_starts(tmp_path, caplog, monkeypatch):
    import threading

    import service.queue.batch as queue_batch

    monkeypatch.setattr(queue_batch, "_QUIET_WARNING_S", 1.0)
    caplog.set_level(logging.WARNING, logger="service.queue.batch")
    inputs = tmp_path / "in"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(ct_array((40, 40, 24)), AFFINE), inputs / "only_0000.nii.gz")
    with running_cluster(tmp_path / "cluster", workers=()) as idle:
        settings = Settings(queue_url=idle.redis.url, storage_dir=idle.storage)
        reports = []
        thread = threading.Thread(target=lambda: reports.append(
            queue_batch.run_queue_batch(inputs, tmp_path / "out", settings, poll_s=0.1)))
        thread.start()
        wait_for(lambda: any("no case finished" in r.getMessage() for r in caplog.records), timeout=30,
                 what="the warning")
        assert "1 queued" in next(r.getMessage() for r in caplog.records if "no case finished" in r.getMessage())
        idle.start_worker("late")
        thread.join(timeout=120)
        assert not thread.is_alive()
    assert reports[0].to_dict()["counts"] == {"ok": 1, "failed": 0, "skipped": 0}
    assert mask_data(tmp_path / "out" / "only.nii.gz").shape == (40, 40, 24)
