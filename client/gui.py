"""``chinwag-tk``: the desktop chat client (Tk), built on :mod:`client.chat`.

    chinwag-tk --server 127.0.0.1:9000 --user alice

The window keeps the classic layout of the original Tk chat: server address,
username (and password) with a Connect button; an "Online clients" list with a
Select button; a "Chat with your friends" pane holding the conversation with
the selected user; a Broadcast pane; one line to type in, with Send (also
Enter) and Broadcast (everyone, also Ctrl+Enter).  Beside Online clients, a
Groups section (:mod:`client.gui_groups`): create, join, invite, leave,
members; a group opens in the same chat pane.  One conversation per person
and per group, filled from the server's history when first opened, unread
counts, times on every message, your own messages in a different colour, the
connection state always visible.  A line you send shows at once as
"sending…" and turns into the message when the server acknowledges it
(while reconnecting that is after the reconnect), or says why it failed.
Files: "Send file…" sends one to the open conversation
(:mod:`client.gui_files`).

Threads: Tk owns the main thread; all network I/O runs on an asyncio loop in a
background thread (:class:`client.bridge.Bridge`).  The loop thread never
touches a widget: it posts callables that the Tk thread runs from an
``after()`` timer.  The connection bar wraps when the window is narrow
(:class:`client.gui_layout.FlowBar`), so every control stays visible at the
minimum size.

Modules: this one is the window and the connection; :mod:`client.gui_model`
(pure rules and the conversation model), :mod:`client.gui_layout` (style and
widgets), :mod:`client.gui_conversations` (opening, receiving, drawing),
:mod:`client.gui_sending` (sending lines and files), :mod:`client.gui_events`
(what the network thread reports: login, reconnects, events, the end).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import logging
import os
import sys
import tkinter as tk
from collections.abc import Callable
from tkinter import filedialog, messagebox, ttk
from typing import Any

from client.bridge import Bridge
from client.chat import ChatClient
from client.gui_conversations import Conversations
from client.gui_events import ServerEvents, State, session
from client.gui_files import FileView
from client.gui_groups import GroupsPanel
from client.gui_layout import (
    BG,
    MUTED_FG,
    PANE_BG,
    STATE_FG,
    app_frame,
    build_chat_window,
    report_callback_exception,
    run_mainloop,
    tree_rows,
)
from client.gui_model import (
    DEFAULT_PORT,
    DEFAULT_SERVER,
    DialogKind,
    format_time,
    server_url,
    server_urls,
)
from client.gui_online import OnlineList
from protocol.errors import InvalidUsername
from protocol.names import normalize_name

__all__ = ["BG", "DEFAULT_PORT", "MUTED_FG", "PANE_BG", "STATE_FG", "ChatWindow", "app_frame", "format_time",
           "main", "run_mainloop", "server_url", "server_urls"]

log = logging.getLogger("chinwag.gui")

CLOSE_GRACE_MS = 3000  # closing the window waits at most this long for a clean logout
NOTICE_MS = 6000  # how long a notice stays in the status line


class ChatWindow(ServerEvents):
    """The chinwag-tk window, built inside ``top`` (a Tk root or a Toplevel)."""

    # Widgets (made by client.gui_layout.build_chat_window); tests drive them through the screen.
    server_var: tk.StringVar
    user_var: tk.StringVar
    password_var: tk.StringVar
    message_var: tk.StringVar
    status_var: tk.StringVar
    notice_var: tk.StringVar
    server_entry: ttk.Entry
    user_entry: ttk.Entry
    password_entry: ttk.Entry
    message_entry: ttk.Entry
    connect_button: ttk.Button
    select_button: ttk.Button
    send_button: ttk.Button
    send_file_button: ttk.Button
    broadcast_button: ttk.Button
    online_box: ttk.Labelframe
    online_tree: ttk.Treeview
    chat_box: ttk.Labelframe
    chat_text: tk.Text
    broadcast_text: tk.Text
    groups: GroupsPanel
    state_dot: tk.Label
    status_label: ttk.Label
    notice_label: ttk.Label

    def __init__(
        self,
        top: tk.Tk | tk.Toplevel,
        *,
        server: str = DEFAULT_SERVER,
        user: str = "",
        password: str = "",
        bridge: Bridge | None = None,
        ask_open_file: Callable[[], str | None] | None = None,
        ask_folder: Callable[[], str | None] | None = None,
    ) -> None:
        self.top = top
        self.bridge = bridge or Bridge(top, name="chinwag-tk-io")
        # File dialogs, replaceable by tests: which file "Send file…" sends, where "Save…" saves.
        self.ask_open_file = ask_open_file or self._ask_open_file
        self.file_view = FileView(self.bridge, lambda: self.client, notify=self.flash, ask_folder=ask_folder)
        self.state: State = "disconnected"
        self.client: ChatClient | None = None
        self.url = ""
        self.me = ""  # my display name while logged in
        self.online: dict[str, str] = {}  # name key -> display name
        self.dialogs: list[tuple[DialogKind, str, str]] = []  # every dialog shown, for logs and tests
        self.closed = False
        self._closing = False
        self._user_disconnect = False
        self.gen = 0  # bumps on every connect/disconnect, so stale network callbacks are ignored
        self._session: concurrent.futures.Future[None] | None = None
        self._grace_timer: str | None = None
        self._notice_timer: str | None = None
        Conversations.__init__(self)
        OnlineList.__init__(self)

        self._build(server, user, password)
        self.top.protocol("WM_DELETE_WINDOW", self.close)
        self.bridge.start()
        self._set_state("disconnected", "Not connected. Enter a server and a username, then press Connect.")

    # -- layout ---------------------------------------------------------------

    def _build(self, server: str, user: str, password: str) -> None:
        build_chat_window(self, server, user, password)
        self.render_chat()

    # -- what the widgets show (used by tests and screenshots) -------------------

    def status_text(self) -> str:
        return self.status_var.get()

    def notice_text(self) -> str:
        return self.notice_var.get().strip()

    def chat_contents(self) -> str:
        return self.chat_text.get("1.0", "end-1c")

    def broadcast_contents(self) -> str:
        return self.broadcast_text.get("1.0", "end-1c")

    def online_rows(self) -> list[str]:
        """Each row of the online list as shown, e.g. ``"bob"`` or ``"carol  ● 2"``."""
        return tree_rows(self.online_tree, "unread")

    def group_rows(self) -> list[str]:
        return self.groups.row_texts()

    def chat_title(self) -> str:
        return str(self.chat_box.cget("text"))

    # -- connection ---------------------------------------------------------------

    def toggle_connection(self) -> None:
        """The Connect button: connect, or cancel/disconnect when already (being) connected."""
        if self.state == "disconnected":
            self.connect()
        else:
            self.disconnect()

    def connect(self) -> None:
        """Validate the entries and start logging in on the network thread (returns at once)."""
        if self._closing or self.state != "disconnected":
            return
        try:
            urls = server_urls(self.server_var.get())
        except ValueError as exc:
            self._dialog("error", "Bad Server Address", f"{exc}.")
            return
        user = self.user_var.get().strip()
        password = self.password_var.get()
        if not user:
            self._dialog("warning", "Username Needed", "Enter a username to chat as.")
            self.user_entry.focus_set()
            return
        try:
            normalize_name(user)
        except InvalidUsername as exc:
            self._dialog("warning", "Invalid Username", f"\u201c{user}\u201d cannot be used: {exc.message}.")
            return
        if not password:
            self._dialog("warning", "Password Needed",
                         "Enter a password. The first login registers the name with it; later logins need it.")
            self.password_entry.focus_set()
            return
        self.gen += 1
        self._user_disconnect = False
        self.url = ", ".join(urls)
        self._set_state("connecting", f"Connecting to {self.url} as {user}\u2026")
        self._session = self.bridge.submit(
            session(urls, user, password, self.gen, self.bridge.post, self), done=self._session_ended
        )

    def disconnect(self) -> None:
        """Log out (or stop connecting); conversations stay in the window."""
        if self.state == "connecting" and self.client is None:
            self.gen += 1
            if self._session is not None:
                self._session.cancel()
            self._set_state("disconnected", "Connecting cancelled.")
            return
        if self.client is not None:
            self._user_disconnect = True
            self.bridge.submit(self.client.close())
            self.status_var.set("Logging out\u2026")

    def close(self) -> None:
        """Closing the window: log out cleanly, then destroy it (never waits in the Tk thread)."""
        if self._closing:
            return
        self._closing = True
        self.gen += 1
        if self.groups.dialog is not None:
            self.groups.dialog.cancel()
        try:
            self.top.withdraw()
        except tk.TclError:
            pass
        if self.client is not None:
            self.bridge.submit(self.client.close(), done=lambda _f: self._finish_close())
            self._grace_timer = self.top.after(CLOSE_GRACE_MS, self._finish_close)
        else:
            self._finish_close()

    def shutdown(self, timeout: float) -> None:
        """After the Tk loop has ended (Ctrl-C, or the window closed): log out and stop the
        network thread, waiting at most ``timeout`` seconds.  Blocks, so never call it from
        a Tk callback; :meth:`close` is the non-blocking way."""
        client, self.client = self.client, None
        self._closing = True
        if client is not None:
            with contextlib.suppress(Exception):
                self.bridge.submit(client.close()).result(timeout)
        self.bridge.join(timeout)

    def _finish_close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.client = None
        for timer in (self._grace_timer, self._notice_timer):
            if timer is not None:
                with contextlib.suppress(tk.TclError):
                    self.top.after_cancel(timer)
        self.bridge.shutdown()
        try:
            self.top.destroy()
        except tk.TclError:
            pass

    # -- state, status and dialogs ---------------------------------------------------------

    def _set_state(self, state: State, message: str) -> None:
        self.state = state
        self.status_var.set(message)
        self.state_dot.configure(foreground=STATE_FG[state])
        idle = state == "disconnected"
        for entry in (self.server_entry, self.user_entry, self.password_entry):
            entry.configure(state="normal" if idle else "disabled")
        label = {"disconnected": "Connect", "connecting": "Cancel", "connected": "Disconnect",
                 "reconnecting": "Disconnect"}[state]
        self.connect_button.configure(text=label)
        # While reconnecting the library keeps what is sent and delivers it once back.
        chatting = "normal" if state in ("connected", "reconnecting") else "disabled"
        for button in (self.send_button, self.send_file_button, self.broadcast_button, self.select_button):
            button.configure(state=chatting)
        self.groups.update_buttons()
        if idle:
            self.top.title("Chinwag")

    def flash(self, message: str, error: bool = False) -> None:
        """A notice under the status line, cleared after a few seconds."""
        self.notice_var.set(message)
        self.notice_label.configure(style="Error.TLabel" if error else "Notice.TLabel")
        if self._notice_timer is not None:
            self.top.after_cancel(self._notice_timer)
        self._notice_timer = self.top.after(NOTICE_MS, self._clear_notice)

    def _clear_notice(self) -> None:
        self._notice_timer = None
        self.notice_var.set(" ")

    def _dialog(self, kind: DialogKind, title: str, text: str) -> None:
        """Show a dialog after the current callback returns, so the network queue keeps
        draining while it is open (a modal dialog runs its own event loop)."""
        self.dialogs.append((kind, title, text))
        log.info("dialog %s: %s", title, text.replace("\n", " "))
        show: Callable[..., Any] = {
            "warning": messagebox.showwarning, "error": messagebox.showerror, "info": messagebox.showinfo,
        }[kind]

        def pop_up() -> None:
            if not self._closing:
                show(title, text, parent=self.top)

        self.top.after(0, pop_up)

    def _ask_open_file(self) -> str | None:
        return filedialog.askopenfilename(parent=self.top, title="Send a file") or None


# -- program ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chinwag-tk",
        description="Chinwag desktop chat client (Tk).",
        epilog="The password can be preset with CHINWAG_PASSWORD (it is never taken on the command line).",
    )
    parser.add_argument("--server", metavar="ADDRESS",
                        help=f"server address, host[:port] or ws://host:port; several, comma-separated, to fail "
                             f"over between gateways (env CHINWAG_SERVER; default {DEFAULT_SERVER})")
    parser.add_argument("--user", metavar="NAME", help="username (env CHINWAG_USER)")
    parser.add_argument("--connect", action="store_true",
                        help="connect at once (needs the username and CHINWAG_PASSWORD)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    env = os.environ
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        root = tk.Tk(className="Chinwag")
    except tk.TclError as exc:
        print(f"chinwag-tk: cannot open a window ({exc}); is DISPLAY set?", file=sys.stderr)
        raise SystemExit(1) from None
    app = ChatWindow(
        root,
        server=args.server or env.get("CHINWAG_SERVER") or DEFAULT_SERVER,
        user=args.user or env.get("CHINWAG_USER") or "",
        password=env.get("CHINWAG_PASSWORD", ""),
    )
    root.report_callback_exception = report_callback_exception
    if args.connect:
        root.after_idle(app.connect)
    try:
        run_mainloop(root)
    finally:
        app.shutdown(CLOSE_GRACE_MS / 1000)


if __name__ == "__main__":
    main()
