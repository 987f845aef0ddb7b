"""The optional API key: 401 when configured and missing or wrong; ops routes stay open."""

from __future__ import annotations

import pytest
from api.apikit import FakeSegmenter, post_ct, serving


@pytest.fixture
def locked(make_settings, fake):
    with serving(make_settings(api_key="s3cret-key"), fake) as client:
        yield client


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0LWtleQ=="}],
)
def test_missing_or_wrong_key_is_401(locked, fake, headers):
    response = post_ct(locked, headers=headers)

    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert fake.calls == []


@pytest.mark.parametrize("headers", [{"X-API-Key": "s3cret-key"}, {"Authorization": "Bearer s3cret-key"}])
def test_right_key_is_accepted(locked, headers):
    assert post_ct(locked, headers=headers).status_code == 200
    assert locked.get("/v1/model", headers=headers).status_code == 200


def test_every_v1_route_needs_the_key(locked):
    assert locked.get("/v1/model").status_code == 401
    assert post_ct(locked, path="/v1/jobs").status_code == 401
    assert locked.get("/v1/jobs/0123").status_code == 401
    assert locked.delete("/v1/jobs/0123").status_code == 401


def test_auth_is_checked_before_the_parameters(locked):
    assert post_ct(locked, params={"overlap": 5}).status_code == 401


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"])
def test_ops_routes_need_no_key(locked, path):
    assert locked.get(path).status_code == 200


def test_empty_key_means_open(make_settings):
    with serving(make_settings(api_key=""), FakeSegmenter()) as client:
        assert post_ct(client).status_code == 200
