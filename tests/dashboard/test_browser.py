"""The running dashboard in a real browser (Playwright with Debian's chromium): every page opens,
finishes running, shows no error, and is saved as a screenshot. Skipped without chromium."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from retailrec.config import Settings
from tests.utils.server import free_port, wait_until_up

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason="chromium is not installed"),
]
#: Page key -> a text that proves the page rendered its content.
PAGES = {
    "data": "Last ETL run",
    "models": "Champion history",
    "recommendations": "strategy",
    "monitoring": "Online quality",
}


@pytest.fixture(scope="module")
def dashboard(shop_settings: Settings) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "RETAILREC_DATA_DIR": str(shop_settings.data_dir)}
    env.pop("RETAILREC_API_URL", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "retailrec",
            "dashboard",
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/_stcore/health", proc, timeout=60)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def test_every_page_renders_without_an_error(dashboard: str, tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    shots = Path(os.environ.get("RETAILREC_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for key, proof in PAGES.items():
                page.goto(f"{dashboard}/?page={key}")
                page.wait_for_selector(
                    '[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=90_000
                )
                page.get_by_text(proof).first.wait_for(timeout=30_000)
                page.screenshot(path=str(shots / f"{key}.png"), full_page=True)
                errors = page.locator(
                    '[data-testid="stException"], [data-testid="stAlertContentError"]'
                )
                assert errors.count() == 0, f"{key}: {errors.first.inner_text()}"
        finally:
            browser.close()
    assert sorted(p.name for p in shots.glob("*.png")) == sorted(f"{k}.png" for k in PAGES)
