"""What the Tk client's network thread reports, handled in the Tk thread: login, reconnects, events, the end.

:func:`session` runs one connection on the network thread (:class:`client.bridge.Bridge`)
and posts each outcome to the window; the :class:`ServerEvents` methods it names
then run in the Tk thread, in order: the login (or its failure), every event,
and the ``Closed`` event last.  ``gen`` tags each post, so callbacks of a
connection the user has since cancelled or replaced are ignored.

:class:`ServerEvents` is a mixin of :class:`client.gui.ChatWindow`, on top of the
conversations, sending and online-list mixins it updates.
"""

from __future__ import annotations

import concurrent.futures
import logging
import tkinter as tk
from collections.abc import Callable
from functools import partial
from tkinter import ttk
from typing import Literal

from client.chat import ChatClient, Closed, Event, StateChanged
from client.gui_model import DialogKind, describe_close, login_failure, reason
from client.gui_online import OnlineList
from client.gui_sending import Sending
from protocol import frames as f
from protocol.names import name_key

log = logging.getLogger("chinwag.gui")

State = Literal["disconnected", "connecting", "connected", "reconnecting"]


class ServerEvents(Sending, OnlineList):
    """The window's answers to the network thread: logged in, login failed, reconnecting/back, an event, closed."""

    # Provided by ChatWindow.
    url: str
    user_var: tk.StringVar
    message_entry: ttk.Entry
    _closing: bool
    _user_disconnect: bool

    def _set_state(self, state: State, message: str) -> None:
        raise NotImplementedError  # ChatWindow's

    def _dialog(self, kind: DialogKind, title: str, text: str) -> None:
        raise NotImplementedError  # ChatWindow's

    def _logged_in(self, gen: int, client: ChatClient, online: list[str]) -> None:
        if gen != self.gen:  # cancelled, or the window is closing
            self.bridge.submit(client.close())
            return
        self.client = client
        self.url = client.url or self.url
        me = client.user or self.user_var.get().strip()
        if self.me and name_key(me) != name_key(self.me):  # someone else now: not their conversations
            self.forget_conversations()
            self.groups.forget_all()
        self.me = me
        node = f" (gateway {client.node})" if client.node else ""
        self._set_state("connected", f"Connected to {self.url} as {self.me}{node}")
        self.top.title(f"Chinwag \u2014 {self.me}")
        self.online = {name_key(u): u for u in online}
        self.online[name_key(self.me)] = self.me
        self.mark_stale()
        self._rebuild_list()
        self.groups.refresh()
        self.load_broadcasts()
        if self.current is not None:
            self.load_history(self.current)
        self.render_chat()
        self.message_entry.focus_set()

    def _login_failed(self, gen: int, user: str, exc: BaseException) -> None:
        if gen != self.gen:
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
            self._rebuild_list()  # nobody is known to be online while we cannot see
            return
        if event.state != "connected":
            return
        self.url = event.url or self.url
        node = f" (gateway {self.client.node})" if self.client.node else ""
        self._set_state("connected", f"Connected to {self.url} as {self.me}{node} \u2014 reconnected")
        if event.recovered is not None and not all(event.recovered.values()):
            self.mark_stale()  # the server no longer had everything we missed: refill from history
            if self.current is not None:
                self.load_history(self.current)
            self.load_broadcasts()
        self.groups.refresh()
        gen = self.gen
        # One page, not everyone: a thousand reconnecting windows must not each fetch every name.
        self.bridge.submit(self.client.who_page(), done=partial(self._who_answered, gen))

    def _who_answered(self, gen: int, fut: concurrent.futures.Future[f.Online]) -> None:
        if gen != self.gen or fut.cancelled() or fut.exception() is not None:
            return
        self._online_snapshot(fut.result().users)

    def _online_snapshot(self, users: list[str]) -> None:
        """Presence events may have been missed: take the server's list (its first page, when capped)."""
        self.online = {name_key(u): u for u in users}
        if self.me:
            self.online[name_key(self.me)] = self.me
        self._rebuild_list()
        if self.current is not None:
            self.render_chat()

    def _connection_closed(self, gen: int, closed: Closed) -> None:
        if gen != self.gen:
            return
        self.client = None
        if self._user_disconnect:
            self._set_state("disconnected", f"Disconnected from {self.url}. Press Connect to log in again.")
        else:
            self._set_state("disconnected", f"Disconnected: {describe_close(closed)}. Press Connect to reconnect.")
        self.online = {}
        self.fail_pending("disconnected")
        self._rebuild_list()
        self.render_chat()

    def _session_ended(self, fut: concurrent.futures.Future[None]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.error("chat session failed", exc_info=exc)
            if self.state != "disconnected" and not self._closing:
                self.client = None
                self._set_state("disconnected", f"Disconnected: {reason(exc)}. Press Connect to reconnect.")

    def _on_event(self, gen: int, event: Event) -> None:
        if gen != self.gen:
            return
        if isinstance(event, f.Message):
            self.on_message(event)
        elif isinstance(event, f.Presence):
            self._on_presence(event)
        elif isinstance(event, f.PresenceBatch):
            for user in event.offline:
                self._on_presence(f.Presence(user=user, status="offline"))
            for user in event.online:
                self._on_presence(f.Presence(user=user, status="online"))
        elif isinstance(event, f.Online):
            self._online_snapshot(event.users)
        elif isinstance(event, f.GroupEvent):
            self.groups.on_event(event)
        elif isinstance(event, StateChanged):
            self._state_changed(event)
        elif isinstance(event, f.Error):
            self.flash(f"Server: {event.message}")
        elif isinstance(event, Closed):
            self._connection_closed(gen, event)


async def session(urls: list[str], user: str, password: str, gen: int,
                   post: Callable[[Callable[[], None]], None], window: ServerEvents) -> None:
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
