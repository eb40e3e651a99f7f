"""benchmarks/browser_tabs.py in small: three tabs on two gateways, every broadcast everywhere, CPU measured."""

from __future__ import annotations

import shutil

import pytest

from benchmarks import browser_tabs
from tests.web.conftest import CHROMIUM

pytestmark = pytest.mark.timeout(120)


async def test_three_tabs_on_two_gateways() -> None:
    pytest.importorskip("playwright.async_api", reason="playwright is not installed (dev extra)")
    if not shutil.which(CHROMIUM):
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    result = await browser_tabs.run(tabs=3, messages=2, gateways=2, chromium=CHROMIUM, timeout=30)
    assert result["deliveries"] == 18 and result["messages_sent"] == 6
    assert result["gateway_cpu_login_s"] > 0  # psutil saw the gateways work (argon2 at login, at least)
    assert result["gateway_cpu_ms_per_tab"] > 0
