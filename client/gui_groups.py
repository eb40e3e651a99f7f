"""Groups in the Tk client: the "Groups" section beside "Online clients" and everything it does.

A group is a conversation like a private one (:class:`client.gui_model.Conversation`
keyed ``"#<group key>"``, shown in the same chat pane, with history, unread
counts and files); this module adds what only groups have:

* the list of your groups, plus the invitations you have not used yet
  ("Devs (invited by alice)"), each with its unread count;
* New… (a name and "Invite only"), Join… (pre-filled with a selected
  invitation), Invite… (owner only), Members and Leave, as non-modal forms
  (:class:`client.gui_layout.FormDialog`) so the network keeps flowing;
* ``group_event`` frames as notes in the group's conversation ("bob joined").

How the server decides (docs/protocol.md §16): membership is decided in Redis
before anything is delivered; invitations still pending are pushed again as
``group_event invited`` at every login; your own ``left`` never reaches you
(the ``group_info`` reply is the answer); the list is re-read with
``groups`` after every (re)login, since events are not replayed.
"""

from __future__ import annotations

import concurrent.futures
import logging
import tkinter as tk
from dataclasses import dataclass
from functools import partial
from tkinter import ttk
from typing import TYPE_CHECKING, Any

from client.gui_layout import ME_FG, MUTED_FG, FormDialog, tree_rows
from client.gui_model import now_ms, reason
from protocol import frames as f
from protocol.errors import ChatError
from protocol.names import name_key

if TYPE_CHECKING:
    from client.gui import ChatWindow

log = logging.getLogger("chinwag.gui.groups")


@dataclass
class GroupRow:
    """One row of the Groups list: a group you are in, or one you are invited to."""

    name: str  # the group's display name
    member: bool = True
    owner: str = ""
    invite_only: bool = False
    members: list[str] | None = None  # known after members/create/join
    invited_by: str | None = None


class GroupsPanel:
    """The Groups section of a :class:`~client.gui.ChatWindow` (built into ``parent``)."""

    def __init__(self, window: ChatWindow, parent: tk.Misc) -> None:
        self.window = window
        self.rows: dict[str, GroupRow] = {}  # group name key -> row
        self.dialog: FormDialog | None = None
        box = ttk.Labelframe(parent, text="Groups", padding=8)
        self.box = box
        box.columnconfigure((0, 1, 2), weight=1, uniform="groupbuttons")
        box.rowconfigure(0, weight=1)
        self.tree = ttk.Treeview(box, columns=("unread",), show="tree", selectmode="browse", height=4)
        self.tree.column("#0", width=140, stretch=True)
        self.tree.column("unread", width=52, anchor="e", stretch=False)
        self.tree.tag_configure("invited", foreground=MUTED_FG)
        self.tree.tag_configure("unread", font="ChinwagBold", foreground=ME_FG)
        self.tree.tag_configure("current", foreground=ME_FG)
        self.tree.grid(row=0, column=0, columnspan=3, sticky="nsew")
        self.tree.bind("<<TreeviewSelect>>", self._on_select)
        self.buttons: dict[str, ttk.Button] = {}
        for index, (key, label, command) in enumerate((
            ("new", "New\u2026", self.ask_create), ("join", "Join\u2026", self.ask_join),
            ("invite", "Invite\u2026", self.ask_invite), ("members", "Members", self.show_members),
            ("leave", "Leave", self.ask_leave),
        )):
            button = ttk.Button(box, text=label, command=command, width=-1, style="Tool.TButton")
            button.grid(row=1 + index // 3, column=index % 3, sticky="ew", pady=(6, 0),
                        padx=(0 if index % 3 == 0 else 4, 0))
            self.buttons[key] = button
        self.update_buttons()

    # -- what it shows (tests) -------------------------------------------------------

    def row_texts(self) -> list[str]:
        return tree_rows(self.tree, "unread")

    def selected(self) -> str | None:
        chosen = self.tree.selection()
        return str(chosen[0]) if chosen else None

    # -- connection ----------------------------------------------------------------

    def refresh(self) -> None:
        """After a (re)login: which groups am I in?  (Events are not replayed while away.)"""
        client, gen = self.window.client, self.window.gen
        if client is not None:
            self.window.bridge.submit(client.groups(), done=partial(self._listed, gen))
        self.update_buttons()

    def _listed(self, gen: int, fut: concurrent.futures.Future[list[f.GroupSummary]]) -> None:
        if gen != self.window.gen or fut.cancelled():
            return
        if fut.exception() is not None:
            log.warning("listing groups failed: %r", fut.exception())
            return
        listed = {name_key(g.group): g for g in fut.result()}
        for key, row in list(self.rows.items()):
            if row.member and key not in listed:
                del self.rows[key]  # left or removed while we were away
        for key, summary in listed.items():
            row = self.rows.setdefault(key, GroupRow(summary.group))
            row.name, row.member, row.owner, row.invite_only = summary.group, True, summary.owner, summary.invite_only
            row.invited_by = None
        self.rebuild()

    def forget_all(self) -> None:
        """Logged in as someone else: not their groups."""
        self.rows.clear()
        self.rebuild()

    # -- the list ----------------------------------------------------------------------

    def rebuild(self) -> None:
        for iid in self.tree.get_children():
            self.tree.delete(iid)
        for key in sorted(self.rows, key=lambda k: (not self.rows[k].member, k)):
            self.update_row(key)
        self.update_buttons()

    def update_row(self, key: str) -> None:
        row = self.rows.get(key)
        if row is None:
            if self.tree.exists(key):
                self.tree.delete(key)
            return
        conv = self.window.conversations.get("#" + key)
        unread = conv.unread if conv is not None and row.member else 0
        text = row.name if row.member else f"{row.name} (invited by {row.invited_by or '?'})"
        tags = ["invited"] if not row.member else []
        if unread:
            tags.append("unread")
        if self.window.current == "#" + key:
            tags.append("current")
        badge = f"\u25cf {unread}" if unread else ""
        if self.tree.exists(key):
            self.tree.item(key, text=text, values=(badge,), tags=tags)
        else:
            index = sum(1 for k in self.tree.get_children() if (not self.rows[k].member, k) < (not row.member, key))
            self.tree.insert("", index, iid=key, text=text, values=(badge,), tags=tags)
        if self.window.current == "#" + key and self.tree.selection() != (key,):
            self.tree.selection_set(key)

    def update_buttons(self) -> None:
        online = self.window.client is not None and self.window.state in ("connected", "reconnecting")
        key = self.selected()
        row = self.rows.get(key) if key else None
        member = row is not None and row.member
        owner = member and row is not None and name_key(row.owner or "?") == name_key(self.window.me or "!")
        states = {"new": online, "join": online, "invite": online and owner, "members": online and member,
                  "leave": online and member}
        for name, enabled in states.items():
            self.buttons[name].configure(state="normal" if enabled else "disabled")

    def _on_select(self, _event: Any = None) -> None:
        key = self.selected()
        self.update_buttons()
        if key is None or key not in self.rows:
            return
        row = self.rows[key]
        if row.member:
            if self.window.current != "#" + key:
                self.window.open_conversation("#" + key, row.name)
        else:
            self.window.flash(f"{row.invited_by or 'Someone'} invited you to {row.name}: press Join\u2026 to join.")

    # -- actions (buttons) ------------------------------------------------------------------

    def _form(self, title: str, prompt: str, ok: str, on_ok: Any, **kwargs: Any) -> FormDialog:
        if self.dialog is not None and self.dialog.open:
            self.dialog.cancel()
        self.dialog = FormDialog(self.window.top, title, prompt, ok, on_ok, **kwargs)
        return self.dialog

    def ask_create(self) -> None:
        self._form("New group", "Name of the new group (letters, digits, _ - .):", "Create",
                   lambda name, checked: self.create(name, checked),
                   check="Invite only (members join only when invited)")

    def ask_join(self) -> None:
        key = self.selected()
        row = self.rows.get(key) if key else None
        preset = row.name if row is not None and not row.member else ""
        self._form("Join a group", "Name of the group to join:", "Join", lambda name, _c: self.join(name),
                   entry=preset)

    def ask_invite(self) -> None:
        row = self._current_row()
        if row is None:
            return
        peer = self.window.peer_selected_in_list()
        self._form("Invite to " + row.name, f"Who should be invited to {row.name}?", "Invite",
                   lambda user, _c: self.invite(row.name, user), entry=peer or "")

    def ask_leave(self) -> None:
        row = self._current_row()
        if row is None:
            return
        self._form("Leave " + row.name, f"Leave the group {row.name}?"
                   + (" It is invite-only: you need a new invitation to come back." if row.invite_only else ""),
                   "Leave", lambda _t, _c: self.leave(row.name), entry=None)

    def _current_row(self) -> GroupRow | None:
        key = self.selected()
        row = self.rows.get(key) if key else None
        return row if row is not None and row.member else None

    def create(self, name: str, invite_only: bool) -> None:
        self._request("create", name, invite_only=invite_only)

    def join(self, name: str) -> None:
        self._request("join", name)

    def invite(self, group: str, user: str) -> None:
        self._request("invite", group, user=user.removeprefix("@"))

    def leave(self, group: str) -> None:
        self._request("leave", group)

    def show_members(self) -> None:
        row = self._current_row()
        if row is not None:
            self._request("members", row.name)

    def _request(self, op: str, group: str, *, user: str | None = None, invite_only: bool | None = None) -> None:
        client = self.window.client
        if client is None:
            self.window.flash("Not connected: press Connect first.")
            return
        self.window.bridge.submit(client.group(op, group, user=user, invite_only=invite_only),
                                  done=partial(self._answered, self.window.gen, op, group, user))

    def _answered(self, gen: int, op: str, group: str, user: str | None,
                  fut: concurrent.futures.Future[f.GroupInfo]) -> None:
        if gen != self.window.gen or fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            why = exc.message if isinstance(exc, ChatError) else reason(exc)
            verb = {"create": "create", "join": "join", "invite": f"invite {user} to", "leave": "leave",
                    "members": "list the members of"}.get(op, op)
            self.window.flash(f"Could not {verb} {group.removeprefix('#')}: {why}.", error=True)
            return
        info = fut.result()
        key = name_key(info.group)
        if op == "leave":
            self.rows.pop(key, None)
            self.window.drop_conversation("#" + key)
            self.window.flash(f"You left {info.group}.")
            self.rebuild()
            return
        row = self.rows.setdefault(key, GroupRow(info.group))
        row.name, row.member, row.owner, row.invite_only = info.group, True, info.owner, info.invite_only
        row.members, row.invited_by = list(info.members), None
        if op in ("create", "join"):
            what = "created" if op == "create" else "joined"
            self.rebuild()
            self.note(key, f"You {what} {info.group}" + (" (invite only)" if info.invite_only else ""))
            self.window.open_conversation("#" + key, info.group)
        elif op == "invite":
            self.window.flash(f"Invited {user} to {info.group}.")
        elif op == "members":
            self.note(key, "Members: " + ", ".join(
                f"{m} (owner)" if name_key(m) == name_key(info.owner) else m for m in info.members))
        self.window.update_chat_title()
        self.update_buttons()

    # -- events ------------------------------------------------------------------------------

    def on_event(self, event: f.GroupEvent) -> None:
        key = name_key(event.group)
        me = name_key(self.window.me) == name_key(event.user)
        row = self.rows.get(key)
        if event.event == "invited" and me:
            if row is None or not row.member:
                self.rows[key] = GroupRow(event.group, member=False, invited_by=event.by)
                self.update_row(key)
                self.window.flash(f"{event.by} invited you to {event.group}.")
            return
        if row is None:
            return
        if event.event == "joined":
            if me:
                row.member, row.invited_by = True, None
            elif row.members is not None and event.user not in row.members:
                row.members = sorted([*row.members, event.user], key=name_key)
            self.note(key, "You joined" if me else f"{event.user} joined")
        elif event.event in ("left", "removed"):
            if row.members is not None:
                row.members = [m for m in row.members if name_key(m) != name_key(event.user)]
            if event.event == "left":
                self.note(key, f"{event.user} left")
            elif me:
                self.rows.pop(key, None)
                self.window.drop_conversation("#" + key)
                self.window.flash(f"{event.by} removed you from {event.group}.", error=True)
                self.rebuild()
                return
            else:
                self.note(key, f"{event.by} removed {event.user}")
        elif event.event == "invited":
            self.note(key, f"{event.by} invited {event.user}")
        elif event.event == "owner":
            row.owner = event.user
            self.note(key, f"{'You are' if me else event.user + ' is'} now the owner")
        elif event.event == "updated" and event.invite_only is not None:
            row.invite_only = event.invite_only
            self.note(key, "Now invite only" if event.invite_only else "Now open to everyone")
        self.update_row(key)
        self.update_buttons()
        self.window.update_chat_title()

    def note(self, key: str, text: str) -> None:
        """A line in the group's conversation (not a message: events are not stored)."""
        row = self.rows.get(key)
        conv = self.window.conversation("#" + key, row.name if row else key)
        conv.notes.append((now_ms(), text))
        if self.window.current == "#" + key:
            self.window.render_chat()

    def title(self, key: str) -> str:
        row = self.rows.get(key)
        if row is None:
            return f"Group {key}"
        bits = []
        if row.members is not None:
            bits.append(f"{len(row.members)} member{'s' if len(row.members) != 1 else ''}")
        if row.invite_only:
            bits.append("invite only")
        if row.owner:
            bits.append(f"owner {row.owner}")
        return f"Group {row.name}" + (f" \u2014 {', '.join(bits)}" if bits else "")
