"""Groups in chinwag-tk, used as a person does: the pointer clicks real buttons, the keyboard types.

Three windows, two gateway processes sharing one Redis.  Everything the users
do goes through the X server with xdotool (:mod:`tests.gui.input`): typing
the login, New… with "Invite only", Invite…, selecting the invitation,
Join…, typing lines and pressing Enter or Ctrl+Enter, the Tk file dialog of
Send file…, Leave.  The test then waits (pumping Tk against a deadline) for
what each window shows.
"""

from __future__ import annotations

import re
import subprocess
import threading
import tkinter as tk
from pathlib import Path

import pytest

from client.gui import ChatWindow
from client.gui_files import describe
from tests.gui.conftest import Windows, can_screenshot, pump_until, screenshot
from tests.gui.input import (
    can_compare,
    click,
    keys,
    matches_reference,
    needs_wm,
    press,
    type_into,
)
from tests.helpers import Processes, RedisServer

pytestmark = needs_wm


def line(who: str, body: str) -> re.Pattern[str]:
    return re.compile(rf"^\d\d:\d\d  {re.escape(who)}  {re.escape(body)}$", re.M)


def login_by_hand(windows: Windows, url: str, user: str, at: tuple[int, int]) -> ChatWindow:
    """Open a window (server pre-filled), type the username and password, click Connect."""
    window = windows.open(url, "", "", at=at)
    root = windows.root
    type_into(window.user_entry, user, root)
    type_into(window.password_entry, "pw-" + user, root)
    press(window.connect_button, root)
    pump_until(root, lambda: window.state == "connected", 20, f"{user} to connect")
    return window


def click_row(tree: tk.Misc, iid: str, root: tk.Misc) -> None:
    from tkinter import ttk

    assert isinstance(tree, ttk.Treeview)
    pump_until(root, lambda: tree.exists(iid) and tree.bbox(iid), 10, f"row {iid!r} on screen")
    x, y, _w, h = (int(v) for v in tree.bbox(iid))  # type: ignore[union-attr]
    click(tree, at=(x + 30, y + h // 2))


def fill_dialog(window: ChatWindow, text: str | None, root: tk.Misc, *, tick: bool = False) -> None:
    """Type into the open group form, tick its checkbox if asked, press its OK button."""
    pump_until(root, lambda: window.groups.dialog is not None and window.groups.dialog.open
               and window.groups.dialog.top.winfo_viewable(), 10, "the group form")
    dialog = window.groups.dialog
    assert dialog is not None
    if text is not None:
        assert dialog.entry is not None
        type_into(dialog.entry, text, root)
    if tick:
        assert dialog.check is not None
        click(dialog.check)
        pump_until(root, lambda: dialog.checked.get(), 10, "the checkbox to be ticked")
    press(dialog.ok_button, root)
    pump_until(root, lambda: not dialog.open, 10, "the form to close")


def answer_file_dialog(path: Path, errors: list[str]) -> threading.Thread:
    """A person in Tk's own file dialog: wait for it, type the file's path, press Enter.

    Runs in a thread: the dialog is modal, so the test's thread is inside its
    event loop until it closes.
    """

    def run() -> None:
        try:
            found = subprocess.run(["xdotool", "search", "--sync", "--onlyvisible", "--name", "^Send a file$"],
                                   capture_output=True, text=True, timeout=30, check=True).stdout.split()
            subprocess.run(["xdotool", "windowfocus", "--sync", found[0]], timeout=20, check=True)
            subprocess.run(["xdotool", "type", "--delay", "8", "--", str(path)], timeout=30, check=True)
            subprocess.run(["xdotool", "key", "Return"], timeout=20, check=True)
        except Exception as exc:  # reported by the test (a thread's exception would be lost)
            errors.append(repr(exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_three_users_run_an_invite_only_group_across_two_gateways_by_hand(
    tk_root: tk.Tk, redis_server: RedisServer, processes: Processes, windows: Windows, tmp_path: Path
) -> None:
    first = processes.gateway(redis_server.url).url
    second = processes.gateway(redis_server.url).url
    alice = login_by_hand(windows, first, "alice", (0, 0))
    bob = login_by_hand(windows, second, "bob", (300, 90))
    carol = login_by_hand(windows, second, "carol", (320, 140))
    pump_until(tk_root, lambda: {"bob", "carol"} <= set(alice.online_rows()), 15, "bob and carol online")

    # alice: New… "Devs", Invite only, Create.
    alice.top.lift()
    press(alice.groups.buttons["new"], tk_root)
    fill_dialog(alice, "Devs", tk_root, tick=True)
    pump_until(tk_root, lambda: alice.group_rows() == ["Devs"], 15, "Devs in alice's groups")
    pump_until(tk_root, lambda: alice.chat_title().startswith("Group Devs"), 10, "the group open")
    assert "invite only" in alice.chat_title() and "owner alice" in alice.chat_title()
    assert "You created Devs (invite only)" in alice.chat_contents()

    # Not invited: carol cannot join.
    carol.top.lift()
    press(carol.groups.buttons["join"], tk_root)
    fill_dialog(carol, "devs", tk_root)
    pump_until(tk_root, lambda: "Could not join devs" in carol.notice_text(), 15, "carol refused")
    assert carol.group_rows() == []

    # alice invites bob, then carol, with Invite… (a person's name typed).
    for who in ("bob", "carol"):
        alice.top.lift()
        press(alice.groups.buttons["invite"], tk_root)
        fill_dialog(alice, who, tk_root)
        pump_until(tk_root, lambda w=who: alice.notice_text() == f"Invited {w} to Devs.", 15, f"{who} invited")
        pump_until(tk_root, lambda w=who: f"alice invited {w}" in alice.chat_contents(), 10, "the invited note")

    # bob (other gateway) sees the invitation, selects it and joins with Join… (pre-filled).
    pump_until(tk_root, lambda: bob.group_rows() == ["Devs (invited by alice)"], 15, "bob's invitation")
    bob.top.lift()
    click_row(bob.groups.tree, "devs", tk_root)
    pump_until(tk_root, lambda: bob.notice_text().startswith("alice invited you to Devs"), 10, "the hint")
    press(bob.groups.buttons["join"], tk_root)
    fill_dialog(bob, None, tk_root)  # the name is already there
    pump_until(tk_root, lambda: bob.group_rows() == ["Devs"], 15, "bob in Devs")
    pump_until(tk_root, lambda: bob.chat_title().startswith("Group Devs"), 10, "bob's group pane")
    pump_until(tk_root, lambda: "bob joined" in alice.chat_contents(), 10, "alice sees bob join")

    # alice types a line and presses Enter; bob answers with the Send button.
    alice.top.lift()
    type_into(alice.message_entry, "standup in 5", tk_root)
    keys("Return")
    pump_until(tk_root, lambda: line("alice", "standup in 5").search(bob.chat_contents()), 15, "bob gets it")
    pump_until(tk_root, lambda: line("You", "standup in 5").search(alice.chat_contents()), 10, "alice's line")
    bob.top.lift()
    type_into(bob.message_entry, "on my way", tk_root)
    press(bob.send_button, tk_root)
    pump_until(tk_root, lambda: line("bob", "on my way").search(alice.chat_contents()), 15, "alice gets it")

    # carol joins too; the group's history shows what was said before.
    carol.top.lift()
    click_row(carol.groups.tree, "devs", tk_root)
    press(carol.groups.buttons["join"], tk_root)
    fill_dialog(carol, None, tk_root)
    pump_until(tk_root, lambda: line("alice", "standup in 5").search(carol.chat_contents()), 15, "history")
    pump_until(tk_root, lambda: "carol joined" in alice.chat_contents(), 10, "alice sees carol join")

    # bob sends a file to the group through Tk's own file dialog (typed path, Enter).
    notes = tmp_path / "notes.txt"
    notes.write_text("agenda: ship groups\n")
    bob.top.lift()
    errors: list[str] = []
    typist = answer_file_dialog(notes, errors)
    press(bob.send_file_button, tk_root)
    typist.join(60)
    assert not errors, errors
    pump_until(tk_root, lambda: "File: notes.txt" in alice.chat_contents(), 20, "the file at alice")
    pump_until(tk_root, lambda: "File: notes.txt" in carol.chat_contents(), 20, "the file at carol")
    assert bob.notice_text() == "Sent notes.txt to Devs."
    assert "(sending" not in bob.chat_contents() and "File: notes.txt" in bob.chat_contents()

    # Members, from alice's window: everyone, the owner marked.
    alice.top.lift()
    press(alice.groups.buttons["members"], tk_root)
    pump_until(tk_root, lambda: "Members: alice (owner), bob, carol" in alice.chat_contents(), 10, "members")
    assert "3 members" in alice.chat_title()
    # Only the owner may invite: the button says so by being disabled for bob.
    assert "disabled" in bob.groups.buttons["invite"].state()

    # Ctrl+Enter broadcasts from the same box.
    carol.top.lift()
    type_into(carol.message_entry, "hello everyone", tk_root)
    keys("ctrl+Return")
    pump_until(tk_root, lambda: line("carol", "hello everyone").search(alice.broadcast_contents()), 15, "broadcast")
    assert "hello everyone" not in alice.chat_contents()

    # An unread count on bob's list while he reads his DM with alice.
    bob.top.lift()
    click_row(bob.online_tree, "alice", tk_root)
    press(bob.select_button, tk_root)
    pump_until(tk_root, lambda: bob.chat_title() == "Chat with your friends \u2014 alice", 10, "bob's DM pane")
    alice.top.lift()
    type_into(alice.message_entry, "ready?", tk_root)
    keys("Return")
    pump_until(tk_root, lambda: bob.group_rows() == ["Devs  \u25cf 1"], 15, "bob's unread count")

    # The README's screenshot: alice in the group.
    alice.top.lift()
    pump_until(tk_root, lambda: line("You", "ready?").search(alice.chat_contents()), 10, "alice's line")
    if can_screenshot():
        screenshot(alice.top, "chinwag-tk.png", tmp_path)

    # carol leaves with Leave (and confirms); the others see it, her list is empty.
    carol.top.lift()
    press(carol.groups.buttons["leave"], tk_root)
    fill_dialog(carol, None, tk_root)
    pump_until(tk_root, lambda: carol.group_rows() == [], 15, "carol's list empty")
    assert carol.notice_text() == "You left Devs."
    assert not carol.chat_title().startswith("Group")
    pump_until(tk_root, lambda: "carol left" in alice.chat_contents(), 15, "alice sees carol leave")
    click_row(bob.groups.tree, "devs", tk_root)
    pump_until(tk_root, lambda: "carol left" in bob.chat_contents(), 15, "bob sees carol leave")
    assert line("alice", "ready?").search(bob.chat_contents())
    assert describe  # the file line format is client.gui_files.describe's


@pytest.mark.usefixtures("xvfb")
def test_screenshot_of_a_group_conversation(tk_root: tk.Tk, windows: Windows, tmp_path: Path) -> None:
    """The window as drawn, compared with a reference picture (fixed font and window manager)."""
    why = can_compare(tk_root)
    if why:
        pytest.skip(why)
    from protocol import frames as f

    window = windows.open("ws://127.0.0.1:9", "alice", at=(0, 0))  # never connected: drawn from data
    window.me = "alice"
    from client.gui_groups import GroupRow

    window.groups.rows = {"devs": GroupRow("Devs", owner="alice", invite_only=True, members=["alice", "bob"]),
                          "ops": GroupRow("Ops", member=False, invited_by="carol")}
    window.groups.rebuild()
    window.open_conversation("#devs", "Devs")
    conv = window.conversations["#devs"]
    conv.history_loaded = True
    conv.add(f.Message(id="1-0", from_="alice", to="#Devs", body="standup in 5", ts=1))
    conv.add(f.Message(id="2-0", from_="bob", to="#Devs", body="on my way", ts=2))
    conv.start_sending("see you there")
    window.render_chat()
    pump_until(tk_root, lambda: window.top.winfo_viewable(), 10, "the window")
    matches_reference(window.top, "chat-group.png", tmp_path)
