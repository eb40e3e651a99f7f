"""The "Online clients" list of the Tk client: who is online, unread counts, choosing a person.

Rows are name keys; a person with a conversation stays listed (marked
"(offline)") when they leave, so its unread count stays in view.  While the
client reconnects nobody's presence is known, so every row is greyed out and
marked "(?)" until the server answers again; the open conversation's row stays
highlighted across rebuilds.  A mixin of :class:`client.gui.ChatWindow`.
"""

from __future__ import annotations

import tkinter as tk
from collections.abc import Callable
from tkinter import ttk

from client.chat import ChatClient
from client.gui_model import Conversation, now_ms
from protocol import frames as f
from protocol.names import name_key


class OnlineList:
    """The online list and the Select button (widgets built by ChatWindow)."""

    # Provided by ChatWindow.
    online_tree: ttk.Treeview
    online_box: ttk.Labelframe
    online: dict[str, str]
    conversations: dict[str, Conversation]
    current: str | None
    client: ChatClient | None
    me: str
    state: str

    def __init__(self) -> None:
        self._row_keys: dict[str, tuple[int, str]] = {}  # online tree iid -> its sort key


    def flash(self, message: str, error: bool = False) -> None:
        raise NotImplementedError  # ChatWindow's

    select_peer: Callable[[str], None]
    conversation: Callable[[str, str], Conversation]
    render_chat: Callable[[], None]
    def _on_presence(self, event: f.Presence) -> None:
        key = name_key(event.user)
        if event.status == "online":
            self.online[key] = event.user
        else:
            self.online.pop(key, None)
        self._update_row(key)
        if self.current == "@" + key:
            state = "is online" if event.status == "online" else "went offline"
            self.conversation("@" + key, event.user).notes.append((now_ms(), f"{event.user} {state}"))
            self.render_chat()

    # -- the online list -----------------------------------------------------------

    def select_from_list(self) -> None:
        """The Select button: chat with the highlighted user."""
        chosen = self.online_tree.selection()
        if not chosen:
            self.flash("Pick someone in Online clients first.")
            return
        self.select_peer(chosen[0])

    def peer_selected_in_list(self) -> str | None:
        chosen = self.online_tree.selection()
        if not chosen or (self.me and chosen[0] == name_key(self.me)):
            return None
        return self.online.get(str(chosen[0]), str(chosen[0]))

    def _on_double_click(self, event: tk.Event[ttk.Treeview]) -> None:
        iid = self.online_tree.identify_row(event.y)
        if iid:
            self.online_tree.selection_set(iid)
            self.select_peer(iid)

    def _rebuild_list(self) -> None:
        for iid in self.online_tree.get_children():
            self.online_tree.delete(iid)
        self._row_keys.clear()
        dms = {key[1:] for key in self.conversations if key.startswith("@")}
        for key in sorted(set(self.online) | dms):
            self._update_row(key)
        reconnecting = self.state == "reconnecting"
        self.online_box.configure(text="Online clients (reconnecting\u2026)" if reconnecting else "Online clients")

    def _update_row(self, key: str) -> None:
        """Insert, refresh, move or remove one row of the online list."""
        tree = self.online_tree
        conv = self.conversations.get("@" + key)
        online = key in self.online
        is_me = bool(self.me) and key == name_key(self.me) and self.client is not None
        current = self.current == "@" + key
        visible = online or (conv is not None and (conv.unread > 0 or current or bool(conv.messages)))
        if not visible:
            if tree.exists(key):
                tree.delete(key)
            self._row_keys.pop(key, None)
            return
        display = self.online.get(key) or (conv.peer if conv is not None else key)
        stale = self.state == "reconnecting" and not is_me  # unknown until the server answers again
        text = (f"{display} (you)" if is_me else f"{display} (?)" if stale
                else display if online else f"{display} (offline)")
        tags: list[str] = []
        if is_me:
            tags.append("me")
        elif stale:
            tags.append("stale")
        elif not online:
            tags.append("offline")
        unread = conv.unread if conv is not None else 0
        if unread:
            tags.append("unread")
        if current:
            tags.append("current")
        badge = f"\u25cf {unread}" if unread else ""
        sort_key = (0 if is_me else 1 if online else 2, key)
        if tree.exists(key):
            tree.item(key, text=text, values=(badge,), tags=tags)
        else:
            tree.insert("", "end", iid=key, text=text, values=(badge,), tags=tags)
        if self._row_keys.get(key) != sort_key:
            self._row_keys.pop(key, None)
            index = sum(1 for other in self._row_keys.values() if other < sort_key)
            tree.move(key, "", index)
            self._row_keys[key] = sort_key
        if current and tree.selection() != (key,):
            tree.selection_set(key)  # the open conversation stays highlighted, also after a rebuild
