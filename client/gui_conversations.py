"""The conversations of the Tk client: opening one, history, receiving, drawing the panes.

Every conversation is a :class:`client.gui_model.Conversation` keyed by
address: ``"@bob"`` (private), ``"#devs"`` (a group) or the broadcast pane's
``"*"``.  The chat pane shows one private or group conversation (``current``);
the broadcast pane always shows ``"*"``.

Sending a line or a file is :mod:`client.gui_sending`.

:class:`Conversations` is a mixin of :class:`client.gui.ChatWindow`: the
attributes and methods it declares without defining live there.
"""

from __future__ import annotations

import concurrent.futures
import logging
import tkinter as tk
from collections.abc import Callable
from functools import partial
from tkinter import ttk
from typing import TYPE_CHECKING

from client.bridge import Bridge
from client.chat import ChatClient
from client.gui_files import FileView
from client.gui_model import Conversation, dm_key, group_key, now_ms, reason, sort_key
from client.gui_panes import append_line, render_conversation
from protocol import frames as f
from protocol.names import BROADCAST, name_key

if TYPE_CHECKING:
    from client.gui_groups import GroupsPanel

log = logging.getLogger("chinwag.gui")

HISTORY_PAGE = f.MAX_HISTORY_LIMIT  # messages fetched when a conversation is first opened


class Conversations:
    """Conversations and the chat and broadcast panes."""

    # Provided by ChatWindow.
    top: tk.Tk | tk.Toplevel
    bridge: Bridge
    client: ChatClient | None
    me: str
    state: str
    gen: int
    online: dict[str, str]
    file_view: FileView
    chat_text: tk.Text
    chat_box: ttk.Labelframe
    broadcast_text: tk.Text
    message_var: tk.StringVar
    message_entry: ttk.Entry
    online_tree: ttk.Treeview
    groups: GroupsPanel
    ask_open_file: Callable[[], str | None]

    def __init__(self) -> None:
        self.conversations: dict[str, Conversation] = {}
        self.current: str | None = None  # key of the conversation in the chat pane
        self.broadcasts = Conversation("everyone", BROADCAST)
        self._chat_placeholder = True  # the chat pane shows a hint, not messages


    def flash(self, message: str, error: bool = False) -> None:
        raise NotImplementedError  # ChatWindow's

    _update_row: Callable[[str], None]
    @property
    def peer(self) -> str | None:
        """Name key of the person whose private conversation is open, if one is."""
        return self.current[1:] if self.current is not None and self.current.startswith("@") else None

    # -- which conversation ---------------------------------------------------------

    def conversation(self, key: str, display: str) -> Conversation:
        conv = self.conversations.get(key)
        if conv is None:
            conv = self.conversations[key] = Conversation(display, key[0] + display.lstrip("@#"))
        return conv

    def select_peer(self, name: str) -> None:
        """Open the private conversation with ``name`` (display name or key)."""
        key = dm_key(name)
        if self.me and key == dm_key(self.me):
            self.flash("That's you \u2014 pick someone else to chat with.")
            return
        self.open_conversation(key, self.online.get(key[1:], name.removeprefix("@")))

    def open_conversation(self, key: str, display: str) -> None:
        """Show conversation ``key`` in the chat pane, loading its history the first time."""
        conv = self.conversation(key, display)
        previous, self.current = self.current, key
        conv.unread = 0
        for other in {previous, key}:
            self._refresh_row(other)
        if key.startswith("@"):
            if self.online_tree.exists(key[1:]):
                self.online_tree.see(key[1:])
        else:
            self.online_tree.selection_remove(*self.online_tree.selection())
        self.render_chat()
        if not conv.history_loaded:
            self.load_history(key)
        self.message_entry.focus_set()

    def _refresh_row(self, key: str | None) -> None:
        if key is None:
            return
        if key.startswith("@"):
            self._update_row(key[1:])
        elif key.startswith("#"):
            if key != self.current:
                self.groups.tree.selection_remove(*[i for i in self.groups.tree.selection() if i == key[1:]])
            self.groups.update_row(key[1:])

    def drop_conversation(self, key: str) -> None:
        """A group we left or were removed from: forget it; the chat pane goes back to its hint."""
        self.conversations.pop(key, None)
        if self.current == key:
            self.current = None
            self.render_chat()

    def forget_conversations(self) -> None:
        self.conversations.clear()
        self.current = None
        self.broadcasts = Conversation("everyone", BROADCAST)
        self.render_broadcasts()

    def mark_stale(self) -> None:
        """Messages may have been missed: reload each conversation's history when next shown."""
        for conv in self.conversations.values():
            conv.history_loaded = False

    def load_history(self, key: str) -> None:
        conv = self.conversations.get(key)
        if conv is None or conv.loading or self.client is None:
            return
        conv.loading = True
        self.bridge.submit(self.client.history(conv.address, limit=HISTORY_PAGE),
                           done=partial(self._history_loaded, self.gen, key))

    def _history_loaded(self, gen: int, key: str, fut: concurrent.futures.Future[list[f.Message]]) -> None:
        conv = self.conversations.get(key)
        if conv is None:
            return
        conv.loading = False
        if gen != self.gen or fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.warning("history of %s failed: %r", conv.peer, exc)
            conv.notes.append((now_ms(), f"Could not load earlier messages: {reason(exc)}"))
        else:
            for msg in fut.result():
                conv.add(msg)
            conv.history_loaded = True
        if key == self.current:
            self.render_chat()

    def load_broadcasts(self) -> None:
        if self.client is not None:
            self.bridge.submit(self.client.history(BROADCAST, limit=HISTORY_PAGE),
                               done=partial(self._broadcasts_loaded, self.gen))

    def _broadcasts_loaded(self, gen: int, fut: concurrent.futures.Future[list[f.Message]]) -> None:
        if gen != self.gen or fut.cancelled():
            return
        if fut.exception() is not None:
            log.warning("broadcast history failed: %r", fut.exception())
            return
        for msg in fut.result():
            self.broadcasts.add(msg)
        self.render_broadcasts()

    # -- incoming ----------------------------------------------------------------------

    def on_message(self, msg: f.Message) -> None:
        if msg.to == BROADCAST:
            self._add_broadcast(msg)
            return
        mine = bool(self.me) and name_key(msg.from_) == name_key(self.me)
        if msg.to.startswith("#"):
            key, display = group_key(msg.to), msg.to[1:]
            where = f"in {display}"
        else:
            display = msg.to.removeprefix("@") if mine else msg.from_
            key, where = dm_key(display), f"from {display}"
        conv = self.conversation(key, display)
        if not conv.add(msg):
            return
        if key == self.current:
            if conv.is_last(msg) and not self._chat_placeholder and not conv.pending:
                append_line(self.chat_text, msg, self.me, self.file_view)
            else:
                self.render_chat()
        elif not mine:
            conv.unread += 1
            self._refresh_row(key)
            self.flash(f"New message {where}.")

    def _add_broadcast(self, msg: f.Message) -> None:
        conv = self.broadcasts
        last = all(sort_key(other) <= sort_key(msg.id) for other in conv.messages)
        if not conv.add(msg):
            return
        if last and not conv.pending:
            append_line(self.broadcast_text, msg, self.me, self.file_view)
        else:
            self.render_broadcasts()

    # -- drawing ---------------------------------------------------------------------

    def _redraw(self, conv: Conversation) -> None:
        if conv is self.broadcasts:
            self.render_broadcasts()
        elif self.current is not None and self.conversations.get(self.current) is conv:
            self.render_chat()

    def update_chat_title(self) -> None:
        key = self.current
        if key is None:
            title = "Chat with your friends"
        elif key.startswith("#"):
            title = self.groups.title(key[1:])
        else:
            conv = self.conversations[key]
            title = f"Chat with your friends \u2014 {conv.peer}{'' if key[1:] in self.online else ' (offline)'}"
        self.chat_box.configure(text=title)

    def render_chat(self) -> None:
        text = self.chat_text
        self.update_chat_title()
        if self.current is None:
            hint = ("Select someone in Online clients, or a group, to chat." if self.client is not None
                    else "Connect, then select someone in Online clients, or a group, to chat.")
            render_conversation(text, Conversation(""), self.me, None, hint)
            self._chat_placeholder = True
            return
        conv = self.conversations[self.current]
        if conv.loading:
            empty = "Loading earlier messages\u2026"
        elif self.current.startswith("#"):
            empty = f"No messages in {conv.peer} yet. Say hi!"
        else:
            empty = f"No messages with {conv.peer} yet. Say hi!"
        self._chat_placeholder = not render_conversation(text, conv, self.me, self.file_view, empty)

    def render_broadcasts(self) -> None:
        render_conversation(self.broadcast_text, self.broadcasts, self.me, self.file_view, "")
