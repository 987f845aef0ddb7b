"""The service docs stay complete: every setting's environment variable and every metric is listed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from api.apikit import post_ct

from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
# docs/SERVICE.md is the source; once merged into README.md either one may carry it.
DOC_FILES = [REPO / "docs" / "SERVICE.md", REPO / "README.md"]


@pytest.fixture(scope="module")
def docs() -> str:
    texts = [path.read_text() for path in DOC_FILES if path.is_file()]
    if not texts:
        pytest.skip("no service docs in this tree")
    return "\n".join(texts)


def test_every_setting_is_documented(docs):
    missing = [f"SWINXSEG_{name.upper()}" for name in Settings.model_fields if f"`SWINXSEG_{name.upper()}`" not in docs]
    assert not missing, f"document these settings in docs/SERVICE.md: {missing}"


def test_every_metric_is_documented(docs, client):
    post_ct(client)
    exposed = set(re.findall(r"^# TYPE (swinxseg_\w+) ", client.get("/metrics").text, re.M))
    exposed = {re.sub(r"_created$", "", name) for name in exposed}
    # Counters are documented with their _total sample name.
    missing = [name for name in exposed if name not in docs and f"{name}_total" not in docs]
    assert not missing, f"document these metrics in docs/SERVICE.md: {missing}"
