"""The windows as a person sees them: sizes set through the window manager, clicks, keys, pixels.

* At the smallest size the window manager allows, and at the default size,
  every button, entry and label of chinwag-tk and chinwag-admin is wholly
  inside the window and not squeezed below its natural width (measured from
  the real geometry, :func:`tests.gui.input.widgets_outside`).
* A line typed while reconnecting shows at once as "sending…", then as sent;
  the online list admits it does not know who is online; the open
  conversation stays highlighted after the reconnect; a line that can no
  longer be sent says so and goes back into the box.
* The window manager's close button logs out.
* Screenshots are compared with references (see :mod:`tests.gui.input`).
"""

from __future__ import annotations

import re
import subprocess
import tkinter as tk
from pathlib import Path

import pytest

from chinwag.admin import AdminWindow
from client.gui_layout import CHAT_MIN_SIZE, CHAT_SIZE
from tests.gui.conftest import Windows, pump_until
from tests.gui.input import (
    can_compare,
    capture,
    click,
    close_by_wm,
    keys,
    matches_reference,
    needs_wm,
    press,
    resize,
    type_into,
    widgets_outside,
)
from tests.helpers import Processes, RedisServer

pytestmark = needs_wm

LONG_HINT = "Select someone in Online clients, or a group, to chat with (or press Broadcast)."


def line(who: str, body: str) -> re.Pattern[str]:
    return re.compile(rf"^\d\d:\d\d  {re.escape(who)}  {re.escape(body)}$", re.M)


def assert_everything_visible(top: tk.Misc, root: tk.Misc, what: str) -> None:
    pump_until(root, lambda: not widgets_outside(top), 10, f"every control inside the window ({what}): "
               f"{widgets_outside(top)}")


def test_every_control_fits_at_the_minimum_and_default_sizes(
    tk_root: tk.Tk, redis_server: RedisServer, processes: Processes, windows: Windows, tmp_path: Path
) -> None:
    url = processes.gateway(redis_server.url).url
    alice = windows.login(url, "alice")
    # Smaller than allowed, as dragging a corner far in: the window manager stops at the minimum.
    resize(alice.top, tk_root, 300, 200)
    assert (alice.top.winfo_width(), alice.top.winfo_height()) == CHAT_MIN_SIZE
    alice.flash(LONG_HINT)  # the longest notice the window shows
    assert_everything_visible(alice.top, tk_root, "minimum size")
    # Usable, not just present: the line to type in has room, the lists show rows.
    assert alice.message_entry.winfo_width() >= 250
    assert alice.online_tree.winfo_height() >= 2 * 24 and alice.groups.tree.winfo_height() >= 2 * 24
    assert alice.chat_text.winfo_height() >= 60 and alice.broadcast_text.winfo_height() >= 40
    # And it works at that size: type, press Enter in a group.
    press(alice.groups.buttons["new"], tk_root)
    dialog = alice.groups.dialog
    assert dialog is not None and dialog.entry is not None
    type_into(dialog.entry, "Tiny", tk_root)
    keys("Return")
    pump_until(tk_root, lambda: alice.group_rows() == ["Tiny"], 15, "the group")
    type_into(alice.message_entry, "fits", tk_root)
    keys("Return")
    pump_until(tk_root, lambda: line("You", "fits").search(alice.chat_contents()), 15, "the line")

    width, height = (int(v) for v in CHAT_SIZE.split("x"))
    resize(alice.top, tk_root, width, height)
    assert (alice.top.winfo_width(), alice.top.winfo_height()) == (width, height)
    alice.flash(LONG_HINT)
    assert_everything_visible(alice.top, tk_root, "default size")


def test_admin_controls_fit_at_its_minimum_size(tk_root: tk.Tk, tmp_path: Path) -> None:
    top = tk.Toplevel(tk_root)
    admin = AdminWindow(top)
    try:
        resize(admin.top, tk_root, 200, 200)
        assert (top.winfo_width(), top.winfo_height()) == (int(top.minsize()[0]), int(top.minsize()[1]))
        assert_everything_visible(top, tk_root, "admin minimum size")
        assert admin.stop_button.winfo_ismapped()
    finally:
        admin.close()
        pump_until(tk_root, lambda: admin.closed, 10, "the admin window to close")
        admin.bridge.join(5)


def test_screenshot_of_the_admin_window_at_its_minimum_size(tk_root: tk.Tk, tmp_path: Path) -> None:
    why = can_compare(tk_root)
    if why:
        pytest.skip(why)
    top = tk.Toplevel(tk_root)
    admin = AdminWindow(top)
    try:
        resize(admin.top, tk_root, 200, 200)
        matches_reference(top, "admin-minimum.png", tmp_path)
    finally:
        admin.close()
        pump_until(tk_root, lambda: admin.closed, 10, "the admin window to close")
        admin.bridge.join(5)


def test_a_line_typed_while_reconnecting_is_shown_pending_then_sent(
    tk_root: tk.Tk, redis_server: RedisServer, processes: Processes, windows: Windows
) -> None:
    gateway = processes.gateway(redis_server.url)
    alice = windows.login(gateway.url, "alice")
    bob = windows.login(gateway.url, "bob", at=(340, 140))
    pump_until(tk_root, lambda: "alice" in bob.online_rows(), 10, "alice online for bob")
    bob.top.lift()
    click(bob.online_tree, double=True, at=(40, int(bob.online_tree.bbox("alice")[1]) + 12))  # type: ignore[index]
    pump_until(tk_root, lambda: bob.chat_title() == "Chat with your friends \u2014 alice", 10, "bob's DM")

    gateway.terminate()
    pump_until(tk_root, lambda: bob.state == "reconnecting", 15, "bob reconnecting")
    # Nobody is known to be online while the server is away.
    pump_until(tk_root, lambda: "alice (?)" in bob.online_rows(), 10, "alice's row marked unknown")
    assert "reconnecting" in str(bob.online_box.cget("text"))

    type_into(bob.message_entry, "sent while the server was down", tk_root)
    keys("Return")
    pump_until(tk_root, lambda: "sent while the server was down  (sending\u2026)" in bob.chat_contents(), 5,
               "the line shown at once as pending")
    assert bob.message_var.get() == ""

    processes.gateway(redis_server.url, port=gateway.port)
    pump_until(tk_root, lambda: bob.state == "connected", 25, "bob back")
    pump_until(tk_root, lambda: line("You", "sent while the server was down").search(bob.chat_contents()), 15,
               "the line shown as sent")
    assert "(sending" not in bob.chat_contents()
    pump_until(tk_root, lambda: "alice" in bob.online_rows(), 10, "alice online again")
    assert bob.online_tree.selection() == ("alice",), "the open conversation is highlighted again"
    pump_until(tk_root, lambda: alice.state == "connected", 25, "alice back")
    alice.select_peer("bob")
    pump_until(tk_root, lambda: line("bob", "sent while the server was down").search(alice.chat_contents()), 15,
               "alice gets it")

    # A line that can no longer be sent says so, and comes back into the box.
    processes.stop_all()
    pump_until(tk_root, lambda: bob.state == "reconnecting", 15, "bob reconnecting again")
    type_into(bob.message_entry, "this one is lost", tk_root)
    keys("Return")
    pump_until(tk_root, lambda: "(sending\u2026)" in bob.chat_contents(), 5, "pending")
    press(bob.connect_button, tk_root)  # Disconnect
    pump_until(tk_root, lambda: "this one is lost  (not sent:" in bob.chat_contents(), 15, "the failure shown")
    assert bob.message_var.get() == "this one is lost"


def test_the_close_button_of_the_title_bar_logs_out(
    tk_root: tk.Tk, redis_server: RedisServer, processes: Processes, windows: Windows
) -> None:
    url = processes.gateway(redis_server.url).url
    alice = windows.login(url, "alice")
    bob = windows.login(url, "bob", at=(400, 200))
    pump_until(tk_root, lambda: "alice" in bob.online_rows(), 10, "alice online")
    alice.top.lift()
    pump_until(tk_root, lambda: alice.top.winfo_viewable(), 10, "alice's window")
    close_by_wm(alice.top, tk_root)
    pump_until(tk_root, lambda: alice.closed, 15, "alice's window to close")
    pump_until(tk_root, lambda: "alice" not in bob.online_rows(), 15, "alice gone from bob's list")


def test_disabled_buttons_look_disabled(tk_root: tk.Tk, windows: Windows, tmp_path: Path) -> None:
    """A disabled button is visibly paler than the same button enabled (measured in the pixels;
    with the stock clam style the disabled one measured darker: 0.824 vs 0.879 mean grey)."""
    window = windows.open("ws://127.0.0.1:9", "alice")
    pump_until(tk_root, lambda: window.top.winfo_viewable(), 10, "the window")
    button = window.send_file_button

    def brightness(name: str) -> tuple[float, float]:
        """(mean, darkest) grey level of the button's pixels, 0 black to 1 white."""
        shot = capture(window.top, tmp_path / name)
        ox, oy = _frame_origin(window.top)
        crop = f"{button.winfo_width()}x{button.winfo_height()}+{button.winfo_rootx() - ox}+{button.winfo_rooty() - oy}"
        out = subprocess.run(["convert", str(shot), "-crop", crop, "-colorspace", "Gray", "-format",
                              "%[fx:mean] %[fx:minima]", "info:"], capture_output=True, text=True, timeout=30,
                             check=True).stdout.split()
        return float(out[0]), float(out[1])

    assert "disabled" in button.state()
    disabled = brightness("disabled.png")
    button.state(["!disabled"])
    enabled = brightness("enabled.png")
    # Paler overall than when enabled (clam's stock disabled button is darker: it looks pressable),
    # and no dark text or border left.
    assert disabled[0] > enabled[0] + 0.01, f"mean grey: disabled {disabled[0]:.3f}, enabled {enabled[0]:.3f}"
    assert disabled[1] >= 0.6 and enabled[1] < 0.3, f"darkest: disabled {disabled[1]:.2f}, enabled {enabled[1]:.2f}"


def _frame_origin(top: tk.Misc) -> tuple[int, int]:
    out = subprocess.run(["xdotool", "getwindowgeometry", "--shell", top.winfo_toplevel().wm_frame()],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    geometry = dict(entry.split("=", 1) for entry in out.split())
    return int(geometry["X"]), int(geometry["Y"])


def test_screenshot_at_the_minimum_size(tk_root: tk.Tk, windows: Windows, tmp_path: Path) -> None:
    why = can_compare(tk_root)
    if why:
        pytest.skip(why)
    window = windows.open("ws://127.0.0.1:9", "alice")
    resize(window.top, tk_root, 10, 10)
    matches_reference(window.top, "chat-minimum.png", tmp_path)
