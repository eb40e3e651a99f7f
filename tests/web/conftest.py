"""A real Chromium (Debian's ``/usr/bin/chromium``) driven by Playwright, for the web client's tests.

Playwright's own browser downloads are never used (``playwright install`` is
not run anywhere): the tests launch the system's chromium, which .ci/run
installs, and skip with the reason when it or the playwright package is
missing.  Every wait has a deadline (Playwright's default timeouts are set
low, below), so a broken page fails a test in seconds instead of hanging it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]
TIMEOUT_MS = 10_000  # any single Playwright step


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed (dev extra)")
    if not shutil.which(CHROMIUM):
        message = "chromium is not installed (.ci/run installs Debian's chromium)"
        if os.environ.get("CI"):  # CI installed it: missing there is a failure, not a skip
            pytest.fail(message)
        pytest.skip(message)
    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True, timeout=30_000)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
def pages(browser: Any) -> Any:
    """``await pages(url)``: a page in a context of its own (its own storage, like another person)."""

    async def open_page(url: str, init_script: str | None = None, **context_args: Any) -> Any:
        context = await browser.new_context(**context_args)
        context.set_default_timeout(TIMEOUT_MS)
        if init_script:
            await context.add_init_script(init_script)
        page = await context.new_page()
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        page.on("console", lambda msg: page.errors.append(msg.text) if msg.type == "error" else None)
        await page.goto(url)
        return page

    return open_page
