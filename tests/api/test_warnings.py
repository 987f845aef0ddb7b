"""Input warnings reach the HTTP client: X-Segmentation-Warnings, the metrics header, job status;
SWINXSEG_REFUSE_WARNINGS turns them into 422 warning_refused."""

from __future__ import annotations

import gzip
import json

import nibabel as nib
import numpy as np
from api.apikit import ct_array, nifti_gz_bytes, post_ct, serving, wait_until

from service.case_warnings import WARNINGS_HEADER


def _codes0_rescaled_bytes() -> bytes:
    """Orientation unknown (both codes 0) and a HU window rescaled to [0, 1]: two warnings."""
    scaled = ((np.clip(ct_array(), -160, 240) + 160) / 400.0).astype(np.float32)
    image = nib.Nifti1Image(scaled, None)  # no affine: nibabel would set the codes to 1 on save
    assert int(image.header["qform_code"]) == 0 and int(image.header["sform_code"]) == 0
    image.header["pixdim"][1:4] = (1.5, 1.5, 2.5)
    return gzip.compress(image.to_bytes())


def _codes(items: list[dict]) -> list[str]:
    return [item["code"] for item in items]


def test_clean_ct_has_an_empty_warnings_header(client):
    response = post_ct(client)
    assert response.status_code == 200, response.text
    assert json.loads(response.headers[WARNINGS_HEADER]) == []
    assert json.loads(response.headers["X-Segmentation-Metrics"])["warnings"] == []


def test_warnings_are_in_the_response_headers_and_the_mask_keeps_codes_0(client):
    response = post_ct(client, _codes0_rescaled_bytes(), params={"filename": "scan.nii.gz"})

    assert response.status_code == 200, response.text
    warnings = json.loads(response.headers[WARNINGS_HEADER])
    assert _codes(warnings) == ["orientation_unknown", "intensity_not_hu"]
    assert all("scan.nii.gz" in w["message"] for w in warnings)
    assert _codes(json.loads(response.headers["X-Segmentation-Metrics"])["warnings"]) == _codes(warnings)
    mask = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    assert int(mask.header["qform_code"]) == 0 and int(mask.header["sform_code"]) == 0


def test_refused_warning_is_a_422_naming_the_code(make_settings, fake):
    with serving(make_settings(refuse_warnings="intensity_not_hu"), fake) as client:
        response = post_ct(client, _codes0_rescaled_bytes())
        assert response.status_code == 422
        body = response.json()
        assert body["error"] == "warning_refused"
        assert "intensity_not_hu" in body["detail"] and "orientation_unknown" not in body["detail"]
        assert fake.calls == []  # refused before the model ran
        assert post_ct(client).status_code == 200  # a clean CT still goes through


def _job(client, data: bytes, status: str) -> dict:
    job = post_ct(client, data, path="/v1/jobs", params={"preview": "false"}).json()
    seen: dict = {}

    def reached() -> bool:
        seen.update(client.get(job["links"]["self"]).json())
        return seen["status"] == status

    wait_until(reached, what=f"job {status}")
    return seen


def test_job_status_lists_the_warnings(client):
    assert _job(client, nifti_gz_bytes(), "done")["warnings"] == []
    done = _job(client, _codes0_rescaled_bytes(), "done")
    assert _codes(done["warnings"]) == ["orientation_unknown", "intensity_not_hu"]


def test_refused_job_fails_and_still_says_why(make_settings, fake):
    with serving(make_settings(refuse_warnings="orientation_unknown,non_ct_modality"), fake) as client:
        failed = _job(client, _codes0_rescaled_bytes(), "failed")
    assert failed["error"]["error"] == "warning_refused"
    assert "orientation_unknown" in failed["error"]["detail"]
    assert _codes(failed["warnings"]) == ["orientation_unknown", "intensity_not_hu"]

