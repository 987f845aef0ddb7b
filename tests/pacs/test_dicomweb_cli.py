"""``swinxseg dicomweb`` as a user runs it (a subprocess, the demo weights, credentials from the
environment) against a real Orthanc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
from pacs.orthanc_kit import PASSWORD, USER
from pacs.series_kit import ct_series
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[2]


def _swinxseg(orthanc, tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SWINXSEG_DICOMWEB_USERNAME": USER, "SWINXSEG_DICOMWEB_PASSWORD": PASSWORD,
           "SWINXSEG_WORK_DIR": str(tmp_path / "work"), "SWINXSEG_DICOMWEB_RETRIES": "0"}
    command = [sys.executable, "-m", "service.cli", "dicomweb", "--url", orthanc.dicomweb_url, "--device", "cpu",
               *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


def test_cli_stores_rtstruct_and_seg_in_the_study(orthanc, real_slices, tmp_path):
    folder = ct_series(tmp_path / "ct", real_slices)
    ct = pydicom.dcmread(sorted(folder.iterdir())[0], stop_before_pixels=True)
    orthanc.send(folder)

    result = _swinxseg(orthanc, tmp_path, "--study", ct.StudyInstanceUID, "--output", "rtstruct,seg")

    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["chosen_series"]["series_uid"] == ct.SeriesInstanceUID
    assert report["chosen_series"]["instances"] == len(real_slices)
    stored = {o["modality"]: o for o in report["stored"]}
    in_orthanc = {s["modality"]: s["uid"] for s in orthanc.series_of_study(ct.StudyInstanceUID)}
    assert in_orthanc == {"CT": ct.SeriesInstanceUID, "RTSTRUCT": stored["RTSTRUCT"]["series_uid"],
                          "SEG": stored["SEG"]["series_uid"]}
    assert PASSWORD not in result.stdout + result.stderr


def test_cli_unknown_study_is_one_line_and_exit_6(orthanc, tmp_path):
    unknown = generate_uid()
    result = _swinxseg(orthanc, tmp_path, "--study", unknown)
    assert result.returncode == 6
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"swinxseg dicomweb: error: study {unknown} is not on the DICOMweb server {orthanc.dicomweb_url}"
    assert "Traceback" not in result.stderr


def test_cli_refuses_a_nifti_output_before_loading_the_model(orthanc, tmp_path):
    result = _swinxseg(orthanc, tmp_path, "--study", generate_uid(), "--output", "nifti", "--model", "/nonexistent")
    assert result.returncode == 2
    assert "output nifti cannot be stored over DICOMweb" in result.stderr
