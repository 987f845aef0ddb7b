"""HTTP and batch name a case by one rule: an upload's mask downloads as ``<case>_mask.nii.gz``
and batch writes ``<case>.nii.gz`` with the same ``<case>`` for the same file name."""

from __future__ import annotations

import re
from pathlib import Path

from api.apikit import FakeSegmenter, nifti_gz_bytes, post_ct

from service.batch import output_path_for, run_batch
from service.settings import Settings

# The same NIfTI bytes under every name: both sides sniff the format from the bytes.
SUFFIXED = ["case_0000.nii.gz", "FLARE23_0042_0000.nii.gz", "ct.nii", "Scan.NII.GZ", "x.nrrd", "series.zip",
            "series2_0000.zip"]
UNSUFFIXED = ["scan_0000", "plain"]  # not batch cases (batch needs a suffix): compared by batch's naming


def _http_case(client, name: str) -> str:
    response = post_ct(client, params={"filename": name})
    assert response.status_code == 200, response.text
    match = re.fullmatch(r'attachment; filename="(.+)_mask\.nii\.gz"', response.headers["content-disposition"])
    assert match, response.headers["content-disposition"]
    return match[1]


def test_http_download_and_batch_output_agree_on_the_case_name(client, tmp_path: Path) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    data = nifti_gz_bytes()
    for name in SUFFIXED + UNSUFFIXED:
        (inputs / name).write_bytes(data)
    report = run_batch(inputs, outputs, Settings(work_dir=tmp_path / "work"), segmenter=FakeSegmenter())
    written = {Path(c.input).name: Path(c.output).name for c in report.cases if c.status == "ok"}
    assert sorted(written) == sorted(SUFFIXED), report.to_dict()
    assert all((outputs / out).is_file() for out in written.values())

    for name in SUFFIXED:
        assert written[name] == f"{_http_case(client, name)}.nii.gz", name
    for name in UNSUFFIXED:
        assert output_path_for(inputs / name, outputs).name == f"{_http_case(client, name)}.nii.gz", name
    assert written["case_0000.nii.gz"] == "case.nii.gz"  # the FLARE tag goes on both sides
    assert _http_case(client, "scan_0000") == "scan"
