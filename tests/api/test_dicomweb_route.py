"""``POST /v1/dicomweb/jobs`` without a PACS: what is refused before any job exists (the route
with a real Orthanc is tested in tests/pacs/test_pacs_end_to_end.py)."""

from __future__ import annotations

from api.apikit import serving

STUDY = "1.2.826.0.1.3680043.8.498.1"


def test_no_configured_pacs_is_a_422_naming_the_setting(client):
    answer = client.post("/v1/dicomweb/jobs", json={"study_uid": STUDY})
    assert answer.status_code == 422
    assert answer.json()["error"] == "invalid_input"
    assert "SWINXSEG_DICOMWEB_URL" in answer.json()["detail"]


def test_a_request_cannot_name_the_server_or_a_bad_uid_or_nifti(make_settings, fake):
    with serving(make_settings(dicomweb_url="http://127.0.0.1:9/dicom-web"), fake) as client:
        url_field = client.post("/v1/dicomweb/jobs", json={"study_uid": STUDY, "url": "http://elsewhere"})
        assert url_field.status_code == 422 and "url" in url_field.json()["detail"]
        bad_uid = client.post("/v1/dicomweb/jobs", json={"study_uid": "1.2; DROP"})
        assert bad_uid.status_code == 422
        nifti = client.post("/v1/dicomweb/jobs", json={"study_uid": STUDY, "outputs": ["nifti"]})
        assert nifti.status_code == 422 and "cannot be stored over DICOMweb" in nifti.json()["detail"]
        assert client.get("/v1/jobs/does-not-exist").status_code == 404  # and no job was made


def test_an_unreachable_pacs_is_a_failed_job_and_the_same_request_is_the_same_job_until_it_fails(make_settings, fake):
    from api.apikit import wait_until

    settings = make_settings(dicomweb_url="http://127.0.0.1:9/dicom-web", dicomweb_retries=0)
    with serving(settings, fake) as client:
        first = client.post("/v1/dicomweb/jobs", json={"study_uid": STUDY, "series_uid": STUDY + ".2"})
        assert first.status_code == 202
        job_url = first.headers["Location"]

        def failed() -> bool:
            return client.get(job_url).json()["status"] == "failed"

        wait_until(failed, what="the job to fail")
        view = client.get(job_url).json()
        assert view["error"]["error"] == "dicomweb_unavailable"
        assert "cannot reach the DICOMweb server http://127.0.0.1:9/dicom-web" in view["error"]["detail"]
        assert view["dicomweb"]["series_uid"] == STUDY + ".2"
        again = client.post("/v1/dicomweb/jobs", json={"study_uid": STUDY, "series_uid": STUDY + ".2"})
        assert again.status_code == 202 and again.json()["id"] != first.json()["id"]  # failed: a new job
