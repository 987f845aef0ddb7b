"""Fixtures for the browser tests: a real server process on loopback, headless Chromium.

Chromium and chromedriver are Debian's ``chromium`` and ``chromium-driver`` (``make chromium``
installs them); the tests skip, saying so, only where they are not installed. NiiVue draws with
WebGL2; headless Chromium has no GPU here, so it renders with SwiftShader (software Vulkan under
ANGLE), which ``--use-angle=swiftshader --enable-unsafe-swiftshader`` select and
``--ignore-gpu-blocklist`` allows: the viewer really draws, the screenshot checks are real.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_e2e.serverkit import LOOPBACK, REPO, ServerProcess, clean_env, free_port, run_server

CT_DIR = REPO / ".." / "shared" / "data" / "ct"
# Screenshots land here (git-ignored) for people to look at after a run.
SCREENSHOT_DIR = REPO / "web_screenshots"
API_KEY = "page-test-key-1234"

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the tests may run as root (CI containers)
    "--disable-dev-shm-usage",
    "--window-size=1400,1500",  # the whole page, result included, in one screenshot
    # WebGL2 in software: SwiftShader through ANGLE (NiiVue needs WebGL2).
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    # Nothing of Chromium's own: on a closed network each of these is a refused connection.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-quic",
    "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider",
)


def _browser_binaries() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("chromium and chromium-driver are not installed (make chromium installs them on Debian)")
    return chromium, driver


@pytest.fixture(scope="session")
def ct_sm() -> Path:
    path = CT_DIR / "example_ct_sm.nii.gz"
    if not path.is_file():
        pytest.skip(f"real CT fixtures not found at {CT_DIR}")
    return path.resolve()


def web_server_argv(port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", "--factory", "web.web_formula_app:create_web_app",
        "--app-dir", str(REPO / "tests"), "--host", LOOPBACK, "--port", str(port),
        "--workers", "1", "--no-access-log", "--log-level", "warning",
    ]


def _serve(root: Path, **env: str) -> Iterator[ServerProcess]:
    port = free_port()
    work_dir = root / "work"
    work_dir.mkdir()
    settings = clean_env(SWINXSEG_WORK_DIR=str(work_dir), SWINXSEG_WARMUP="false", SWINXSEG_MAX_UPLOAD_MB="64", **env)
    with run_server(web_server_argv(port), port=port, env=settings, log_path=root / "server.log") as server:
        yield server


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _serve(tmp_path_factory.mktemp("web-server"))


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Each window batch takes 20 ms: a case of the small CT lasts several seconds."""
    yield from _serve(tmp_path_factory.mktemp("web-server-slow"), WEB_WINDOW_DELAY_S="0.02")


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from _serve(tmp_path_factory.mktemp("web-server-key"), SWINXSEG_API_KEY=API_KEY)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    """Headless Chromium (a fresh profile) with the browser and performance logs on."""
    chromium, driver_path = _browser_binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    log_path = tmp_path_factory.mktemp("chromedriver") / "chromedriver.log"
    driver = webdriver.Chrome(service=Service(driver_path, log_output=str(log_path)), options=options)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def screenshot_dir() -> Path:
    SCREENSHOT_DIR.mkdir(exist_ok=True)
    return SCREENSHOT_DIR
