"""A headless Chromium for the console's tests: Debian's ``chromium``, driven by Playwright
through its executable path (no browser download)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def chromium_path() -> str:
    path = os.environ.get("TRIPWIRE_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail("the console tests need Chromium: apt-get install chromium (.ci/run does)")
    return path


@pytest.fixture
def browser() -> Iterator[Any]:
    """Per test: Playwright's sync API runs an event loop in this thread while it is open, which
    the asyncio tests that come after must not find."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            # Root in CI cannot use Chromium's sandbox; /dev/shm may be small in containers.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on(
        "console",
        lambda message: errors.append(message.text) if message.type == "error" else None,
    )
    opened.set_default_timeout(8000)
    yield opened
    context.close()
    # A script error or a CSP violation shows up here: the page must run clean.
    assert not [e for e in errors if "401" not in e and "403" not in e], errors


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where screenshots go: docs/ when TRIPWIRE_CONSOLE_SCREENSHOTS is set (to refresh the
    README's pictures), else this test's own folder."""
    if os.environ.get("TRIPWIRE_CONSOLE_SCREENSHOTS"):
        return ROOT / "docs"
    return tmp_path
