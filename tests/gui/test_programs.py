"""The installed programs themselves: chinwag-tk and chinwag-admin as real processes on Xvfb.

The other GUI tests drive the window classes in-process; these start the real
entry points (``main()``), find their windows on the X display with xdotool,
and stop them with Ctrl-C (SIGINT), which must log out / stop the server
cleanly and exit 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from common.http import http_status
from tests.gui.conftest import HAVE_XDOTOOL, x_windows
from tests.helpers import FAST_ENV, ROOT, Processes, RedisServer, free_port, wait_until

pytestmark = pytest.mark.skipif(not HAVE_XDOTOOL, reason="xdotool is needed to find the programs' windows")


def program_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHINWAG_") and k != "REDIS_URL"}
    env.update(FAST_ENV)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def interrupt(proc: subprocess.Popen[bytes], timeout: float) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise


def test_chinwag_tk_program_logs_in_and_out(
    xvfb: str, redis_server: RedisServer, processes: Processes, tmp_path: Path
) -> None:
    gateway = processes.gateway(redis_server.url)
    env = program_env() | {"CHINWAG_PASSWORD": "pw", "CHINWAG_USER": "alice"}
    log = open(tmp_path / "tk.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "client.gui", "--server", gateway.url.removeprefix("ws://"), "--connect"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )
    log.close()
    try:
        # The title says who is logged in once the login went through.
        wait_until(lambda: x_windows("alice$"), 20, "the chinwag-tk window of alice")
        wait_until(lambda: "login alice" in gateway.log(), 5, "the gateway to see alice")
        assert interrupt(proc, 15) == 0, (tmp_path / "tk.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    wait_until(lambda: "logout alice (close code 1000)" in gateway.log(), 5, "a clean logout")


def test_chinwag_admin_program_runs_and_stops_the_server(xvfb: str, tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    log = open(tmp_path / "admin.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chinwag.admin", "--port", str(port), "--data-dir", str(data), "--run"],
        env=program_env(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )
    log.close()
    try:
        wait_until(lambda: proc.poll() is not None or http_status(f"http://127.0.0.1:{port}/readyz") == 200, 30,
                   "the admin's server to be ready")
        assert proc.poll() is None, (tmp_path / "admin.log").read_text()
        assert x_windows("^Chinwag Server$")
        redis = [p for p in psutil.process_iter(["name", "cwd"]) if p.info["cwd"] == str(data)]
        assert redis, "the embedded redis-server was not found"
        assert interrupt(proc, 30) == 0, (tmp_path / "admin.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert http_status(f"http://127.0.0.1:{port}/readyz") == 0  # nothing listens any more
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in redis), "redis-server left running"
