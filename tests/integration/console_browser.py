"""Headless Chromium for the console's tests (Debian's chromium + chromium-driver, driven by selenium).
Missing: the tests skip with the reason, or fail under CI (`make tools` installs them)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
WIDTHS = {"desktop": (1280, 900), "390px": (390, 844)}


def _missing(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI needs {why} (make tools installs it)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium (pip install -e '.[test]')")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        _missing("Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def until(driver: Any, timeout: float, what: str, pred: Any) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # a card is replaced when its buttons change (Stop -> Start): an element found a moment ago may be gone
    return WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)) \
        .until(lambda d: pred(d), message=f"waiting for {what}")


def card_state(driver: Any, model: str) -> str | None:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f'article.model[data-model="{model}"]')
    return found[0].get_attribute("data-state") if found else None


def screenshots(driver: Any, base: str, pages: dict[str, str], out: Path = SHOTS) -> None:
    """Each page at desktop width and at 390 px into `out` (docs/console/: `make screenshots`)."""
    import time

    out.mkdir(parents=True, exist_ok=True)
    for label, (w, h) in WIDTHS.items():
        driver.set_window_size(w, h)
        for name, path in pages.items():
            driver.get(base + path)
            time.sleep(0.4)                     # the event stream's first update
            driver.save_screenshot(str(out / f"{name}-{label}.png"))
    driver.set_window_size(*WIDTHS["desktop"])
