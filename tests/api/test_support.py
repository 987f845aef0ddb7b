"""Small pieces of the API package: upload names, log lines, dependency overrides, the real engine."""

from __future__ import annotations

import gzip
import io
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from api.apikit import FakeSegmenter, ct_array, manifest, nifti_gz_bytes, post_ct, serving

from service.api.deps import get_segmenter
from service.api.uploads import Upload, case_name_of
from service.logs import (
    JsonFormatter,
    RequestIdFilter,
    TextFormatter,
    configure_logging,
    request_id_var,
)


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        (None, "case"),
        ("Case 01.nii.gz", "Case_01"),
        ("../../etc/passwd", "passwd"),
        ("C:\\scans\\abd.NRRD", "abd"),
        ("series.zip", "series"),
        ('we"ird;name.mha', "we_ird_name"),
        (".nii.gz", "case"),
    ],
)
def test_case_name_is_safe(filename, expected):
    assert case_name_of(filename) == expected


def test_reader_gets_a_name_hint_from_the_media_type():
    assert Upload(Path("spool"), None, "application/zip").reader_filename == "upload.zip"
    assert Upload(Path("spool"), None, "application/gzip").reader_filename == "upload.nii.gz"
    assert Upload(Path("spool"), "x.nrrd", "application/gzip").reader_filename == "x.nrrd"
    assert Upload(Path("spool"), None, "application/octet-stream").reader_filename is None


def _record(**extra) -> logging.LogRecord:
    record = logging.LogRecord("swinxseg.access", logging.INFO, __file__, 1, "POST %s -> %d", ("/v1/segment", 200), None)
    for key, value in extra.items():
        setattr(record, key, value)
    RequestIdFilter().filter(record)
    return record


def test_json_log_line_has_request_id_route_status_seconds():
    token = request_id_var.set("req-42")
    try:
        record = _record(route="/v1/segment", status=200, seconds=1.25, method="POST")
    finally:
        request_id_var.reset(token)
    line = JsonFormatter().format(record)

    assert "\n" not in line
    payload = json.loads(line)
    assert payload["request_id"] == "req-42"
    assert payload["message"] == "POST /v1/segment -> 200"
    assert (payload["route"], payload["status"], payload["seconds"]) == ("/v1/segment", 200, 1.25)
    assert payload["level"] == "INFO" and payload["logger"] == "swinxseg.access"


def test_json_log_line_keeps_tracebacks_on_one_line():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    RequestIdFilter().filter(record)
    payload = json.loads(JsonFormatter().format(record))
    assert payload["request_id"] == "-"
    assert "ValueError: boom" in payload["exc"]


def test_text_log_line_shows_extras():
    line = TextFormatter().format(_record(route="/healthz", status=200))
    assert "route=/healthz" in line and "status=200" in line


def test_server_log_has_the_traceback_and_request_id(make_settings, fake, caplog):
    fake.error = RuntimeError("kaboom")
    with serving(make_settings(), fake) as client, caplog.at_level(logging.INFO):
        response = post_ct(client, headers={"X-Request-ID": "abc-1"})
    errors = [r for r in caplog.records if r.name == "swinxseg.api" and r.exc_info]
    assert response.status_code == 500 and errors
    assert "kaboom" in str(errors[0].exc_info[1])
    access = [r for r in caplog.records if r.name == "swinxseg.access" and getattr(r, "status", None) == 500]
    assert access and access[0].request_id == "abc-1" and access[0].route == "/v1/segment"


def test_configure_logging_emits_json_lines():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(level="INFO", json_lines=True)
        handler = root.handlers[0]
        handler.setStream(stream)
        logging.getLogger("uvicorn.error").info("Started server process")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert json.loads(stream.getvalue().splitlines()[0])["message"] == "Started server process"


def test_segmenter_dependency_can_be_overridden(make_settings):
    served, swapped = FakeSegmenter(), FakeSegmenter()
    with serving(make_settings(), served) as client:
        client.app.dependency_overrides[get_segmenter] = lambda: swapped
        assert post_ct(client).status_code == 200
    assert served.calls == [] and len(swapped.calls) == 1


@pytest.mark.slow
def test_real_segmenter_with_a_formula_predictor(make_settings):
    """The real engine end to end through HTTP: a formula predictor that labels HU > 50."""
    torch = pytest.importorskip("torch")
    from service.inference.predictors import FormulaPredictor
    from service.manifest import ArchitectureConfig
    from service.preprocess_spec import PreprocessSpec
    from service.segmenter import Segmenter

    def logits(batch):  # batch: (B, 1, X, Y, Z) windowed to [0, 1] from [-250, 250] HU
        bright = (batch > 0.6).float()  # 0.6 <-> 50 HU
        return torch.cat([1 - bright, bright], dim=1)

    settings = make_settings(device="cpu")
    segmenter = Segmenter.from_predictor(settings, FormulaPredictor(logits, out_channels=2), manifest().model_copy(
        update={"preprocess": PreprocessSpec(roi_size=(16, 16, 16), target_spacing_mm=(1.5, 1.5, 2.5)),
                "architecture": ArchitectureConfig(out_channels=2)}
    ))
    with serving(settings, segmenter) as client:
        response = post_ct(client, nifti_gz_bytes())
    assert response.status_code == 200, response.text
    mask = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(response.content)).dataobj)
    assert mask.shape == ct_array().shape
    assert set(np.unique(mask)) <= {0, 1} and mask.sum() > 0
