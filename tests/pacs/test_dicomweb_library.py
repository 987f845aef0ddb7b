"""The DICOMweb library against a real Orthanc: C-STORE a fresh-UID copy of the real series, then
QIDO-RS choice, WADO-RS retrieval, segmentation and STOW-RS back, read back over WADO-RS."""

from __future__ import annotations

import pydicom
from dicomweb_client.api import DICOMwebClient
from pacs.orthanc_kit import PASSWORD, USER
from pacs.series_kit import ct_series

from service.dicomweb.pipeline import segment_study
from service.settings import Settings


def _settings(orthanc, tmp_path, **extra) -> Settings:
    return Settings(device="cpu", dicomweb_url=orthanc.dicomweb_url, dicomweb_username=USER,
                    dicomweb_password=PASSWORD, work_dir=tmp_path / "work", dicomweb_timeout_s=10,
                    dicomweb_retries=1, dicomweb_backoff_s=0.1, **extra)


def _reader(orthanc) -> DICOMwebClient:
    import requests

    session = requests.Session()
    session.auth = (USER, PASSWORD)
    return DICOMwebClient(orthanc.dicomweb_url, session=session)


def _ct(folder):
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())]
    return datasets[0], {str(ds.SOPInstanceUID) for ds in datasets}


def test_rtstruct_and_seg_are_stored_in_the_same_study(orthanc, real_slices, formula, tmp_path):
    folder = ct_series(tmp_path / "ct", real_slices)
    ct, sop_uids = _ct(folder)
    orthanc.send(folder)

    result = segment_study(_settings(orthanc, tmp_path), formula, study_uid=ct.StudyInstanceUID,
                           outputs="rtstruct,seg")

    assert result.series.uid == ct.SeriesInstanceUID
    assert {o.modality for o in result.stored} == {"RTSTRUCT", "SEG"}
    in_orthanc = {s["modality"]: s for s in orthanc.series_of_study(ct.StudyInstanceUID)}
    assert set(in_orthanc) == {"CT", "RTSTRUCT", "SEG"}
    reader = _reader(orthanc)
    for stored in result.stored:
        ds = reader.retrieve_instance(ct.StudyInstanceUID, stored.series_uid, stored.sop_instance_uid)
        assert ds.StudyInstanceUID == ct.StudyInstanceUID
        assert ds.PatientID == ct.PatientID
        assert ds.SeriesInstanceUID == stored.series_uid != ct.SeriesInstanceUID
        if stored.modality == "RTSTRUCT":
            frame = ds.ReferencedFrameOfReferenceSequence[0]
            assert frame.FrameOfReferenceUID == ct.FrameOfReferenceUID
            contours = [c for roi in ds.ROIContourSequence for c in roi.ContourSequence]
            referenced = {c.ContourImageSequence[0].ReferencedSOPInstanceUID for c in contours}
            assert contours and referenced <= sop_uids
        else:
            assert ds.FrameOfReferenceUID == ct.FrameOfReferenceUID
            referenced = {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
            assert referenced <= sop_uids
