"""Fixtures for the output tests: the real DICOM series' slices and a synthetic organ mask."""

from __future__ import annotations

from pathlib import Path

import pytest
from dicom_variants import fixture_slices

SERIES_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ct" / "example_ct_dicom"


@pytest.fixture(scope="session")
def real_series_dir() -> Path:
    if not SERIES_DIR.is_dir():
        pytest.skip(f"real DICOM series not found at {SERIES_DIR}")
    return SERIES_DIR.resolve()


@pytest.fixture(scope="session")
def real_slices(real_series_dir):
    return fixture_slices(real_series_dir)
