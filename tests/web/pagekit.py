"""Helpers for driving the page in the browser tests: upload, wait, logs, screenshots."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

LOOPBACK_HOSTS = {"127.0.0.1"}


def open_page(driver, base_url: str) -> None:
    driver.get(f"{base_url}/")
    wait_js(driver, "return document.body.dataset.ready === 'true'", what="the page's script")


def wait_js(driver, script: str, *, timeout: float = 120, what: str = "condition"):
    started = time.monotonic()
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def upload(driver, path: Path) -> str:
    """Choose ``path`` in the page's file input; wait until the page is done or failed; returns which."""
    from selenium.webdriver.common.by import By

    driver.execute_script("delete document.body.dataset.jobState")
    driver.find_element(By.ID, "file-input").send_keys(str(path))
    return wait_js(
        driver,
        "const s = document.body.dataset.jobState; return (s === 'done' || s === 'failed') ? s : null",
        what=f"the upload of {path.name} to finish",
    )


def wait_for_drawing(driver) -> None:
    """NiiVue draws on the next animation frames after a change: wait for two of them."""
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(done, 300)));"
    )


def canvas_pixels(driver, element_id: str = "viewer", *, save_as: Path | None = None) -> np.ndarray:
    """The element's screenshot as an (H, W, 3) uint8 array (what the screen shows), scrolled
    into view first; ``save_as``: also keep the PNG."""
    from PIL import Image
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, element_id)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    wait_for_drawing(driver)
    png = element.screenshot_as_png
    if save_as is not None:
        save_as.write_bytes(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def coloured_pixels(pixels: np.ndarray) -> int:
    """Pixels that are clearly coloured (the CT is grey): the mask overlay. The yellow cross-hair
    (255, 217, 51), also where it is blended with grey (3D view, anti-aliased edges), is not
    counted: green well above blue with red close to green, unlike the liver's orange or the
    spleen's violet."""
    rgb = pixels.astype(np.int16)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    crosshair = (green - blue > 25) & (red - blue > 25) & (red - green < 45)
    return int(((spread > 30) & ~crosshair).sum())


def requests_sent(driver) -> list[dict]:
    """Every request (``url``, ``method``, ``headers``) the browser sent since the last call
    (Chrome's performance log, which each read drains)."""
    sent = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            sent.append(message["params"]["request"])
    return sent


def drain_logs(driver) -> None:
    driver.get_log("performance")
    driver.get_log("browser")


def outside_requests(urls: list[str]) -> list[str]:
    """The URLs that would leave this machine's loopback. data: and blob: never leave the page;
    chrome:// is the browser's own built-in pages (its start page before the first navigation)."""
    outside = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob", "chrome"):
            continue
        if parts.scheme not in ("http", "https", "ws", "wss") or parts.hostname not in LOOPBACK_HOSTS:
            outside.append(url)
    return outside


def console_errors(driver, *, allowed: tuple[str, ...] = ()) -> list[dict]:
    """SEVERE browser-log entries since the last call, except network ones matching ``allowed``
    (the failed request an error test makes on purpose shows there too)."""
    errors = []
    for entry in driver.get_log("browser"):
        if entry["level"] != "SEVERE":
            continue
        if entry.get("source") == "network" and any(text in entry["message"] for text in allowed):
            continue
        errors.append(entry)
    return errors


def text_of(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text
