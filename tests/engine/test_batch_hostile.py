"""Issue 15 in batch mode: every input entry is accounted for, --skip-existing checks the mask,
data files stay inside the case's folder, outputs share one file mode."""

from __future__ import annotations

import errno
import gzip
import json
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from synthetic import intensity_logits

from service.batch import run_batch
from service.inference.predictors import FormulaPredictor
from service.io.writers import OUTPUT_FILE_MODE
from service.segmenter import Segmenter
from service.settings import Settings


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    predictor = FormulaPredictor(intensity_logits, out_channels=3, device=torch.device("cpu"))
    return Segmenter.from_predictor(Settings(), predictor)


def _small_ct(path: Path) -> None:
    hu = np.full((24, 20, 16), -1000, np.int16)
    hu[4:-4, 4:-4, 3:-3] = 60
    image = nib.Nifti1Image(hu, np.diag([2.0, 2.0, 3.0, 1.0]))
    image.set_sform(image.affine, code=1)
    nib.save(image, path)


def _entries(report: dict) -> dict[str, dict]:
    return {Path(c["input"]).name: c for c in report["cases"]}


def test_every_entry_is_a_case_or_skipped_with_a_reason(tmp_path: Path, segmenter, monkeypatch) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    _small_ct(inputs / "good_0000.nii.gz")
    (inputs / "loop").symlink_to(inputs / "loop")
    (inputs / "dangling.nii.gz").symlink_to(tmp_path / "nowhere.nii.gz")
    (inputs / "locked").mkdir()
    (inputs / "locked" / "a.dcm").write_bytes(b"x")
    (inputs / "no_dicom").mkdir()
    (inputs / "no_dicom" / "notes.txt").write_text("hello")
    os.mkfifo(inputs / "pipe.nii.gz")
    (inputs / "readme.txt").write_text("x")
    (inputs / ".DS_Store").write_bytes(b"x")
    (inputs / "pair.raw").write_bytes(np.zeros(512, np.uint8).tobytes())
    (inputs / "pair.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementType = MET_UCHAR\nElementDataFile = pair.raw\n"
    )
    # We run as root in CI, where chmod 000 does not stop reading: refuse the listing instead.
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == inputs / "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)

    report = run_batch(inputs, outputs, Settings(), segmenter=segmenter)
    data = json.loads((outputs / "report.json").read_text())
    entries = _entries(data)
    assert set(entries) == {p.name for p in inputs.iterdir()}  # nothing passed over
    reasons = {name: entry["error"] for name, entry in entries.items() if entry["status"] == "skipped"}
    assert reasons["loop"] == "symlink loop"
    assert reasons["dangling.nii.gz"].startswith("dangling symlink")
    assert reasons["locked"].startswith("folder cannot be read")
    assert reasons["no_dicom"] == "folder holds no DICOM files"
    assert reasons["pipe.nii.gz"] == "not a regular file: a FIFO"
    assert reasons["readme.txt"].startswith("not a supported volume file")
    assert reasons[".DS_Store"].startswith("hidden entry")
    assert reasons["pair.raw"] == "data file of case pair"
    assert entries["good_0000.nii.gz"]["status"] == "ok"
    assert entries["pair.mhd"]["status"] == "ok"  # its .raw is inside its own folder
    assert data["counts"] == {"ok": 2, "failed": 0, "skipped": 8}
    assert not report.failed


def test_header_naming_a_file_outside_the_case_folder_fails_that_case(tmp_path: Path, segmenter) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "evil.mhd").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementType = MET_UCHAR\nElementDataFile = /etc/passwd\n"
    )
    os.mkfifo(inputs / "fifo.raw")
    (inputs / "blocked.nhdr").write_text(
        "NRRD0004\ntype: uint8\ndimension: 3\nsizes: 8 8 8\nencoding: raw\ndata file: fifo.raw\n\n"
    )
    entries = _entries(run_batch(inputs, outputs, Settings(), segmenter=segmenter).to_dict())
    assert entries["evil.mhd"]["status"] == "failed"
    assert "outside the case's folder" in entries["evil.mhd"]["error"]
    assert entries["blocked.nhdr"]["status"] == "failed"
    assert "not a regular file" in entries["blocked.nhdr"]["error"]
    assert not (outputs / "evil.nii.gz").exists() and not (outputs / "blocked.nii.gz").exists()


def test_skip_existing_redoes_a_truncated_or_wrong_mask(tmp_path: Path, segmenter) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name in ("a", "b", "c"):
        _small_ct(inputs / f"{name}_0000.nii.gz")
    run_batch(inputs, outputs, Settings(), segmenter=segmenter)
    good = (outputs / "a.nii.gz").read_bytes()
    (outputs / "b.nii.gz").write_bytes(good[: len(good) // 2])  # truncated by a crash
    wrong = nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4))
    (outputs / "c.nii.gz").write_bytes(gzip.compress(wrong.to_bytes()))  # another case's grid

    entries = _entries(run_batch(inputs, outputs, Settings(), segmenter=segmenter, skip_existing=True).to_dict())
    assert entries["a_0000.nii.gz"]["status"] == "skipped"
    assert entries["b_0000.nii.gz"]["status"] == "ok"
    assert entries["c_0000.nii.gz"]["status"] == "ok"
    for name in ("b", "c"):
        assert nib.load(outputs / f"{name}.nii.gz").shape == (24, 20, 16)


def test_masks_previews_and_reports_share_one_file_mode(tmp_path: Path, segmenter) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    _small_ct(inputs / "a_0000.nii.gz")
    old = os.umask(0o077)  # the mode must not depend on the caller's umask
    try:
        run_batch(inputs, outputs, Settings(), segmenter=segmenter, preview=True)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in outputs.iterdir()}
    assert set(modes) == {"a.nii.gz", "a_preview.png", "report.json", "report.csv", "statistics.csv"}
    assert set(modes.values()) == {OUTPUT_FILE_MODE}
