"""GET / (the web page) and its assets, without a browser: what is served, with which headers,
and that nothing in the page points outside the service."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from api.apikit import FakeSegmenter, serving

from service.api.routes_web import CONTENT_SECURITY_POLICY, WEB_DIR

VENDOR = WEB_DIR / "vendor" / "niivue"


def page_config(html: str) -> dict:
    match = re.search(r'<script type="application/json" id="swinxseg-config">(.*?)</script>', html, re.S)
    assert match, "the page carries no config block"
    return json.loads(match.group(1))


def test_the_page_is_served_with_its_config_and_a_self_only_policy(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY and "connect-src 'self'" in CONTENT_SECURITY_POLICY
    config = page_config(response.text)
    assert config["api_key_required"] is False
    labels = {entry["label"]: entry for entry in config["labels"]}
    assert 0 not in labels  # background is no organ
    assert labels[1]["name"] == "liver" and labels[1]["colour"] == [221, 130, 101]  # the DICOM outputs' colour


def test_the_page_says_when_a_key_is_needed_but_needs_none_itself(make_settings):
    with serving(make_settings(api_key="s3cret-key"), FakeSegmenter()) as client:
        response = client.get("/")
        assert response.status_code == 200
        assert page_config(response.text)["api_key_required"] is True
        assert "s3cret-key" not in response.text
        assert client.get("/web/app.js").status_code == 200
        assert client.get("/v1/model").status_code == 401  # the API itself stays locked


@pytest.mark.parametrize(
    ("path", "media"),
    [
        ("/web/app.js", "javascript"),
        ("/web/style.css", "text/css"),
        ("/web/vendor/niivue/niivue.umd.js", "javascript"),
        ("/web/vendor/niivue/LICENSE.txt", "text/plain"),
    ],
)
def test_assets_are_served_from_the_package(client, path, media):
    response = client.get(path)
    assert response.status_code == 200
    assert media in response.headers["content-type"]
    assert response.content == (WEB_DIR / path.removeprefix("/web/")).read_bytes()


def test_the_page_and_its_code_name_no_other_host():
    # Every URL the page's own files contain; the vendored bundle is checked in the browser test
    # (its source mentions documentation links in comments, which it never requests).
    for name in ("index.html", "app.js", "style.css"):
        text = (WEB_DIR / name).read_text()
        assert re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text) == [], name
        assert "@import" not in text and "fonts.googleapis" not in text


def test_the_vendored_viewer_is_pinned_and_licensed():
    version = dict(line.split(": ", 1) for line in (VENDOR / "VERSION").read_text().splitlines())
    assert version["package"] == "@niivue/niivue"
    assert re.fullmatch(r"\d+\.\d+\.\d+", version["version"])
    assert version["license"] == "BSD-2-Clause"
    assert "BSD 2-Clause License" in (VENDOR / "LICENSE.txt").read_text()
    import hashlib

    assert hashlib.sha256((VENDOR / "niivue.umd.js").read_bytes()).hexdigest() == version["sha256"]


def test_the_package_data_ships_the_web_files():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["service"]
    shipped = {path for pattern in patterns for path in (WEB_DIR.parent).glob(pattern)}
    for path in WEB_DIR.rglob("*"):
        if path.is_file():
            assert path in shipped, f"{path} is not in the package data"


def test_existing_routes_still_answer_beside_the_page(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/nope").json()["error"] == "not_found"
    assert "/" not in client.get("/openapi.json").json()["paths"]  # the page is not part of the API


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def _contrast(a: str, b: str) -> float:
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_text_colours_have_readable_contrast():
    """WCAG AA (4.5:1 for text) for every text/background pair the style sheet uses."""
    css = (WEB_DIR / "style.css").read_text()
    colours = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-f]{6});", css))
    pairs = [("text", "page"), ("text", "panel"), ("muted", "page"), ("muted", "panel"),
             ("error-text", "error-back"), ("text", "warn-back"), ("accent", "panel")]
    for text, back in pairs:
        assert _contrast(colours[text], colours[back]) >= 4.5, (text, back)
    assert _contrast("#ffffff", colours["accent"]) >= 4.5  # button labels
    assert _contrast("#ffffff", colours["accent-dark"]) >= 4.5  # hovered buttons


def test_label_names_cannot_break_out_of_the_config_block(make_settings):
    fake = FakeSegmenter()
    fake.manifest.labels[1] = "liver</script><script>alert(1)</script>"
    with serving(make_settings(), fake) as client:
        html = client.get("/").text
    assert "<script>alert(1)" not in html
    assert page_config(html)["labels"][0]["name"] == "liver</script><script>alert(1)</script>"
