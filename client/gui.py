"""``chinwag-tk``: the desktop chat client (Tk), built on :mod:`client.chat`.

    chinwag-tk --server 127.0.0.1:9000 --user alice

The window keeps the classic layout of the original Tk chat: server address,
username (and password) with a Connect button; an "Online clients" list with a
Select button; a "Chat with your friends" pane holding the private
conversation with the selected user; a Broadcast pane; one line to type in,
with Send (private, also Enter) and Broadcast (everyone, also Ctrl+Enter).
What users expect on top: one conversation per person kept separately and
filled from the server's history when first opened, unread counts, times on
every message, your own messages in a different colour, and the connection
state always visible ("Connected to …", "Reconnecting…": the client library
reconnects by itself and the window shows it).  Several addresses separated
by commas are tried in turn, for a cluster.  Files: "Send file…" uploads one
and sends it to the selected user; a message carrying a file shows its name
and size with a Save button, pictures inline (:mod:`client.gui_files`).

Threads: Tk owns the main thread; all network I/O runs on an asyncio loop in a
background thread (:class:`client.bridge.Bridge`).  The loop thread never
touches a widget: it posts callables that the Tk thread runs from an
``after()`` timer, so no blocking call ever runs in the Tk thread and a slow
or dead server cannot freeze the window.

:class:`ChatWindow` is the whole program and can be created in any Tk
toplevel, so tests drive it in-process through its own widgets
(``connect_button.invoke()``, entry text, ``root.update()``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import logging
import os
import signal
import sys
import tkinter as tk
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from tkinter import filedialog, messagebox, ttk
from typing import Any, Literal

from websockets.exceptions import InvalidHandshake, InvalidURI

from client.bridge import Bridge
from client.chat import ChatClient, Closed, Event, StateChanged
from client.files import file_of, upload
from client.gui_files import FileView, describe
from client.tk_support import reason as _reason
from client.tk_support import report_callback_exception as _report_callback_exception
from protocol import frames as f
from protocol.errors import (
    BadPassword,
    ChatError,
    CloseCode,
    InvalidUsername,
    Unavailable,
    UsernameTaken,
)
from protocol.files import FileRef
from protocol.names import BROADCAST, id_tuple, name_key, normalize_name

log = logging.getLogger("chinwag.gui")

DEFAULT_PORT = 9000
DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"
HISTORY_PAGE = f.MAX_HISTORY_LIMIT  # messages fetched when a conversation is first opened
CLOSE_GRACE_MS = 3000  # closing the window waits at most this long for a clean logout
NOTICE_MS = 6000  # how long a notice stays in the status line

State = Literal["disconnected", "connecting", "connected", "reconnecting"]
DialogKind = Literal["warning", "error", "info"]

# Colours: calm neutrals, one accent for "me", one for everyone else.
BG = "#f4f5f7"
PANE_BG = "#ffffff"
ME_FG = "#1a5fb4"
PEER_FG = "#26803a"
MUTED_FG = "#6b7280"
ERROR_FG = "#b42318"
STATE_FG = {"connected": "#26803a", "connecting": "#b7791f", "reconnecting": "#d97706", "disconnected": "#9ca3af"}


# -- pure helpers -------------------------------------------------------------


def server_url(text: str, default_port: int = DEFAULT_PORT) -> str:
    """Turn what users type (``host``, ``host:port``, ``ws://host[:port]``) into a ws:// URL.

    The original client asked for a bare address; people also paste URLs.  Both
    work, and a missing port means the chat server's default, 9000.
    """
    raw = text.strip()
    if not raw:
        raise ValueError("enter the server's address, e.g. 127.0.0.1:9000")
    if "://" not in raw:
        if raw.count(":") > 1 and not raw.startswith("["):  # a bare IPv6 address
            raw = f"[{raw}]"
        raw = "ws://" + raw
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"unsupported scheme {parts.scheme!r}: use ws:// or wss://")
    host = parts.hostname
    if not host:
        raise ValueError("the server address has no host name")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    if port is None:
        port = default_port
    shown_host = f"[{host}]" if ":" in host else host
    return urllib.parse.urlunsplit((parts.scheme, f"{shown_host}:{port}", parts.path, parts.query, ""))


def server_urls(text: str, default_port: int = DEFAULT_PORT) -> list[str]:
    """Several addresses separated by commas or spaces: the client fails over between them."""
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts:
        raise ValueError("enter the server's address, e.g. 127.0.0.1:9000")
    return [server_url(p, default_port) for p in parts]


def format_time(ts_ms: int, now: dt.datetime | None = None) -> str:
    """``14:03`` for today's messages, ``12 Mar 14:03`` for older ones (local time)."""
    if ts_ms <= 0:
        return "--:--"
    when = dt.datetime.fromtimestamp(ts_ms / 1000)
    now = now or dt.datetime.now()
    if when.date() == now.date():
        return when.strftime("%H:%M")
    return when.strftime("%d %b %H:%M")


_CLOSE_WORDS = {
    "GOING_AWAY": "the server is shutting down",
    "LOGIN_FAILED": "the server refused the login",
    "TAKEN_OVER": "you logged in again somewhere else",
    "SESSION_LOST": "the server lost your session",
    "SLOW_CONSUMER": "the connection was too slow",
}


def describe_close(closed: Closed) -> str:
    """Why the connection ended, in words (for the status line)."""
    if closed.code is None:
        return "the connection was lost"
    try:
        name = CloseCode(closed.code).name
    except ValueError:
        return f"the server closed the connection (code {closed.code})"
    if name in _CLOSE_WORDS:
        return _CLOSE_WORDS[name]
    what = name.lower().replace("_", " ")
    reason = f": {closed.reason}" if closed.reason and closed.reason not in what else ""
    return f"the server closed the connection ({what}{reason})"


def login_failure(exc: BaseException, user: str, url: str) -> tuple[DialogKind, str, str]:
    """The dialog (kind, title, text) explaining why connecting failed."""
    if isinstance(exc, UsernameTaken):
        return ("warning", "Username Exists",
                f"The username \u201c{user}\u201d is already in use by someone online.\n\nPlease choose another name.")
    if isinstance(exc, BadPassword):
        return ("error", "Wrong Password",
                f"Wrong password for \u201c{user}\u201d.\n\n"
                "That name is registered: enter its password, or choose another name.")
    if isinstance(exc, InvalidUsername):
        return ("warning", "Invalid Username", f"\u201c{user}\u201d cannot be used: {exc.message}.")
    if isinstance(exc, Unavailable):
        return ("error", "Server Unavailable",
                f"The chat server at {url} cannot log you in right now.\n\nPlease try again in a moment.")
    if isinstance(exc, ChatError):
        return ("error", "Login Failed", f"The server refused the login: {exc.message}.")
    if isinstance(exc, InvalidURI):
        return ("error", "Bad Server Address", f"{url} is not a valid server address.")
    if isinstance(exc, OSError | TimeoutError | InvalidHandshake):
        reason = _reason(exc)
        return ("error", "Server Unreachable",
                f"Cannot reach the chat server at {url}.\n\n{reason}\n\n"
                "Check the address and that the server is running.")
    return ("error", "Connection Failed", f"Could not connect to {url}: {_reason(exc)}")


# -- model --------------------------------------------------------------------


@dataclass
class Conversation:
    """One private conversation: every message with one peer, by id, plus UI state."""

    peer: str  # the peer's display name, as the server spells it
    messages: dict[str, f.Message] = field(default_factory=dict)
    unread: int = 0
    history_loaded: bool = False
    loading: bool = False
    notes: list[tuple[int, str]] = field(default_factory=list)  # (ts ms, text): local notices

    def add(self, msg: f.Message) -> bool:
        """Store a message; False if it was already there (echoes, history overlap)."""
        if msg.id in self.messages:
            return False
        self.messages[msg.id] = msg
        return True

    def ordered(self) -> list[f.Message]:
        return sorted(self.messages.values(), key=lambda m: _sort_key(m.id))

    def is_last(self, msg: f.Message) -> bool:
        """True if ``msg`` sorts after every other message (so it can simply be appended)."""
        key = _sort_key(msg.id)
        return all(_sort_key(other) <= key for other in self.messages)


def _sort_key(message_id: str) -> tuple[int, int]:
    try:
        return id_tuple(message_id)
    except ValueError:
        return (0, 0)


# -- the window -----------------------------------------------------------------


class ChatWindow:
    """The chinwag-tk window, built inside ``top`` (a Tk root or a Toplevel)."""

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
        self.file_view = FileView(self.bridge, lambda: self.client, notify=self._flash, ask_folder=ask_folder)
        self.state: State = "disconnected"
        self.client: ChatClient | None = None
        self.url = ""
        self.me = ""  # my display name while logged in
        self.peer: str | None = None  # name key of the selected conversation
        self.online: dict[str, str] = {}  # name key -> display name
        self.conversations: dict[str, Conversation] = {}
        self.broadcasts: dict[str, f.Message] = {}
        self.dialogs: list[tuple[DialogKind, str, str]] = []  # every dialog shown, for logs and tests
        self.closed = False
        self._closing = False
        self._user_disconnect = False
        self._gen = 0  # bumps on every connect/disconnect, so stale network callbacks are ignored
        self._session: concurrent.futures.Future[None] | None = None
        self._row_keys: dict[str, tuple[int, str]] = {}  # tree iid -> its sort key
        self._chat_placeholder = True  # the chat pane shows a hint, not messages
        self._grace_timer: str | None = None
        self._notice_timer: str | None = None

        self._build(server, user, password)
        self.top.protocol("WM_DELETE_WINDOW", self.close)
        self.bridge.start()
        self._set_state("disconnected", "Not connected. Enter a server and a username, then press Connect.")

    # -- layout ---------------------------------------------------------------

    def _build(self, server: str, user: str, password: str) -> None:
        top = self.top
        outer = app_frame(top, "Chinwag", "920x640", (680, 460), grow_row=1)

        # Connection bar: server, username, password, Connect.
        bar = ttk.Frame(outer, style="App.TFrame")
        bar.grid(row=0, column=0, sticky="ew", pady=(0, 10))
        self.server_var = tk.StringVar(top, server)
        self.user_var = tk.StringVar(top, user)
        self.password_var = tk.StringVar(top, password)
        ttk.Label(bar, text="Server", style="App.TLabel").pack(side="left")
        self.server_entry = ttk.Entry(bar, textvariable=self.server_var, width=24)
        self.server_entry.pack(side="left", padx=(6, 14))
        ttk.Label(bar, text="Username", style="App.TLabel").pack(side="left")
        self.user_entry = ttk.Entry(bar, textvariable=self.user_var, width=16)
        self.user_entry.pack(side="left", padx=(6, 14))
        ttk.Label(bar, text="Password", style="App.TLabel").pack(side="left")
        self.password_entry = ttk.Entry(bar, textvariable=self.password_var, width=14, show="\u2022")
        self.password_entry.pack(side="left", padx=(6, 14))
        self.connect_button = ttk.Button(bar, text="Connect", command=self.toggle_connection, style="Accent.TButton")
        self.connect_button.pack(side="left")
        for entry in (self.server_entry, self.user_entry, self.password_entry):
            entry.bind("<Return>", lambda _e: self.connect())  # never cancels: Enter twice is common

        panes = ttk.Panedwindow(outer, orient="horizontal")
        panes.grid(row=1, column=0, sticky="nsew")

        # Left: Online clients + Select.
        left = ttk.Labelframe(panes, text="Online clients", padding=8)
        left.columnconfigure(0, weight=1)
        left.rowconfigure(0, weight=1)
        self.online_tree = ttk.Treeview(left, columns=("unread",), show="tree", selectmode="browse", height=12)
        self.online_tree.column("#0", width=140, stretch=True)
        self.online_tree.column("unread", width=52, anchor="e", stretch=False)
        self.online_tree.tag_configure("me", foreground=MUTED_FG)
        self.online_tree.tag_configure("offline", foreground="#9ca3af")
        self.online_tree.tag_configure("unread", font="ChinwagBold", foreground=ME_FG)
        self.online_tree.tag_configure("current", foreground=ME_FG)
        tree_scroll = ttk.Scrollbar(left, orient="vertical", command=self.online_tree.yview)
        self.online_tree.configure(yscrollcommand=tree_scroll.set)
        self.online_tree.grid(row=0, column=0, sticky="nsew")
        tree_scroll.grid(row=0, column=1, sticky="ns")
        self.online_tree.bind("<Double-1>", self._on_double_click)
        self.online_tree.bind("<Return>", lambda _e: self.select_from_list())
        self.select_button = ttk.Button(left, text="Select", command=self.select_from_list)
        self.select_button.grid(row=1, column=0, columnspan=2, sticky="ew", pady=(8, 0))
        panes.add(left, weight=0)

        # Right: the private chat over the broadcast pane, then the line to type in.
        right = ttk.Frame(panes, style="App.TFrame")
        right.columnconfigure(0, weight=1)
        right.rowconfigure(0, weight=1)
        panes.add(right, weight=1)
        stack = ttk.Panedwindow(right, orient="vertical")
        stack.grid(row=0, column=0, sticky="nsew", padx=(10, 0))

        chat_box = ttk.Labelframe(stack, text="Chat with your friends", padding=8)
        self.chat_box = chat_box
        self.chat_text = _text_pane(chat_box, height=14)
        stack.add(chat_box, weight=3)

        bc_box = ttk.Labelframe(stack, text="Broadcast", padding=8)
        self.broadcast_text = _text_pane(bc_box, height=6)
        stack.add(bc_box, weight=1)

        compose = ttk.Frame(right, style="App.TFrame")
        compose.grid(row=1, column=0, sticky="ew", padx=(10, 0), pady=(10, 0))
        compose.columnconfigure(0, weight=1)
        self.message_var = tk.StringVar(top, "")
        self.message_entry = ttk.Entry(compose, textvariable=self.message_var, font="ChinwagText")
        self.message_entry.grid(row=0, column=0, sticky="ew", ipady=3)
        self.message_entry.bind("<Return>", lambda _e: self.send())
        self.message_entry.bind("<KP_Enter>", lambda _e: self.send())
        self.message_entry.bind("<Control-Return>", lambda _e: self.broadcast())
        self.send_button = ttk.Button(compose, text="Send", command=self.send, style="Accent.TButton")
        self.send_button.grid(row=0, column=1, padx=(8, 0))
        self.send_file_button = ttk.Button(compose, text="Send file\u2026", command=self.send_file)
        self.send_file_button.grid(row=0, column=2, padx=(8, 0))
        self.broadcast_button = ttk.Button(compose, text="Broadcast", command=self.broadcast)
        self.broadcast_button.grid(row=0, column=3, padx=(8, 0))

        # Status line: a coloured dot and what the connection is doing.
        status = ttk.Frame(top, padding=(12, 2, 12, 8), style="App.TFrame")
        status.pack(fill="x", side="bottom", before=outer)  # packed first: always keeps its line
        self.state_dot = tk.Label(status, text="\u25cf", background=BG, foreground=STATE_FG["disconnected"],
                                  font="ChinwagText")
        self.state_dot.pack(side="left")
        self.status_var = tk.StringVar(top, "")
        self.status_label = ttk.Label(status, textvariable=self.status_var, style="Status.TLabel")
        self.status_label.pack(side="left", padx=(4, 0))
        # Notices ("New message from dave") get their own place, so the connection
        # state on the left is always what the connection is doing.
        self.notice_var = tk.StringVar(top, "")
        self.notice_label = ttk.Label(status, textvariable=self.notice_var, style="Notice.TLabel")
        self.notice_label.pack(side="right")
        self._render_chat()

    # -- what the widgets show (used by tests and screenshots) -------------------

    def status_text(self) -> str:
        return self.status_var.get()

    def chat_contents(self) -> str:
        return self.chat_text.get("1.0", "end-1c")

    def broadcast_contents(self) -> str:
        return self.broadcast_text.get("1.0", "end-1c")

    def online_rows(self) -> list[str]:
        """Each row of the online list as shown, e.g. ``"bob"`` or ``"carol  (2)"``."""
        rows = []
        for iid in self.online_tree.get_children():
            text = str(self.online_tree.item(iid, "text"))
            unread = self.online_tree.set(iid, "unread")
            rows.append(f"{text}  {unread}".rstrip() if unread else text)
        return rows

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
        self._gen += 1
        self._user_disconnect = False
        self.url = ", ".join(urls)
        self._set_state("connecting", f"Connecting to {self.url} as {user}\u2026")
        self._session = self.bridge.submit(
            _session(urls, user, password, self._gen, self.bridge.post, self), done=self._session_ended
        )

    def disconnect(self) -> None:
        """Log out (or stop connecting); conversations stay in the window."""
        if self.state == "connecting" and self.client is None:
            self._gen += 1
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
        self._gen += 1
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

    # network thread -> here (each runs in the Tk thread, posted through the bridge)

    def _logged_in(self, gen: int, client: ChatClient, online: list[str]) -> None:
        if gen != self._gen:  # cancelled, or the window is closing
            self.bridge.submit(client.close())
            return
        self.client = client
        self.url = client.url or self.url
        me = client.user or self.user_var.get().strip()
        if self.me and name_key(me) != name_key(self.me):  # someone else now: not their conversations
            self.conversations.clear()
            self.broadcasts.clear()
            self.peer = None
            self._render_broadcasts()
        self.me = me
        node = f" (gateway {client.node})" if client.node else ""
        self._set_state("connected", f"Connected to {self.url} as {self.me}{node}")
        self.top.title(f"Chinwag \u2014 {self.me}")
        self.online = {name_key(u): u for u in online}
        self.online[name_key(self.me)] = self.me
        for conv in self.conversations.values():
            conv.history_loaded = False  # messages may have been missed while disconnected
        self._rebuild_list()
        self._load_broadcasts()
        if self.peer is not None:
            self._load_history(self.peer)
        self._render_chat()
        self.message_entry.focus_set()

    def _login_failed(self, gen: int, user: str, exc: BaseException) -> None:
        if gen != self._gen:
            return
        kind, title, text = login_failure(exc, user, self.url)
        self._set_state("disconnected", f"Not connected: {title.lower()}.")
        self._dialog(kind, title, text)

    def _state_changed(self, event: StateChanged) -> None:
        """The client library lost the connection and is reconnecting, or is back."""
        if self.client is None:
            return
        if event.state == "reconnecting":
            self._set_state("reconnecting", f"Reconnecting to the server\u2026 (lost {event.url or self.url})")
            return
        if event.state != "connected":
            return
        self.url = event.url or self.url
        node = f" (gateway {self.client.node})" if self.client.node else ""
        self._set_state("connected", f"Connected to {self.url} as {self.me}{node} \u2014 reconnected")
        if event.recovered is not None and not all(event.recovered.values()):
            # The server no longer had everything we missed: refill from history.
            for conv in self.conversations.values():
                conv.history_loaded = False
            if self.peer is not None:
                self._load_history(self.peer)
            self._load_broadcasts()
        gen = self._gen
        # One page, not everyone: a thousand reconnecting windows must not each fetch every name.
        self.bridge.submit(self.client.who_page(), done=partial(self._who_answered, gen))

    def _who_answered(self, gen: int, fut: concurrent.futures.Future[f.Online]) -> None:
        if gen != self._gen or fut.cancelled() or fut.exception() is not None:
            return
        self._online_snapshot(fut.result().users)

    def _online_snapshot(self, users: list[str]) -> None:
        """Presence events may have been missed: take the server's list (its first page, when capped)."""
        self.online = {name_key(u): u for u in users}
        if self.me:
            self.online[name_key(self.me)] = self.me
        self._rebuild_list()
        if self.peer is not None:
            self._render_chat()

    def _connection_closed(self, gen: int, closed: Closed) -> None:
        if gen != self._gen:
            return
        self.client = None
        if self._user_disconnect:
            self._set_state("disconnected", f"Disconnected from {self.url}. Press Connect to log in again.")
        else:
            why = describe_close(closed)
            self._set_state("disconnected", f"Disconnected: {why}. Press Connect to reconnect.")
        self.online = {}
        self._rebuild_list()
        self._render_chat()

    def _session_ended(self, fut: concurrent.futures.Future[None]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.error("chat session failed", exc_info=exc)
            if self.state != "disconnected" and not self._closing:
                self.client = None
                self._set_state("disconnected", f"Disconnected: {_reason(exc)}. Press Connect to reconnect.")

    def _on_event(self, gen: int, event: Event) -> None:
        if gen != self._gen:
            return
        if isinstance(event, f.Message):
            self._on_message(event)
        elif isinstance(event, f.Presence):
            self._on_presence(event)
        elif isinstance(event, f.PresenceBatch):
            for user in event.offline:
                self._on_presence(f.Presence(user=user, status="offline"))
            for user in event.online:
                self._on_presence(f.Presence(user=user, status="online"))
        elif isinstance(event, f.Online):
            self._online_snapshot(event.users)
        elif isinstance(event, StateChanged):
            self._state_changed(event)
        elif isinstance(event, f.Error):
            self._flash(f"Server: {event.message}")
        elif isinstance(event, Closed):
            self._connection_closed(gen, event)

    # -- selecting a conversation ---------------------------------------------------

    def select_from_list(self) -> None:
        """The Select button: chat with the highlighted user."""
        chosen = self.online_tree.selection()
        if not chosen:
            self._flash("Pick someone in Online clients first.")
            return
        self.select_peer(chosen[0])

    def _on_double_click(self, event: tk.Event[ttk.Treeview]) -> None:
        iid = self.online_tree.identify_row(event.y)
        if iid:
            self.online_tree.selection_set(iid)
            self.select_peer(iid)

    def select_peer(self, name: str) -> None:
        """Open the conversation with ``name`` (display name or key), loading its history if needed."""
        key = name_key(name)
        if self.me and key == name_key(self.me):
            self._flash("That's you \u2014 pick someone else to chat with.")
            return
        conv = self._conversation(key, self.online.get(key, name))
        previous = self.peer
        self.peer = key
        conv.unread = 0
        for iid in {previous, key}:
            if iid is not None:
                self._update_row(iid)
        if self.online_tree.exists(key):
            self.online_tree.selection_set(key)
            self.online_tree.see(key)
        self._render_chat()
        if not conv.history_loaded:
            self._load_history(key)
        self.message_entry.focus_set()

    def _conversation(self, key: str, display: str) -> Conversation:
        conv = self.conversations.get(key)
        if conv is None:
            conv = self.conversations[key] = Conversation(display)
        return conv

    def _load_history(self, key: str) -> None:
        conv = self.conversations.get(key)
        if conv is None or conv.loading or self.client is None:
            return
        conv.loading = True
        client, gen = self.client, self._gen
        self.bridge.submit(
            client.history(f"@{conv.peer}", limit=HISTORY_PAGE), done=partial(self._history_loaded, gen, key)
        )

    def _history_loaded(self, gen: int, key: str, fut: concurrent.futures.Future[list[f.Message]]) -> None:
        conv = self.conversations[key]
        conv.loading = False
        if gen != self._gen or fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.warning("history of %s failed: %r", conv.peer, exc)
            conv.notes.append((_now_ms(), f"Could not load earlier messages: {_reason(exc)}"))
        else:
            for msg in fut.result():
                conv.add(msg)
            conv.history_loaded = True
        if key == self.peer:
            self._render_chat()

    def _load_broadcasts(self) -> None:
        if self.client is None:
            return
        gen = self._gen
        self.bridge.submit(self.client.history(BROADCAST, limit=HISTORY_PAGE),
                           done=partial(self._broadcasts_loaded, gen))

    def _broadcasts_loaded(self, gen: int, fut: concurrent.futures.Future[list[f.Message]]) -> None:
        if gen != self._gen or fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.warning("broadcast history failed: %r", exc)
            return
        for msg in fut.result():
            self.broadcasts.setdefault(msg.id, msg)
        self._render_broadcasts()

    # -- sending ---------------------------------------------------------------------

    def send(self) -> None:
        """Send the typed line privately to the selected user (Send button, Enter)."""
        body = self.message_var.get()
        if not body.strip():
            return
        if self.peer is None:
            self._flash("Select someone in Online clients to chat with (or press Broadcast).")
            return
        if self.client is None or self.state not in ("connected", "reconnecting"):
            self._flash("Not connected: press Connect first.")
            return
        conv = self.conversations[self.peer]
        self.message_var.set("")
        self.bridge.submit(self.client.send(f"@{conv.peer}", body),
                           done=partial(self._sent, self._gen, self.peer, body))

    def _sent(self, gen: int, key: str, body: str, fut: concurrent.futures.Future[f.Ack]) -> None:
        if gen != self._gen or fut.cancelled():
            return
        conv = self.conversations[key]
        exc = fut.exception()
        if exc is not None:
            conv.notes.append((_now_ms(), f"Not sent to {conv.peer}: {_reason(exc)}"))
            if not self.message_var.get():
                self.message_var.set(body)  # give the text back so it can be sent again
        else:
            ack = fut.result()
            conv.add(f.Message(id=ack.id, from_=self.me, to=f"@{conv.peer}", body=body, ts=ack.ts))
        if key == self.peer:
            self._render_chat()

    def broadcast(self) -> None:
        """Send the typed line to everyone (Broadcast button, Ctrl+Enter)."""
        body = self.message_var.get()
        if not body.strip():
            return
        if self.client is None or self.state not in ("connected", "reconnecting"):
            self._flash("Not connected: press Connect first.")
            return
        self.message_var.set("")
        self.bridge.submit(self.client.send(BROADCAST, body), done=partial(self._broadcast_sent, self._gen, body))

    def _broadcast_sent(self, gen: int, body: str, fut: concurrent.futures.Future[f.Ack]) -> None:
        if gen != self._gen or fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self._flash(f"Broadcast not sent: {_reason(exc)}", error=True)
            if not self.message_var.get():
                self.message_var.set(body)
            return
        ack = fut.result()
        self._add_broadcast(f.Message(id=ack.id, from_=self.me, to=BROADCAST, body=body, ts=ack.ts))

    def send_file(self) -> None:
        """The "Send file…" button: pick a file, upload it, then send it to the selected user."""
        if self.peer is None:
            self._flash("Select someone in Online clients to send a file to.")
            return
        if self.client is None or self.state not in ("connected", "reconnecting"):
            self._flash("Not connected: press Connect first.")
            return
        path = self.ask_open_file()
        if not path:
            return  # the dialog was cancelled
        key, conv = self.peer, self.conversations[self.peer]
        name = os.path.basename(path)
        self._flash(f"Sending {name}\u2026")
        self.bridge.submit(_upload_and_send(self.client, f"@{conv.peer}", path),
                           done=partial(self._file_sent, self._gen, key, name))

    def _ask_open_file(self) -> str | None:
        return filedialog.askopenfilename(parent=self.top, title="Send a file") or None

    def _file_sent(self, gen: int, key: str, name: str,
                   fut: concurrent.futures.Future[tuple[f.Ack, FileRef]]) -> None:
        if gen != self._gen or fut.cancelled():
            return
        conv = self.conversations[key]
        exc = fut.exception()
        if exc is not None:
            conv.notes.append((_now_ms(), f"{name} not sent to {conv.peer}: {_reason(exc)}"))
            self._flash(f"Could not send {name}: {_reason(exc)}", error=True)
        else:
            ack, ref = fut.result()
            conv.add(f.Message(id=ack.id, from_=self.me, to=f"@{conv.peer}", body="", ts=ack.ts, file=ref))
            self._flash(f"Sent {name} to {conv.peer}.")
        if key == self.peer:
            self._render_chat()

    # -- incoming ----------------------------------------------------------------------

    def _on_message(self, msg: f.Message) -> None:
        if msg.to == BROADCAST:
            self._add_broadcast(msg)
            return
        mine = bool(self.me) and name_key(msg.from_) == name_key(self.me)
        peer = msg.to.removeprefix("@") if mine else msg.from_
        key = name_key(peer)
        conv = self._conversation(key, peer)
        if not conv.add(msg):
            return
        if key == self.peer:
            self._append_or_render(conv, msg)
        elif not mine:
            conv.unread += 1
            self._update_row(key)
            self._flash(f"New message from {peer}.")

    def _on_presence(self, event: f.Presence) -> None:
        key = name_key(event.user)
        if event.status == "online":
            self.online[key] = event.user
        else:
            self.online.pop(key, None)
        self._update_row(key)
        conv = self.conversations.get(key)
        if conv is not None and key == self.peer:
            state = "is online" if event.status == "online" else "went offline"
            conv.notes.append((_now_ms(), f"{event.user} {state}"))
            self._render_chat()

    def _add_broadcast(self, msg: f.Message) -> None:
        if msg.id in self.broadcasts:
            return
        last = all(_sort_key(other) <= _sort_key(msg.id) for other in self.broadcasts)
        self.broadcasts[msg.id] = msg
        if last:
            _append_line(self.broadcast_text, msg, self.me, self.file_view)
        else:
            self._render_broadcasts()

    # -- rendering ---------------------------------------------------------------------

    def _render_chat(self) -> None:
        text = self.chat_text
        _clear_pane(text)
        self._chat_placeholder = True
        if self.peer is None:
            self.chat_box.configure(text="Chat with your friends")
            hint = ("Select someone in Online clients to chat privately." if self.client is not None
                    else "Connect, then select someone in Online clients to chat privately.")
            text.insert("end", hint, ("note",))
        else:
            conv = self.conversations[self.peer]
            online = self.peer in self.online
            suffix = "" if online else " (offline)"
            self.chat_box.configure(text=f"Chat with your friends \u2014 {conv.peer}{suffix}")
            lines: list[tuple[int, f.Message | str]] = [(m.ts, m) for m in conv.ordered()]
            lines += [(ts, note) for ts, note in conv.notes]
            lines.sort(key=lambda pair: pair[0])
            if not lines:
                empty = ("Loading earlier messages\u2026" if conv.loading
                         else f"No messages with {conv.peer} yet. Say hi!")
                text.insert("end", empty, ("note",))
            else:
                self._chat_placeholder = False
            for _, item in lines:
                if isinstance(item, str):
                    text.insert("end", f"\u2014 {item}\n", ("note",))
                else:
                    _insert_message(text, item, self.me, self.file_view)
        text.configure(state="disabled")
        text.see("end")

    def _append_or_render(self, conv: Conversation, msg: f.Message) -> None:
        if conv.is_last(msg) and not self._chat_placeholder:
            _append_line(self.chat_text, msg, self.me, self.file_view)
        else:
            self._render_chat()

    def _render_broadcasts(self) -> None:
        text = self.broadcast_text
        _clear_pane(text)
        for msg in sorted(self.broadcasts.values(), key=lambda m: _sort_key(m.id)):
            _insert_message(text, msg, self.me, self.file_view)
        text.configure(state="disabled")
        text.see("end")

    def _rebuild_list(self) -> None:
        for iid in self.online_tree.get_children():
            self.online_tree.delete(iid)
        self._row_keys.clear()
        for key in sorted(set(self.online) | set(self.conversations)):
            self._update_row(key)

    def _update_row(self, key: str) -> None:
        """Insert, refresh, move or remove one row of the online list."""
        tree = self.online_tree
        conv = self.conversations.get(key)
        online = key in self.online
        is_me = bool(self.me) and key == name_key(self.me) and self.client is not None
        visible = online or (conv is not None and (conv.unread > 0 or key == self.peer or bool(conv.messages)))
        if not visible:
            if tree.exists(key):
                tree.delete(key)
            self._row_keys.pop(key, None)
            return
        display = self.online.get(key) or (conv.peer if conv is not None else key)
        text = f"{display} (you)" if is_me else display if online else f"{display} (offline)"
        tags: list[str] = []
        if is_me:
            tags.append("me")
        elif not online:
            tags.append("offline")
        unread = conv.unread if conv is not None else 0
        if unread:
            tags.append("unread")
        if key == self.peer:
            tags.append("current")
        badge = f"\u25cf {unread}" if unread else ""
        sort_key = (0 if is_me else 1 if online else 2, key)
        if tree.exists(key):
            tree.item(key, text=text, values=(badge,), tags=tags)
            if self._row_keys.get(key) == sort_key:
                return
            self._row_keys.pop(key, None)
        else:
            tree.insert("", "end", iid=key, text=text, values=(badge,), tags=tags)
        index = sum(1 for other in self._row_keys.values() if other < sort_key)
        tree.move(key, "", index)
        self._row_keys[key] = sort_key

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
        self.send_button.configure(state=chatting)
        self.send_file_button.configure(state=chatting)
        self.broadcast_button.configure(state=chatting)
        if idle:
            self.top.title("Chinwag")

    def _flash(self, message: str, error: bool = False) -> None:
        """A notice at the right of the status line, cleared after a few seconds."""
        self.notice_var.set(message)
        self.notice_label.configure(style="Error.TLabel" if error else "Notice.TLabel")
        if self._notice_timer is not None:
            self.top.after_cancel(self._notice_timer)
        self._notice_timer = self.top.after(NOTICE_MS, self._clear_notice)

    def _clear_notice(self) -> None:
        self._notice_timer = None
        self.notice_var.set("")

    def notice_text(self) -> str:
        return self.notice_var.get()

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


async def _session(urls: list[str], user: str, password: str, gen: int,
                   post: Callable[[Callable[[], None]], None], window: ChatWindow) -> None:
    """One connection, on the network thread: log in, then forward every event to the Tk thread.

    Only ``post`` is used to reach the window; the methods it names run later in
    the Tk thread.  Everything goes through one queue in order, so the window
    sees the login before the first event and the Closed event last.
    """
    try:
        client = await ChatClient.open(urls, user, password)
    except Exception as exc:
        post(partial(window._login_failed, gen, user, exc))
        return
    try:
        post(partial(window._logged_in, gen, client, sorted(client.online)))
        async for event in client.events():
            post(partial(window._on_event, gen, event))
    finally:
        await client.close()


async def _upload_and_send(client: ChatClient, to: str, path: str) -> tuple[f.Ack, FileRef]:
    """On the network thread: store the file (resumable chunks), then send a message carrying it."""
    ref = await upload(client, path)
    return await client.send(to, "", file=ref), ref


# -- widgets and style ------------------------------------------------------------------


def app_frame(top: tk.Tk | tk.Toplevel, title: str, size: str, minsize: tuple[int, int], grow_row: int) -> ttk.Frame:
    """The styled window both Chinwag windows start from: title, size, theme, and a padded outer frame."""
    top.title(title)
    top.geometry(size)
    top.minsize(*minsize)
    top.configure(background=BG)
    apply_style(top)
    outer = ttk.Frame(top, padding=(12, 10, 12, 6), style="App.TFrame")
    outer.pack(fill="both", expand=True)
    outer.columnconfigure(0, weight=1)
    outer.rowconfigure(grow_row, weight=1)
    return outer


def apply_style(top: tk.Misc) -> None:
    """ttk's clam theme, readable fonts and a light palette: it should look like a chat app."""
    from tkinter import font

    style = ttk.Style(top)
    if "clam" in style.theme_names():
        style.theme_use("clam")
    base = font.nametofont("TkDefaultFont", root=top)
    base.configure(size=10)
    family = base.actual("family")
    existing = set(font.names(root=top))
    for name, size, weight in (("ChinwagText", 11, "normal"), ("ChinwagBold", 10, "bold"),
                               ("ChinwagSmall", 9, "normal"), ("ChinwagName", 11, "bold")):
        if name not in existing:
            # Created in Tcl, not as tkinter.font.Font: those delete their font when
            # the Python object is garbage-collected, and widgets fall back to a default.
            top.tk.call("font", "create", name, "-family", family, "-size", size, "-weight", weight)
    style.configure(".", background=BG)
    style.configure("App.TFrame", background=BG)
    style.configure("App.TLabel", background=BG)
    style.configure("TLabelframe", background=BG, bordercolor="#d0d4da")
    style.configure("TLabelframe.Label", background=BG, font="ChinwagBold", foreground="#374151")
    style.configure("Status.TLabel", background=BG, foreground="#374151")
    style.configure("Error.TLabel", background=BG, foreground=ERROR_FG)
    style.configure("Notice.TLabel", background=BG, foreground=ME_FG)
    style.configure("Accent.TButton", foreground="white", background="#2563eb", bordercolor="#1d4ed8")
    style.map("Accent.TButton", background=[("disabled", "#a5b4fc"), ("active", "#1d4ed8")],
              foreground=[("disabled", "#eef2ff")])
    style.configure("Treeview", background=PANE_BG, fieldbackground=PANE_BG, rowheight=24, font="ChinwagText")
    style.map("Treeview", background=[("selected", "#dbeafe")], foreground=[("selected", "#111827")])


def _text_pane(parent: ttk.Labelframe, height: int) -> tk.Text:
    parent.columnconfigure(0, weight=1)
    parent.rowconfigure(0, weight=1)
    text = tk.Text(parent, height=height, wrap="word", state="disabled", font="ChinwagText", background=PANE_BG,
                   relief="flat", borderwidth=0, highlightthickness=1, highlightbackground="#d0d4da",
                   highlightcolor="#93c5fd", padx=10, pady=8, spacing1=2, spacing3=2, cursor="arrow")
    scroll = ttk.Scrollbar(parent, orient="vertical", command=text.yview)
    text.configure(yscrollcommand=scroll.set)
    text.grid(row=0, column=0, sticky="nsew")
    scroll.grid(row=0, column=1, sticky="ns")
    text.tag_configure("ts", foreground=MUTED_FG, font="ChinwagSmall")
    text.tag_configure("me", foreground=ME_FG, font="ChinwagName")
    text.tag_configure("peer", foreground=PEER_FG, font="ChinwagName")
    text.tag_configure("note", foreground=MUTED_FG, font="ChinwagSmall", justify="center")
    return text


def _insert_message(text: tk.Text, msg: f.Message, me: str, files: FileView | None = None) -> None:
    """One message: time, sender, text; a file (no text) goes on the same line, else on the next."""
    mine = bool(me) and name_key(msg.from_) == name_key(me)
    text.insert("end", f"{format_time(msg.ts)}  ", ("ts",))
    text.insert("end", "You" if mine else msg.from_, ("me" if mine else "peer",))
    ref = file_of(msg)
    if ref is None:
        text.insert("end", f"  {msg.body}\n")
        return
    text.insert("end", f"  {msg.body}\n" if msg.body else "  ")
    if files is not None:
        files.insert(text, ref)  # the file line with its Save button, and pictures underneath
    else:
        text.insert("end", describe(ref) + "\n", ("file",))


def _append_line(text: tk.Text, msg: f.Message, me: str, files: FileView | None = None) -> None:
    text.configure(state="normal")
    _insert_message(text, msg, me, files)
    text.configure(state="disabled")
    text.see("end")


def _clear_pane(text: tk.Text) -> None:
    """Empty a pane for re-rendering.  Deleting text keeps its marks, so the marks of previews still
    being fetched are dropped too: FileView then skips them (the new rendering has its own)."""
    text.configure(state="normal")
    text.delete("1.0", "end")
    FileView.forget(text)


def _now_ms() -> int:
    return int(dt.datetime.now().timestamp() * 1000)


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
    root.report_callback_exception = _report_callback_exception
    if args.connect:
        root.after_idle(app.connect)
    try:
        run_mainloop(root)
    finally:
        app.shutdown(CLOSE_GRACE_MS / 1000)


SIGNAL_CHECK_MS = 200  # Tk blocks in C between events: wake at least this often so signals are seen


def run_mainloop(root: tk.Tk) -> None:
    """``root.mainloop()`` that Ctrl-C and SIGTERM end cleanly, whatever Tk is doing.

    The default SIGINT handler raises KeyboardInterrupt wherever Python happens
    to be; inside a Tk callback (the bridge's 25 ms poll, say) tkinter catches
    it and merely reports it, and the window lives on.  So the handlers only
    ask Tk to quit, and a timer makes sure Python runs often enough to notice.
    """

    def on_signal(signum: int, frame: object) -> None:
        root.quit()

    def tick() -> None:
        root.after(SIGNAL_CHECK_MS, tick)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    root.after(SIGNAL_CHECK_MS, tick)
    try:
        root.mainloop()
    except KeyboardInterrupt:
        pass  # a signal that landed before the handlers were in place
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    main()
