"""The web page in a real browser (headless Chromium driven by selenium) against a real server
process on loopback with a fast formula model (``web_formula_app``): upload the small real CT,
follow it to done, check what the viewer draws, the legend, the statistics, every download, the
error path, the API key and that no request leaves 127.0.0.1. Screenshots: ``web_screenshots/``.
"""

from __future__ import annotations

import base64
import gzip
import time

import httpx
import nibabel as nib
import numpy as np
import pytest
from selenium.webdriver.common.by import By
from web.conftest import API_KEY, CT_DIR
from web.pagekit import (
    canvas_pixels,
    coloured_pixels,
    console_errors,
    drain_logs,
    open_page,
    outside_requests,
    requests_sent,
    text_of,
    upload,
)

pytestmark = pytest.mark.slow

CONTENT_TYPES = {
    "nifti": "application/gzip",
    "rtstruct": "application/dicom",
    "seg": "application/dicom",
    "preview": "image/png",
    "statistics": "application/json",
}


def legend_labels(driver) -> list[int]:
    return [int(item.get_attribute("data-label")) for item in driver.find_elements(By.CSS_SELECTOR, "#legend-list li")]


def statistics_rows(driver) -> dict[int, list[str]]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#stats-table tbody tr")
    return {int(row.get_attribute("data-label")): [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
            for row in rows}


def download_links(driver) -> dict[str, str]:
    return {link.get_attribute("data-kind"): link.get_attribute("href")
            for link in driver.find_elements(By.CSS_SELECTOR, "#download-list a")}


def mask_labels(mask_url: str, headers: dict | None = None) -> list[int]:
    response = httpx.get(mask_url, headers=headers, timeout=30)
    image = nib.Nifti1Image.from_bytes(gzip.decompress(response.content))
    return [int(v) for v in np.unique(np.asarray(image.dataobj)) if v != 0]


def check_no_outside_requests_or_errors(driver, *, allowed_errors: tuple[str, ...] = ()) -> list[dict]:
    sent = requests_sent(driver)
    assert sent, "the performance log recorded no request at all"
    assert outside_requests([request["url"] for request in sent]) == []
    assert console_errors(driver, allowed=allowed_errors) == []
    return sent


@pytest.fixture
def page(browser, web_server):
    drain_logs(browser)
    open_page(browser, web_server.base_url)
    return browser


def test_upload_shows_the_ct_and_mask_legend_statistics_and_downloads(page, web_server, ct_sm, screenshot_dir):
    assert upload(page, ct_sm) == "done", text_of(page, "error-box")
    assert page.find_element(By.ID, "progress-bar").get_attribute("value") == "1"
    assert "windows" in text_of(page, "progress-count")
    pixels = canvas_pixels(page, save_as=screenshot_dir / "viewer_canvas.png")
    page.save_screenshot(str(screenshot_dir / "page_done.png"))

    # The viewer drew the CT (many grey levels, not a uniform canvas) and the mask over it.
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 1000
    assert coloured_pixels(pixels) > 2000

    links = download_links(page)
    present = mask_labels(links["nifti"])
    assert present == [1, 3]  # liver and spleen; the model's label 2 never wins
    assert legend_labels(page) == present
    legend_text = text_of(page, "legend-list")
    assert "liver" in legend_text and "spleen" in legend_text and "kidney" not in legend_text

    rows = statistics_rows(page)
    assert sorted(rows) == present
    assert rows[1][0] == "liver" and float(rows[1][1]) > 0
    assert set(links) == {"nifti", "preview", "statistics"}  # a NIfTI input: no RTSTRUCT/SEG
    for kind, url in links.items():
        response = httpx.get(url, timeout=30)
        assert response.status_code == 200, (kind, response.text[:300])
        assert response.headers["content-type"].split(";")[0] == CONTENT_TYPES[kind], kind
    check_no_outside_requests_or_errors(page)


def test_legend_switches_labels_off_and_the_slider_sets_opacity(page, ct_sm, screenshot_dir):
    assert upload(page, ct_sm) == "done", text_of(page, "error-box")
    shown = coloured_pixels(canvas_pixels(page))
    page.find_element(By.ID, "label-1").click()  # liver off
    without_liver = coloured_pixels(canvas_pixels(page, save_as=screenshot_dir / "viewer_liver_off.png"))
    assert 0 < without_liver < 0.8 * shown
    page.find_element(By.ID, "label-3").click()  # spleen off too: no mask left
    assert coloured_pixels(canvas_pixels(page, save_as=screenshot_dir / "viewer_all_off.png")) < 0.02 * shown
    page.find_element(By.ID, "label-1").click()
    page.find_element(By.ID, "label-3").click()
    assert coloured_pixels(canvas_pixels(page)) > 0.9 * shown

    slider = page.find_element(By.ID, "opacity")
    page.execute_script(
        "arguments[0].value = '0'; arguments[0].dispatchEvent(new Event('input'))", slider
    )
    assert text_of(page, "opacity-value") == "0 %"
    assert coloured_pixels(canvas_pixels(page, save_as=screenshot_dir / "viewer_opacity_0.png")) < 0.02 * shown
    check_no_outside_requests_or_errors(page)


def test_an_invalid_upload_explains_itself_and_the_next_one_works(page, ct_sm, tmp_path, screenshot_dir):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("This is a note, not a CT scan.\n")
    assert upload(page, text_file) == "failed"
    error = text_of(page, "error-box")
    page.save_screenshot(str(screenshot_dir / "page_error.png"))
    assert error.startswith("This file is not a CT format the service can read.")
    assert "not a supported volume format" in error  # the server's detail, in full
    assert not page.find_element(By.ID, "result-section").is_displayed()
    assert not page.find_element(By.ID, "progress-row").is_displayed()

    assert upload(page, ct_sm) == "done", text_of(page, "error-box")
    assert not page.find_element(By.ID, "error-box").is_displayed()
    assert legend_labels(page) == [1, 3]
    # The refused upload's 415 is logged by the browser as a failed resource: that one only.
    check_no_outside_requests_or_errors(page, allowed_errors=("/v1/jobs?", "415"))


@pytest.fixture(scope="module")
def dicom_zip(tmp_path_factory) -> object:
    """The real DICOM series with fresh UIDs (``dicom_variants``), cropped, zipped."""
    if not (CT_DIR / "example_ct_dicom").is_dir():
        pytest.skip(f"real CT fixtures not found at {CT_DIR}")
    from dicom_variants import fixture_slices, write_variant, zip_series

    root = tmp_path_factory.mktemp("dicom")
    series = write_variant(root / "series", fixture_slices(CT_DIR / "example_ct_dicom"), "head_first_supine")
    path = root / "abdomen_series.zip"
    path.write_bytes(zip_series(series))
    return path


def test_a_dicom_series_also_offers_rtstruct_and_seg(page, dicom_zip):
    assert upload(page, dicom_zip) == "done", text_of(page, "error-box")
    links = download_links(page)
    assert set(links) == {"nifti", "rtstruct", "seg", "preview", "statistics"}
    for kind, url in links.items():
        response = httpx.get(url, timeout=30)
        assert response.status_code == 200, (kind, response.text[:300])
        assert response.headers["content-type"].split(";")[0] == CONTENT_TYPES[kind], kind
    assert legend_labels(page) == mask_labels(links["nifti"])
    assert coloured_pixels(canvas_pixels(page)) > 0
    check_no_outside_requests_or_errors(page)


def test_with_an_api_key_the_page_asks_once_and_sends_it_as_a_header(browser, locked_server, ct_sm):
    drain_logs(browser)
    open_page(browser, locked_server.base_url)
    key_section = browser.find_element(By.ID, "key-section")
    assert key_section.is_displayed()
    browser.find_element(By.ID, "key-input").send_keys(API_KEY)
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    assert not key_section.is_displayed()
    assert upload(browser, ct_sm) == "done", text_of(browser, "error-box")

    sent = check_no_outside_requests_or_errors(browser)
    api_requests = [request for request in sent if "/v1/" in request["url"]]
    assert {"POST", "GET"} <= {request["method"] for request in api_requests}
    for request in api_requests:
        assert request["headers"].get("X-API-Key") == API_KEY, request["url"]
    assert all(API_KEY not in request["url"] for request in sent)
    links = download_links(browser)
    assert all(API_KEY not in url for url in links.values())
    assert httpx.get(links["nifti"], timeout=30).status_code == 401  # a bare link carries no key
    assert httpx.get(links["nifti"], headers={"X-API-Key": API_KEY}, timeout=30).status_code == 200
    # Clicking a download button fetches the file with the key in the header, then saves it.
    browser.find_element(By.CSS_SELECTOR, "#download-list a[data-kind='preview']").click()
    clicked: list[dict] = []
    deadline = time.monotonic() + 10
    while not clicked and time.monotonic() < deadline:
        clicked = [r for r in requests_sent(browser) if r["url"] == links["preview"]]
        time.sleep(0.2)
    assert clicked and clicked[0]["headers"].get("X-API-Key") == API_KEY
    assert not browser.find_element(By.ID, "error-box").is_displayed()

    open_page(browser, locked_server.base_url)  # same tab: asked once, not again
    assert not browser.find_element(By.ID, "key-section").is_displayed()
    browser.execute_script("sessionStorage.clear()")


def watch_page(driver, *, until: str, timeout: float = 120) -> list[dict]:
    """Samples of the status line and the progress bar every 50 ms until ``document.body.dataset.jobState``
    is ``until``."""
    samples = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sample = driver.execute_script(
            "const bar = document.getElementById('progress-bar');"
            "return {state: document.body.dataset.jobState || null,"
            " text: document.getElementById('status-text').textContent,"
            " shown: !document.getElementById('progress-row').hidden,"
            " value: bar.hasAttribute('value') ? bar.value : null, max: bar.max}"
        )
        samples.append(sample)
        if sample["state"] == until:
            return samples
        time.sleep(0.05)
    raise AssertionError(f"the page did not reach {until} in {timeout:.0f} s; last: {samples[-1:]}")


def test_the_page_shows_the_queue_position_then_real_progress(browser, slow_server, ct_sm):
    drain_logs(browser)
    open_page(browser, slow_server.base_url)
    # Another client's job holds the inference slot, so the page's job waits behind it.
    ahead = httpx.post(f"{slow_server.base_url}/v1/jobs?preview=false&filename=ahead.nii.gz",
                       content=ct_sm.read_bytes(), headers={"Content-Type": "application/gzip"}, timeout=30)
    assert ahead.status_code == 202, ahead.text
    browser.execute_script("delete document.body.dataset.jobState")
    browser.find_element(By.ID, "file-input").send_keys(str(ct_sm))
    samples = watch_page(browser, until="done")

    assert any(s["text"] == "Waiting in the queue: position 1." for s in samples), samples[:5]
    running = [s for s in samples if s["text"].startswith("Segmenting: ") and s["value"] is not None]
    assert running, "the page never showed the inference progress"
    windows = running[-1]["max"]
    assert windows > 100  # the real window count of the case, not a percentage
    assert any(0 < s["value"] < windows for s in running)
    values = [s["value"] for s in running]
    assert values == sorted(values)
    final = samples[-1]
    assert final["text"].startswith("Done: ") and final["value"] == final["max"] == 1
    check_no_outside_requests_or_errors(browser)


def test_the_upload_is_keyboard_reachable_and_every_control_is_labelled(page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    page.execute_script("document.activeElement.blur()")
    ActionChains(page).send_keys(Keys.TAB).perform()
    assert page.execute_script("return document.activeElement.id") == "file-input"
    unlabelled = page.execute_script(
        "return [...document.querySelectorAll('input, progress')]"
        ".filter(el => !(el.labels && el.labels.length)).map(el => el.id)"
    )
    assert unlabelled == []
    assert page.find_element(By.ID, "viewer").get_attribute("aria-label")


def test_a_dropped_file_is_uploaded(page, ct_sm):
    page.execute_script("delete document.body.dataset.jobState")
    page.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));"
        "const transfer = new DataTransfer();"
        "transfer.items.add(new File([bytes], arguments[1]));"
        "const zone = document.getElementById('drop-zone');"
        "for (const type of ['dragenter', 'dragover', 'drop']) {"
        "  zone.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));"
        "}",
        base64.b64encode(ct_sm.read_bytes()).decode(), ct_sm.name,
    )
    state = watch_page(page, until="done")[-1]
    assert state["text"].startswith(f"Done: {ct_sm.name}")
    assert legend_labels(page) == [1, 3]
    check_no_outside_requests_or_errors(page)
