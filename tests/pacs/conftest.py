"""Fixtures of the PACS tests: a real Orthanc per test (stopped after), the real series' slices and
a formula segmenter (the whole engine, a threshold for a network: seconds on the CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dicom_variants import fixture_slices
from pacs.orthanc_kit import OrthancServer, missing_tools

SERIES_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ct" / "example_ct_dicom"


@pytest.fixture(scope="session")
def real_slices():
    if not SERIES_DIR.is_dir():
        pytest.skip(f"real DICOM series not found at {SERIES_DIR}")
    return fixture_slices(SERIES_DIR.resolve())


@pytest.fixture
def orthanc(tmp_path):
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    server = OrthancServer(tmp_path / "orthanc").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def formula():
    from service_e2e.formula_app import formula_segmenter

    from service.settings import Settings

    return formula_segmenter(Settings(device="cpu"))
