"""Plugin: Debian's headless Chromium, driven by Playwright through ``executable_path`` (no
browser download). The ``chromium`` package is installed if missing (needs root and apt); if
that is impossible the tests that need it skip, saying why, or fail in CI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from nasvit_testing.apt import apt_install
from nasvit_testing.availability import unavailable

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling out, which this machine's
# closed network refuses; no sandbox because the tests may run as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """A headless Chromium for one test module."""
    if not CHROMIUM.exists():
        reason = apt_install("chromium")
        if reason or not CHROMIUM.exists():
            unavailable(f"Chromium unavailable: {reason or f'no {CHROMIUM} after install'}")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()
