"""Each PACS failure provoked against the real Orthanc ends as a typed error naming the cause, and
nothing is stored: server down, server hung (slow), unknown study, an instance deleted (partial
series), STOW-RS refused by the archive, wrong credentials."""

from __future__ import annotations

import time

import pydicom
import pytest
from pacs.orthanc_kit import PASSWORD, USER, OrthancServer, missing_tools
from pacs.series_kit import ct_series
from pydicom.uid import generate_uid

from service.dicomweb.pipeline import segment_study
from service.errors import (
    DicomSeriesError,
    DicomWebError,
    DicomWebNotFoundError,
    DicomWebUnavailableError,
    StowRefusedError,
)
from service.settings import Settings

# An archive policy that refuses RTSTRUCT and SEG objects (Orthanc's ReceivedInstanceFilter).
REFUSE_OUTPUTS_LUA = """
function ReceivedInstanceFilter(dicom, origin, info)
  local modality = dicom.Modality or ''
  return modality ~= 'RTSTRUCT' and modality ~= 'SEG'
end
"""


def _settings(orthanc, tmp_path, **extra) -> Settings:
    values = dict(device="cpu", dicomweb_url=orthanc.dicomweb_url, dicomweb_username=USER,
                  dicomweb_password=PASSWORD, work_dir=tmp_path / "work", dicomweb_timeout_s=5,
                  dicomweb_retries=2, dicomweb_backoff_s=0.1)
    return Settings(**{**values, **extra})


def _send(orthanc, slices, tmp_path) -> pydicom.Dataset:
    folder = ct_series(tmp_path / "ct", slices)
    orthanc.send(folder)
    return pydicom.dcmread(sorted(folder.iterdir())[len(slices) // 2], stop_before_pixels=True)


def _modalities(orthanc, study_uid: str) -> list[str]:
    return sorted(s["modality"] for s in orthanc.series_of_study(study_uid))


def test_server_down(orthanc, real_slices, formula, tmp_path):
    ct = _send(orthanc, real_slices[:8], tmp_path)
    orthanc.stop()
    start = time.monotonic()
    with pytest.raises(DicomWebUnavailableError, match=r"cannot reach the DICOMweb server http://127\.0\.0\.1"):
        segment_study(_settings(orthanc, tmp_path), formula, study_uid=ct.StudyInstanceUID)
    assert time.monotonic() - start < 10  # 2 retries, 0.1 s then 0.2 s backoff: bounded


def test_server_hung_times_out_after_bounded_retries(orthanc, real_slices, formula, tmp_path):
    ct = _send(orthanc, real_slices[:8], tmp_path)
    orthanc.pause()  # accepts connections (kernel backlog), never answers
    try:
        start = time.monotonic()
        with pytest.raises(DicomWebUnavailableError, match="did not answer in time"):
            segment_study(_settings(orthanc, tmp_path, dicomweb_timeout_s=1.0, dicomweb_retries=1), formula,
                          study_uid=ct.StudyInstanceUID)
        elapsed = time.monotonic() - start
    finally:
        orthanc.resume()
    assert 2.0 <= elapsed < 8.0  # two attempts of 1 s each, plus backoff
    assert _modalities(orthanc, ct.StudyInstanceUID) == ["CT"]


def test_unknown_study(orthanc, formula, tmp_path):
    unknown = generate_uid()
    with pytest.raises(DicomWebNotFoundError, match=f"study {unknown} is not on the DICOMweb server"):
        segment_study(_settings(orthanc, tmp_path), formula, study_uid=unknown)


def test_a_deleted_instance_is_refused_by_the_gap_check(orthanc, real_slices, formula, tmp_path):
    ct = _send(orthanc, real_slices[:10], tmp_path)
    orthanc.delete_instance(ct.SOPInstanceUID)  # the middle slice
    with pytest.raises(DicomSeriesError, match="missing slices"):
        segment_study(_settings(orthanc, tmp_path), formula, study_uid=ct.StudyInstanceUID)
    assert _modalities(orthanc, ct.StudyInstanceUID) == ["CT"]
    assert not list((tmp_path / "work").iterdir())  # the retrieval folder is gone


def test_wrong_credentials(orthanc, formula, tmp_path):
    with pytest.raises(DicomWebError, match="refused our credentials") as caught:
        segment_study(_settings(orthanc, tmp_path, dicomweb_password="wrong"), formula, study_uid=generate_uid())
    assert caught.value.code == "dicomweb_unauthorized"
    assert "wrong" not in str(caught.value)


@pytest.fixture
def refusing_orthanc(tmp_path):
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    script = tmp_path / "refuse.lua"
    script.write_text(REFUSE_OUTPUTS_LUA)
    server = OrthancServer(tmp_path / "refusing", lua=[script]).start()
    yield server
    server.stop()


def test_stow_refused_stores_nothing(refusing_orthanc, real_slices, formula, tmp_path):
    ct = _send(refusing_orthanc, real_slices[:8], tmp_path)
    with pytest.raises(StowRefusedError, match="answered the STOW-RS with success but does not hold RTSTRUCT") as caught:
        segment_study(_settings(refusing_orthanc, tmp_path), formula, study_uid=ct.StudyInstanceUID,
                      outputs="rtstruct,seg")
    assert caught.value.code == "stow_refused"
    assert _modalities(refusing_orthanc, ct.StudyInstanceUID) == ["CT"]


def test_stow_refused_by_the_destination(orthanc, real_slices, formula, tmp_path):
    ct = _send(orthanc, real_slices[:8], tmp_path)
    settings = _settings(orthanc, tmp_path, dicomweb_store_url=orthanc.dicomweb_url,
                         dicomweb_store_username=USER, dicomweb_store_password="not-the-password")
    with pytest.raises(StowRefusedError, match=r"refused the STOW-RS of RTSTRUCT .*HTTP 401"):
        segment_study(settings, formula, study_uid=ct.StudyInstanceUID)
    assert _modalities(orthanc, ct.StudyInstanceUID) == ["CT"]
