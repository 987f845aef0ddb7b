"""Segmentation on arrival, end to end: dcmtk's storescu C-STOREs a fresh-UID copy of the real
series into a real Orthanc configured from deploy/orthanc/ (its orthanc.json and Lua script), the
Lua route posts the job to a real swinxseg server, and the RTSTRUCT and SEG appear in the same study;
they are fetched back over WADO-RS and checked. Failures over HTTP end as clean failed jobs.

The server is the formula app (the whole engine, a threshold for a network) unless
``SWINXSEG_PACS_E2E_DEMO=1``, which serves the demo weights (``swinxseg serve``): that run's
printed C-STORE -> RTSTRUCT time is the figure in docs/PACS.md.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pacs.orthanc_kit import PASSWORD, USER, OrthancServer, missing_tools
from pacs.series_kit import FULL, ct_series, relabel
from pydicom.uid import generate_uid
from service_e2e.serverkit import clean_env, formula_server_argv, free_port, run_server, wait_for

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "orthanc"
API_KEY = "pacs-e2e-key"
DEMO = os.environ.get("SWINXSEG_PACS_E2E_DEMO") == "1"


def _server_argv(port: int) -> list[str]:
    if DEMO:
        return [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
                "--device", "cpu"]
    return formula_server_argv(port)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("pacs")
    port = free_port()
    orthanc = OrthancServer(
        tmp / "orthanc", lua=[DEPLOY / "swinxseg.lua"], base=json.loads((DEPLOY / "orthanc.json").read_text()),
        env={"SWINXSEG_URL": f"http://127.0.0.1:{port}", "SWINXSEG_API_KEY": API_KEY,
             "SWINXSEG_OUTPUTS": "rtstruct,seg"},
    )
    orthanc.extra = {"RegisteredUsers": {USER: PASSWORD}}
    orthanc.start()
    env = clean_env(SWINXSEG_DICOMWEB_URL=orthanc.dicomweb_url, SWINXSEG_DICOMWEB_USERNAME=USER,
                    SWINXSEG_DICOMWEB_PASSWORD=PASSWORD, SWINXSEG_API_KEY=API_KEY, SWINXSEG_DEVICE="cpu",
                    SWINXSEG_WORK_DIR=str(tmp / "work"), SWINXSEG_DICOMWEB_RETRIES="1",
                    SWINXSEG_DICOMWEB_BACKOFF_S="0.1", SWINXSEG_DICOMWEB_TIMEOUT_S="5")
    try:
        with run_server(_server_argv(port), port=port, env=env, log_path=tmp / "server.log") as server:
            yield orthanc, server
    finally:
        orthanc.stop()


def _post(server, body: dict) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/dicomweb/jobs", json=body, headers={"X-API-Key": API_KEY}, timeout=30)


def _finished(server, job_id: str, timeout: float = 120) -> dict:
    url = f"{server.base_url}/v1/jobs/{job_id}"
    view = {}

    def done() -> bool:
        view.update(httpx.get(url, headers={"X-API-Key": API_KEY}, timeout=10).json())
        return view["status"] in ("done", "failed")

    wait_for(done, timeout=timeout, what=f"job {job_id}")
    return view


def test_a_stored_ct_series_gets_its_rtstruct_and_seg_in_the_same_study(pacs, real_slices, tmp_path):
    orthanc, server = pacs
    folder = ct_series(tmp_path / "ct", real_slices, crop=FULL)
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.iterdir())]
    ct = datasets[0]
    localizer = ct_series(tmp_path / "loc", real_slices[:3])
    relabel(localizer, study_uid=ct.StudyInstanceUID, series_number=9, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))

    started = time.monotonic()
    orthanc.send(folder)
    orthanc.send(localizer)
    wanted = {"CT", "RTSTRUCT", "SEG"}
    wait_for(lambda: wanted <= {s["modality"] for s in orthanc.series_of_study(ct.StudyInstanceUID)},
             timeout=600, what="the RTSTRUCT and SEG in Orthanc", interval=0.5)
    seconds = time.monotonic() - started
    print(f"\nC-STORE of {len(datasets)} slices -> RTSTRUCT+SEG stored: {seconds:.1f} s "
          f"({'demo weights' if DEMO else 'formula model'}, CPU)")

    # The Lua route made exactly one job; posting the same series again returns it (200).
    again = _post(server, {"study_uid": ct.StudyInstanceUID, "series_uid": ct.SeriesInstanceUID,
                           "outputs": ["rtstruct", "seg"]})
    assert again.status_code == 200, again.text
    view = _finished(server, again.json()["id"])
    assert view["status"] == "done", view
    stored = {o["modality"]: o for o in view["dicomweb"]["stored"]}
    print(f"job steps (s): {view['dicomweb']['seconds']}; segmentation {view['metrics']['total_seconds']} s")
    assert view["dicomweb"]["chosen_series"]["series_uid"] == ct.SeriesInstanceUID
    series = orthanc.series_of_study(ct.StudyInstanceUID)
    assert sorted(s["modality"] for s in series) == ["CT", "CT", "RTSTRUCT", "SEG"]  # one of each output
    _check_read_back(orthanc, ct, {str(d.SOPInstanceUID) for d in datasets}, stored)
    # The job's own download is the very object stored.
    rtstruct = httpx.get(server.base_url + view["links"]["outputs"]["rtstruct"], headers={"X-API-Key": API_KEY})
    assert pydicom.dcmread(__import__("io").BytesIO(rtstruct.content)).SOPInstanceUID == \
        stored["RTSTRUCT"]["sop_instance_uid"]


def _check_read_back(orthanc, ct, sop_uids: set[str], stored: dict) -> None:
    import requests

    http = requests.Session()
    http.auth = (USER, PASSWORD)
    reader = DICOMwebClient(orthanc.dicomweb_url, session=http)
    rt = reader.retrieve_instance(ct.StudyInstanceUID, stored["RTSTRUCT"]["series_uid"],
                                  stored["RTSTRUCT"]["sop_instance_uid"])
    assert rt.Modality == "RTSTRUCT" and rt.StudyInstanceUID == ct.StudyInstanceUID and rt.PatientID == ct.PatientID
    assert rt.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == ct.FrameOfReferenceUID
    referenced = {c.ContourImageSequence[0].ReferencedSOPInstanceUID
                  for roi in rt.ROIContourSequence for c in roi.ContourSequence}
    assert referenced and referenced <= sop_uids
    seg = reader.retrieve_instance(ct.StudyInstanceUID, stored["SEG"]["series_uid"], stored["SEG"]["sop_instance_uid"])
    assert seg.FrameOfReferenceUID == ct.FrameOfReferenceUID and seg.PatientID == ct.PatientID


def test_failures_over_http_are_clean_failed_jobs(pacs, real_slices, tmp_path):
    orthanc, server = pacs
    unknown = generate_uid()
    job = _post(server, {"study_uid": unknown})
    assert job.status_code == 202, job.text
    view = _finished(server, job.json()["id"])
    assert view["status"] == "failed"
    assert view["error"]["error"] == "dicomweb_not_found" and unknown in view["error"]["detail"]

    # A retry of a failed key is a new job (the PACS may be back), not the failed one.
    assert _post(server, {"study_uid": unknown}).json()["id"] != job.json()["id"]

    refused = _post(server, {"study_uid": unknown, "url": "http://elsewhere/dicom-web"})
    assert refused.status_code == 422 and "url" in refused.json()["detail"]
    assert httpx.post(f"{server.base_url}/v1/dicomweb/jobs", json={"study_uid": unknown}).status_code == 401
    assert httpx.get(f"{server.base_url}/readyz").status_code == 200  # still serving


def test_a_partial_series_and_a_study_without_ct_are_failed_jobs(pacs, real_slices, tmp_path):
    orthanc, server = pacs
    folder = ct_series(tmp_path / "ct", real_slices[:10])
    ct = pydicom.dcmread(sorted(folder.iterdir())[5], stop_before_pixels=True)
    orthanc.send(folder)
    orthanc.delete_instance(ct.SOPInstanceUID)
    view = _finished(server, _post(server, {"study_uid": ct.StudyInstanceUID}).json()["id"])
    assert view["status"] == "failed" and view["error"]["error"] == "invalid_dicom_series"
    assert "missing slices" in view["error"]["detail"]

    scout = ct_series(tmp_path / "scout", real_slices[:2])
    study = generate_uid()
    relabel(scout, study_uid=study, series_number=1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    orthanc.send(scout)
    view = _finished(server, _post(server, {"study_uid": study}).json()["id"])
    assert view["status"] == "failed" and view["error"]["error"] == "no_ct_series"
    assert sorted(s["modality"] for s in orthanc.series_of_study(study)) == ["CT"]  # nothing stored


def test_a_hung_pacs_is_a_failed_job_and_the_service_keeps_serving(pacs):
    orthanc, server = pacs
    orthanc.pause()
    try:
        job = _post(server, {"study_uid": generate_uid()})
        assert job.status_code == 202
        assert httpx.get(f"{server.base_url}/readyz", timeout=5).status_code == 200  # serving meanwhile
        view = _finished(server, job.json()["id"], timeout=60)
    finally:
        orthanc.resume()
    assert view["status"] == "failed" and view["error"]["error"] == "dicomweb_unavailable"
    assert "did not answer in time" in view["error"]["detail"] and PASSWORD not in view["error"]["detail"]
