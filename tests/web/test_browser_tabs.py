"""``chinwag-loadtest browser`` in small: three tabs on two gateways, every broadcast everywhere, CPU measured."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from chinwag import loadtest
from tests.web.conftest import CHROMIUM

pytestmark = pytest.mark.timeout(120)


def test_three_tabs_on_two_gateways(tmp_path: Path) -> None:
    pytest.importorskip("playwright.async_api", reason="playwright is not installed (dev extra)")
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed, though .ci/run installs it")
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    out = tmp_path / "tabs.json"
    status = loadtest.main(["browser", "--start-cluster", "2", "--clients", "3", "--messages", "2",
                            "--chromium", CHROMIUM, "--timeout", "100", "--json", str(out), "--no-progress"])
    assert status == 0
    result = json.loads(out.read_text())
    assert result["scenario"] == "browser" and result["tabs"] == 3 and result["gateways"] == 2
    assert result["deliveries"] == 18 and result["messages_sent"] == 6
    assert result["gateway_cpu_login_s"] > 0  # psutil saw the gateways work (argon2 at login, at least)
    assert result["gateway_cpu_ms_per_tab"] > 0


def test_without_chromium_it_says_so_before_starting_anything(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    status = loadtest.main(["browser", "--start-cluster", "1", "--clients", "2",
                            "--chromium", str(tmp_path / "no-chromium")])
    assert status == 2
    assert "chromium" in capsys.readouterr().err.lower()
