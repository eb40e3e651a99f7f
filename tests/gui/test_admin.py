"""chinwag-admin driven for real on Xvfb: it runs the embedded node, and it watches a cluster.

The admin window runs the real server (gateway + reaper + embedded Redis) on
its own loop thread; real chinwag-tk windows connect to it; the test presses
Run Server / Stop Server and waits (pumping Tk against a deadline) until the
log pane and the gateway table show what happened.
"""

from __future__ import annotations

import logging
import re
import socket
import tkinter as tk
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from chinwag.admin import AdminWindow
from common.config import Settings
from common.redis_cluster import RedisCluster
from tests.gui.conftest import Opened, Windows, can_screenshot, pump_until, screenshot
from tests.gui.input import needs_wm, needs_xdotool, press, press_for_dialog, resize
from tests.helpers import Processes, RedisServer, free_port


class Admins(Opened[AdminWindow]):
    """Opens admin windows and closes them (stopping their servers) at teardown."""

    close_timeout = 20.0
    join_timeout = 10.0

    def open(self, **kwargs: object) -> AdminWindow:
        top = tk.Toplevel(self.root)
        top.geometry("+0+0")
        admin = AdminWindow(top, **kwargs)  # type: ignore[arg-type]
        self.opened.append(admin)
        return admin


@pytest.fixture
def admins(tk_root: tk.Tk) -> Iterator[Admins]:
    registry = Admins(tk_root)
    yield registry
    registry.close_all()


def node_settings(tmp_path: Path) -> Settings:
    settings = Settings(
        host="127.0.0.1", port=9000, data_dir=str(tmp_path / "data"), argon2_time_cost=1, argon2_memory_kib=1024,
        shutdown_timeout=5.0,
    )
    if hasattr(settings, "http_port"):  # no metrics port: port + 100 may be anyone's on a test machine
        settings = settings.with_(http_port=0)
    return settings


def logged(admin: AdminWindow, user: str, verb: str) -> int:
    """Line number (1-based) of ``HH:MM:SS  <user> <verb>`` in the log pane, 0 if absent."""
    for number, text in enumerate(admin.log_contents().splitlines(), 1):
        if re.match(rf"^\d\d:\d\d:\d\d  {re.escape(user)} {verb}\b", text):
            return number
    return 0


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@needs_xdotool
def test_admin_runs_the_server_and_logs_clients(
    tk_root: tk.Tk, admins: Admins, windows: Windows, tmp_path: Path
) -> None:
    admin = admins.open(settings=node_settings(tmp_path))
    assert admin.host_var.get() == "127.0.0.1" and admin.port_var.get() == "9000"  # the seed's defaults
    assert str(admin.stop_button.cget("state")) == "disabled"
    port = free_port()
    admin.port_var.set(str(port))
    press(admin.run_button, tk_root)
    assert admin.server_state == "starting"  # Run Server returned at once
    pump_until(tk_root, lambda: admin.server_state == "running", 30, "the server to run")
    assert admin.status_text().startswith(f"Server running on ws://127.0.0.1:{port}")
    assert port_open(port)
    assert str(admin.run_button.cget("state")) == "disabled"
    pump_until(tk_root, lambda: len(admin.gateway_rows()) == 1, 10, "the gateway row")
    assert admin.gateway_rows()[0][0].endswith("(this server)")

    url = f"ws://127.0.0.1:{port}"
    alice = windows.login(url, "alice", at=(300, 120))
    bob = windows.login(url, "bob", at=(360, 160))
    carol = windows.login(url, "carol", at=(420, 200))
    pump_until(tk_root, lambda: logged(admin, "alice", "connected") and logged(admin, "bob", "connected")
               and logged(admin, "carol", "connected"), 10, "the connect lines")
    pump_until(tk_root, lambda: admin.gateway_rows()[0][1] == "3", 10, "3 users on the gateway")
    assert "3 online" in admin.online_var.get()

    windows.close(alice)  # a clean logout
    pump_until(tk_root, lambda: logged(admin, "alice", "disconnected"), 10, "alice's disconnect line")
    assert logged(admin, "alice", "connected") < logged(admin, "alice", "disconnected")
    pump_until(tk_root, lambda: admin.gateway_rows()[0][1] == "2", 10, "2 users on the gateway")
    if can_screenshot():
        admin.top.lift()
        assert screenshot(admin.top, "chinwag-admin.png", tmp_path).stat().st_size > 10_000

    press(admin.stop_button, tk_root)
    pump_until(tk_root, lambda: admin.server_state == "stopped", 30, "the server to stop")
    assert admin.status_text() == "Server stopped. Press Run Server to start it again."
    assert not port_open(port)
    # The clients still connected were logged out by the stop, and the log says so.
    assert logged(admin, "bob", "disconnected") and logged(admin, "carol", "disconnected")
    assert admin.log_contents().rstrip().endswith("Server stopped")
    assert admin.gateway_rows() == []
    pump_until(tk_root, lambda: bob.state != "connected", 10, "bob to notice")

    # And it runs again from the same window (same data directory: accounts kept).
    press(admin.run_button, tk_root)
    pump_until(tk_root, lambda: admin.server_state == "running", 30, "the server to run again")
    pump_until(tk_root, lambda: carol.state == "connected", 20, "carol to reconnect by herself")
    pump_until(tk_root, lambda: admin.log_contents().count("carol connected") == 2, 10, "carol's second connect")


@needs_wm
def test_a_second_admin_on_a_busy_port_says_it_did_not_start(
    tk_root: tk.Tk, admins: Admins, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two admin windows, one port: the second says, in words, that its server never started."""
    port = free_port()
    first = admins.open(settings=node_settings(tmp_path).with_(port=port))
    press(first.run_button, tk_root)
    pump_until(tk_root, lambda: first.server_state == "running", 30, "the first server to run")
    second = admins.open(settings=node_settings(tmp_path / "second").with_(port=port))
    second.top.geometry("+200+120")
    caplog.set_level(logging.INFO)
    title, text, _ = press_for_dialog(second.run_button, second.top, tk_root, "the error dialog", 30)
    assert title == "Server Not Started"
    assert f"port {port} on 127.0.0.1 is already in use by another program" in text
    assert "stopped" not in text and "Errno" not in text
    assert second.status_text() == f"Server not started: port {port} on 127.0.0.1 is already in use by another program"
    assert "Server not started" in second.log_contents() and "Errno" not in second.log_contents()
    assert "normal" == str(second.run_button.cget("state"))
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert not tracebacks, f"tracebacks logged: {[r.getMessage() for r in tracebacks]}"
    assert first.server_state == "running"  # the first is unharmed


@needs_wm
def test_the_log_keeps_following_after_the_window_is_enlarged_and_restored(
    tk_root: tk.Tk, admins: Admins, tmp_path: Path
) -> None:
    admin = admins.open(settings=node_settings(tmp_path))
    text = admin.log_text

    def last_line_visible() -> bool:
        return text.bbox("end-1c linestart - 1 line") is not None

    pump_until(tk_root, lambda: text.winfo_viewable(), 10, "the log on screen")
    for number in range(40):
        admin._log("info", f"line {number}")
        tk_root.update()
    pump_until(tk_root, last_line_visible, 10, "the newest line in view")
    width, height = admin.top.winfo_width(), admin.top.winfo_height()
    resize(admin.top, tk_root, 1200, 780)  # enlarged (as maximising does) ...
    resize(admin.top, tk_root, width, height)  # ... and restored
    admin._log("info", "a new entry after the resize")
    pump_until(tk_root, last_line_visible, 10, "the new entry in view")
    assert "a new entry after the resize" in text.get("end-1c linestart - 1 line", "end")


@pytest.mark.parametrize("where", ["single", "cluster"])
def test_admin_attaches_to_a_cluster(
    tk_root: tk.Tk, processes: Processes, admins: Admins, windows: Windows, tmp_path: Path, where: str,
    request: pytest.FixtureRequest,
) -> None:
    """Gateways on one Redis, or on a Redis Cluster (presence on 16 sharded partitions, issue 15).

    The session's cluster is shared: there the names are unique and only this test's gateways are looked at.
    """
    redis: RedisServer | RedisCluster = request.getfixturevalue("redis_server" if where == "single"
                                                                else "redis_cluster")
    tag = "" if where == "single" else uuid.uuid4().hex[:6]
    alice_, bob_, carol_, dave_ = (f"{n}{tag}" for n in ("alice", "bob", "carol", "dave"))
    gw1 = processes.gateway(redis.url)
    gw2 = processes.gateway(redis.url)
    alice = windows.login(gw1.url, alice_, at=(300, 120))
    bob = windows.login(gw2.url, bob_, at=(360, 160))
    carol = windows.login(gw2.url, carol_, at=(420, 200))
    assert alice.client is not None and bob.client is not None
    node1, node2 = alice.client.node, bob.client.node
    assert node1 and node2 and node1 != node2

    admin = admins.open(redis_url=redis.url, settings=node_settings(tmp_path))
    assert admin.top.title() == "Chinwag Cluster"

    def counts() -> dict[str, str]:
        return {node: users for node, users, _who, _lease in admin.gateway_rows() if node in (node1, node2)}

    pump_until(tk_root, lambda: counts() == {node1: "1", node2: "2"}, 10, "both gateways with their users")
    assert {row[0]: row[2] for row in admin.gateway_rows() if row[0] in (node1, node2)} == {
        node1: alice_, node2: f"{bob_}, {carol_}"}
    if where == "single":
        assert "3 online (alice, bob, carol)" in admin.log_contents()
        assert "3 online \u00b7 2 gateways" == admin.online_var.get()
    else:
        watching = next(line for line in admin.log_contents().splitlines() if "Watching redis+cluster://" in line)
        assert all(name in watching for name in (alice_, bob_, carol_))

    dave = windows.login(gw1.url, dave_, at=(480, 240))
    pump_until(tk_root, lambda: logged(admin, dave_, "connected"), 10, "dave's connect line")
    assert f"{dave_} connected  (gateway {node1})" in admin.log_contents()
    windows.close(carol)
    pump_until(tk_root, lambda: logged(admin, carol_, "disconnected"), 10, "carol's disconnect line")
    assert f"{carol_} disconnected  (gateway {node2})" in admin.log_contents()
    pump_until(tk_root, lambda: counts() == {node1: "2", node2: "1"}, 10, "the counts to follow")
    if can_screenshot() and where == "single":
        admin.top.lift()
        screenshot(admin.top, "chinwag-admin-cluster.png", tmp_path)

    gw2.terminate()  # a gateway leaving the cluster disappears from the table, its users with it
    pump_until(tk_root, lambda: counts() == {node1: "2"}, 15, "gw2 to leave the table")
    pump_until(tk_root, lambda: logged(admin, bob_, "disconnected"), 10, "bob's disconnect line")
    assert dave.state == "connected"
