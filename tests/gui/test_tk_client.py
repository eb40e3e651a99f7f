"""chinwag-tk driven for real: ChatWindows against a real gateway process, on Xvfb.

Each window is the program's own :class:`client.gui.ChatWindow` in a Toplevel,
with its own network thread, talking to a real gateway over WebSocket.  The
tests type into its entries and press its buttons and keys through the X
server (xdotool, :mod:`tests.gui.input`: real clicks, typed text, Enter, a
double-click), and wait — pumping the Tk loop against a deadline — until the
widgets show the expected text.  Dialogs are the real
``tk_messageBox`` windows, found on screen with xdotool and answered.
"""

from __future__ import annotations

import re
import subprocess
import tkinter as tk
from pathlib import Path

import pytest

from client.gui import ChatWindow, format_time, server_url
from tests.gui.conftest import HAVE_XDOTOOL, Windows, can_screenshot, pump_until, screenshot
from tests.gui.input import keys, needs_xdotool, press, press_for_dialog, type_into
from tests.helpers import Processes, RedisServer, free_port


@pytest.fixture
def gateway_url(redis_server: RedisServer, processes: Processes) -> str:
    return processes.gateway(redis_server.url).url


def type_and_enter(window: ChatWindow, text: str) -> None:
    """Click into the message box, type a line and press Enter (real input through the X server)."""
    type_into(window.message_entry, text, window.top)
    keys("Return")


def type_and_press(window: ChatWindow, text: str, button: str) -> None:
    type_into(window.message_entry, text, window.top)
    press(getattr(window, f"{button}_button"), window.top)


def double_click_row(window: ChatWindow, iid: str) -> None:
    """A real double-click with xdotool on a row of the online list (Tk-generated without xdotool)."""
    tree = window.online_tree
    window.top.lift()
    window.top.update()
    bbox = tree.bbox(iid)
    assert bbox, f"row {iid!r} is not visible"
    x, y, _w, h = (int(v) for v in bbox)
    x, y = x + 20, y + h // 2
    if not HAVE_XDOTOOL:
        for _ in range(2):
            tree.event_generate("<ButtonPress-1>", x=x, y=y)
            tree.event_generate("<ButtonRelease-1>", x=x, y=y)
        return
    x_root, y_root = tree.winfo_rootx() + x, tree.winfo_rooty() + y
    subprocess.run(["xdotool", "mousemove", str(x_root), str(y_root), "click", "--repeat", "2", "--delay", "80", "1"],
                   check=True, timeout=10)


def line(who: str, body: str) -> re.Pattern[str]:
    """A chat line as shown: ``14:03  alice  hi bob``."""
    return re.compile(rf"^\d\d:\d\d  {re.escape(who)}  {re.escape(body)}$", re.M)


def tags_at(text: tk.Text, needle: str) -> set[str]:
    index = text.search(needle, "1.0", stopindex="end")
    assert index, f"{needle!r} not in the pane"
    return set(text.tag_names(index))


# -- pure helpers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "url"),
    [
        ("127.0.0.1", "ws://127.0.0.1:9000"),
        (" chat.example.com:9100 ", "ws://chat.example.com:9100"),
        ("ws://10.0.0.5", "ws://10.0.0.5:9000"),
        ("wss://chat.example.com/ws", "wss://chat.example.com:9000/ws"),
        ("::1", "ws://[::1]:9000"),
        ("[::1]:9001", "ws://[::1]:9001"),
    ],
)
def test_server_address_defaults_to_port_9000(typed: str, url: str) -> None:
    assert server_url(typed) == url


@pytest.mark.parametrize("typed", ["", "http://x:9000", "host:99999", "ws://:9000"])
def test_bad_server_addresses_are_refused(typed: str) -> None:
    with pytest.raises(ValueError):
        server_url(typed)


def test_times_show_the_date_only_for_older_messages() -> None:
    import datetime as dt

    now = dt.datetime(2026, 3, 12, 15, 0)
    today = int(dt.datetime(2026, 3, 12, 14, 3).timestamp() * 1000)
    older = int(dt.datetime(2026, 3, 10, 9, 5).timestamp() * 1000)
    assert format_time(today, now) == "14:03"
    assert format_time(older, now) == "10 Mar 09:05"


# -- the program, for real ----------------------------------------------------------------


@needs_xdotool
def test_two_clients_chat_privately_and_broadcast(
    tk_root: tk.Tk, gateway_url: str, windows: Windows, tmp_path: Path
) -> None:
    alice = windows.login(gateway_url, "alice", at=(0, 0))
    bob = windows.login(gateway_url, "bob", at=(340, 140))
    assert alice.status_text().startswith(f"Connected to {gateway_url} as alice")
    assert alice.top.title() == "Chinwag \u2014 alice"

    # Each sees the other in "Online clients", live from presence events.
    pump_until(tk_root, lambda: "bob" in alice.online_rows(), 10, "bob in alice's online list")
    pump_until(tk_root, lambda: "alice" in bob.online_rows(), 10, "alice in bob's online list")
    assert "alice (you)" in alice.online_rows()

    # alice picks bob with the Select button; bob double-clicks alice (real mouse input).
    alice.online_tree.selection_set("bob")
    press(alice.select_button, tk_root)
    assert alice.chat_title() == "Chat with your friends \u2014 bob"
    double_click_row(bob, "alice")
    pump_until(tk_root, lambda: bob.chat_title() == "Chat with your friends \u2014 alice", 10, "bob's double-click")

    # A private message with Enter, a reply with the Send button.
    type_and_enter(alice, "hi bob")
    pump_until(tk_root, lambda: line("alice", "hi bob").search(bob.chat_contents()), 10, "bob to get the DM")
    pump_until(tk_root, lambda: line("You", "hi bob").search(alice.chat_contents()), 10, "alice's own line")
    assert alice.message_var.get() == ""
    assert "me" in tags_at(alice.chat_text, "You")  # own messages stand out
    assert "peer" in tags_at(bob.chat_text, "alice  hi bob")
    type_and_press(bob, "hello alice", "send")
    pump_until(tk_root, lambda: line("bob", "hello alice").search(alice.chat_contents()), 10, "alice to get the reply")
    type_and_press(alice, "are you coming to the standup?", "send")
    pump_until(tk_root, lambda: "standup" in bob.chat_contents(), 10, "the second DM")
    type_and_press(bob, "yes, in five minutes", "send")
    pump_until(tk_root, lambda: "five minutes" in alice.chat_contents(), 10, "the second reply")
    assert alice.broadcast_contents() == bob.broadcast_contents() == ""  # DMs stay private

    # A broadcast reaches everyone's Broadcast pane (the sender's too).
    type_and_press(bob, "hello everyone", "broadcast")
    pump_until(tk_root, lambda: line("bob", "hello everyone").search(alice.broadcast_contents()), 10, "broadcast")
    pump_until(tk_root, lambda: line("You", "hello everyone").search(bob.broadcast_contents()), 10, "own broadcast")

    # A third window trying the same name gets the real "Username Exists" warning.
    carol = windows.open(gateway_url, "alice", "pw", at=(160, 60))
    title, text, x_windows = press_for_dialog(carol.connect_button, carol.top, tk_root, "the Username Exists dialog")
    assert title == "Username Exists"
    assert "\u201calice\u201d is already in use" in text
    assert x_windows or not HAVE_XDOTOOL, "the dialog was not a visible X window"
    assert carol.state == "disconnected" and str(carol.connect_button.cget("text")) == "Connect"
    assert carol.status_text() == "Not connected: username exists."
    windows.close(carol)

    # Unread counts: dave writes to alice while she is chatting with bob.
    dave = windows.login(gateway_url, "dave", at=(500, 60))
    type_and_press(dave, "lunch at noon?", "broadcast")
    dave.select_peer("alice")
    type_and_enter(dave, "psst, alice")
    pump_until(tk_root, lambda: "dave  \u25cf 1" in alice.online_rows(), 10, "dave's unread count on alice's list")
    assert "psst" not in alice.chat_contents()  # bob's conversation is still the one shown
    assert alice.notice_text() == "New message from dave."
    assert alice.status_text().startswith("Connected to")  # the connection state stays in view
    pump_until(tk_root, lambda: "lunch at noon?" in alice.broadcast_contents(), 10, "dave's broadcast")
    alice.top.lift()
    if can_screenshot():
        shot = screenshot(alice.top, "chinwag-tk-private.png", tmp_path)  # README's is the group one
        assert shot.stat().st_size > 10_000

    # Switching conversations keeps each one separately.
    alice.select_peer("dave")
    assert line("dave", "psst, alice").search(alice.chat_contents())
    assert "hi bob" not in alice.chat_contents()
    assert "dave" in alice.online_rows()  # unread cleared
    alice.select_peer("bob")
    for body in ("hi bob", "hello alice", "standup", "five minutes"):
        assert body in alice.chat_contents()

    # Closing the window logs out: bob sees alice go offline.
    windows.close(alice)
    pump_until(tk_root, lambda: "alice (offline)" in bob.online_rows(), 10, "alice to go offline for bob")
    pump_until(tk_root, lambda: "alice went offline" in bob.chat_contents(), 10, "the offline note")

    # Logging in again: the conversation with bob comes back from the server's history.
    alice2 = windows.login(gateway_url, "alice", at=(0, 0))
    alice2.select_peer("bob")
    pump_until(tk_root, lambda: line("You", "hi bob").search(alice2.chat_contents()), 10, "history with bob")
    assert line("bob", "hello alice").search(alice2.chat_contents())
    pump_until(tk_root, lambda: "hello everyone" in alice2.broadcast_contents(), 10, "broadcast history")
    pump_until(tk_root, lambda: "alice" in bob.online_rows(), 10, "alice back online for bob")


@needs_xdotool
def test_wrong_password_and_unreachable_server_say_so(tk_root: tk.Tk, gateway_url: str, windows: Windows) -> None:
    windows.login(gateway_url, "alice")

    intruder = windows.open(gateway_url, "alice", "not-her-password")
    title, text, _ = press_for_dialog(intruder.connect_button, intruder.top, tk_root, "the Wrong Password dialog")
    assert title == "Wrong Password"
    assert "Wrong password for \u201calice\u201d" in text
    assert intruder.state == "disconnected"

    nowhere = windows.open(f"ws://127.0.0.1:{free_port()}", "bob")
    title, text, _ = press_for_dialog(nowhere.connect_button, nowhere.top, tk_root, "the Server Unreachable dialog")
    assert title == "Server Unreachable"
    assert "Cannot reach the chat server at ws://127.0.0.1:" in text
    assert nowhere.status_text() == "Not connected: server unreachable."
    assert str(nowhere.server_entry.cget("state")) == "normal"  # ready to try again


@needs_xdotool
def test_gateway_restart_shows_reconnecting_then_connected(
    tk_root: tk.Tk, redis_server: RedisServer, processes: Processes, windows: Windows
) -> None:
    gateway = processes.gateway(redis_server.url)
    alice = windows.login(gateway.url, "alice")
    bob = windows.login(gateway.url, "bob", at=(340, 140))
    bob.select_peer("alice")

    gateway.terminate()
    for who in (alice, bob):
        pump_until(tk_root, lambda w=who: w.state == "reconnecting", 15, "the reconnecting state")
    assert alice.status_text().startswith("Reconnecting to the server")
    assert str(alice.connect_button.cget("text")) == "Disconnect"

    # While bob is away his line is kept; the library sends it once he is back.
    type_and_enter(bob, "sent while the server was down")
    processes.gateway(redis_server.url, port=gateway.port)
    for who in (alice, bob):
        pump_until(tk_root, lambda w=who: w.state == "connected", 20, "the reconnect")
    assert alice.status_text().endswith("\u2014 reconnected")
    pump_until(tk_root, lambda: "bob  \u25cf 1" in alice.online_rows(), 15, "the queued DM to arrive")
    alice.select_peer("bob")
    assert line("bob", "sent while the server was down").search(alice.chat_contents())

    # Disconnect: stays disconnected, says so, offers Connect.
    press(alice.connect_button, tk_root)
    pump_until(tk_root, lambda: alice.state == "disconnected", 10, "the logout")
    assert alice.status_text().startswith(f"Disconnected from {gateway.url}")
    assert str(alice.connect_button.cget("text")) == "Connect"
    assert str(alice.send_button.cget("state")) == "disabled"
