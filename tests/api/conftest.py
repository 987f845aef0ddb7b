"""Fixtures for the HTTP tests (helpers live in ``apikit.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from api.apikit import FakeSegmenter, serving
from fastapi.testclient import TestClient

from service.settings import Settings


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def _make(**overrides) -> Settings:
        values = dict(
            work_dir=tmp_path,
            queue_size=2,
            job_ttl_s=60,
            max_upload_mb=1,
            api_key=None,
            warmup=True,
            model_dir=tmp_path / "no-model",
        )
        values.update(overrides)
        return Settings(**values)

    return _make


@pytest.fixture
def fake() -> FakeSegmenter:
    return FakeSegmenter()


@pytest.fixture
def client(make_settings, fake) -> Iterator[TestClient]:
    with serving(make_settings(), fake) as test_client:
        yield test_client
