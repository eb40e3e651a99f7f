"""The web client's core (gateway/web/core.js) under node's own test runner, without a browser."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_core_js_under_node_test() -> None:
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):  # .ci/run installed it: missing there is a failure, not a skip
            pytest.fail("node is not installed, though .ci/run installs nodejs")
        pytest.skip("node is not installed (.ci/run installs nodejs): core.js's tests need `node --test`")
    result = subprocess.run([node, "--test", str(ROOT / "tests" / "web" / "core.test.mjs")], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout
