"""``swinxseg serve`` as a real process with the default model: real CTs in over HTTP, masks out
on the inputs' own grids.

Default settings throughout (overlap 0.5, device auto): on 2 CPU cores each case runs 40-50
windows of 96^3 (about 1.5-2 s each with the tiny model on ONNX Runtime), so each request takes
one to two minutes and this file several: hence ``slow``. Each request's time is logged (pytest
shows it with a failure, or live with ``-o log_cli=true``).
"""

from __future__ import annotations

import gzip
import json
import logging
import time
import zipfile
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from service.io.readers import read_volume
from service.manifest import load_manifest
from service.settings import DEFAULT_MODEL_DIR

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

# A case takes one to two minutes on a loaded 2-core machine; the bound only keeps a hung server
# from hanging the suite.
REQUEST_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
# NIfTI stores the affine as float32: compare to what survives that round trip.
AFFINE_ATOL = 1e-3


def post_segment(base_url: str, **kwargs) -> httpx.Response:
    started = time.perf_counter()
    response = httpx.post(f"{base_url}/v1/segment", timeout=REQUEST_TIMEOUT, **kwargs)
    log.info(
        "POST /v1/segment -> %d in %.1f s (X-Runtime-Seconds %s)",
        response.status_code, time.perf_counter() - started, response.headers.get("X-Runtime-Seconds"),
    )
    return response


def check_mask(response: httpx.Response, *, shape: tuple[int, ...], affine: np.ndarray) -> None:
    """The answer is a uint8 .nii.gz on the given grid, with parseable timing and metrics headers."""
    assert response.status_code == 200, response.text[:2000]
    assert response.headers["content-type"] == "application/gzip"
    image = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    assert image.shape == shape
    np.testing.assert_allclose(image.affine, affine, atol=AFFINE_ATOL)
    assert image.get_data_dtype() == np.uint8
    mask = np.asarray(image.dataobj)
    assert mask.dtype == np.uint8
    assert mask.max() <= 14  # FLARE-23 labels 0..14

    assert float(response.headers["X-Runtime-Seconds"]) > 0
    assert float(response.headers["X-Queue-Seconds"]) >= 0
    peak = response.headers["X-Peak-GPU-MB"]
    assert peak == "n/a" or float(peak) > 0
    metrics = json.loads(response.headers["X-Segmentation-Metrics"])
    assert tuple(metrics["input_shape"]) == shape
    assert metrics["windows_run"] + metrics["windows_skipped"] > 0


@pytest.fixture(scope="module")
def sm_path(ct_dir: Path) -> Path:
    return ct_dir / "example_ct_sm.nii.gz"


@pytest.fixture(scope="module")
def dicom_zip(ct_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The DICOM series as a zip with the files at its root, made in a temp folder."""
    path = tmp_path_factory.mktemp("dicom") / "example_ct_dicom.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in sorted((ct_dir / "example_ct_dicom").iterdir()):
            archive.write(item, arcname=item.name)
    return path.read_bytes()


def test_serves_the_default_model_unless_it_is_absent(swinxseg_server, serve_model_dir):
    expected = load_manifest(serve_model_dir or DEFAULT_MODEL_DIR, verify_checksums=False).name
    info = httpx.get(f"{swinxseg_server.base_url}/v1/model", timeout=10).json()
    assert info["name"] == expected
    assert httpx.get(f"{swinxseg_server.base_url}/healthz", timeout=10).json() == {"status": "ok"}


def test_raw_nifti_body(swinxseg_server, sm_path):
    ct = nib.load(sm_path)
    response = post_segment(
        swinxseg_server.base_url,
        content=sm_path.read_bytes(),
        params={"filename": sm_path.name},
        headers={"Content-Type": "application/octet-stream"},
    )
    check_mask(response, shape=ct.shape, affine=ct.affine)
    assert 'filename="example_ct_sm_mask.nii.gz"' in response.headers["content-disposition"]


def test_multipart_nifti(swinxseg_server, sm_path):
    ct = nib.load(sm_path)
    response = post_segment(
        swinxseg_server.base_url,
        files={"file": (sm_path.name, sm_path.read_bytes(), "application/gzip")},
    )
    check_mask(response, shape=ct.shape, affine=ct.affine)


def sitk_series_ras(folder: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and RAS affine of the series straight from SimpleITK (LPS -> RAS as the docs say),
    independent of the service's reader."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    affine = np.eye(4)
    flip = np.diag([-1.0, -1.0, 1.0])
    affine[:3, :3] = flip @ np.reshape(image.GetDirection(), (3, 3)) @ np.diag(image.GetSpacing())
    affine[:3, 3] = flip @ np.asarray(image.GetOrigin())
    return tuple(image.GetSize()), affine


def test_dicom_series_zip(swinxseg_server, ct_dir, dicom_zip):
    folder = ct_dir / "example_ct_dicom"
    ours = read_volume(folder)
    sitk_shape, sitk_affine = sitk_series_ras(folder)
    # The service's reader and SimpleITK agree on the geometry, slice spacing from the positions
    # (2 mm), not from SliceThickness (3 mm).
    assert ours.shape == sitk_shape
    np.testing.assert_allclose(ours.affine, sitk_affine, atol=1e-6)
    assert np.linalg.norm(sitk_affine[:3, 2]) == pytest.approx(2.0, abs=1e-3)

    response = post_segment(
        swinxseg_server.base_url,
        content=dicom_zip,
        params={"filename": "example_ct_dicom.zip"},
        headers={"Content-Type": "application/zip"},
    )
    check_mask(response, shape=sitk_shape, affine=sitk_affine)
