"""Conversation panes of the Tk client: time, sender, text, files, and lines still being sent.

One ``tk.Text`` per pane, read-only for the user; a whole conversation is
drawn by :func:`render_conversation`, a new last message appended with
:func:`append_line`.
"""

from __future__ import annotations

import tkinter as tk
from tkinter import ttk

from client.files import file_of
from client.gui_files import FileView, describe
from client.gui_layout import ERROR_FG, ME_FG, MUTED_FG, PANE_BG, PEER_FG
from client.gui_model import Conversation, format_time
from protocol import frames as f
from protocol.names import name_key


def text_pane(parent: ttk.Labelframe, height: int) -> tk.Text:
    parent.columnconfigure(0, weight=1)
    parent.rowconfigure(0, weight=1)
    text = tk.Text(parent, height=height, width=30, wrap="word", state="disabled", font="ChinwagText",
                   background=PANE_BG, relief="flat", borderwidth=0, highlightthickness=1,
                   highlightbackground="#d0d4da", highlightcolor="#93c5fd", padx=10, pady=8, spacing1=2,
                   spacing3=2, cursor="arrow")
    scroll = ttk.Scrollbar(parent, orient="vertical", command=text.yview)
    text.configure(yscrollcommand=scroll.set)
    text.grid(row=0, column=0, sticky="nsew")
    scroll.grid(row=0, column=1, sticky="ns")
    text.tag_configure("ts", foreground=MUTED_FG, font="ChinwagSmall")
    text.tag_configure("me", foreground=ME_FG, font="ChinwagName")
    text.tag_configure("peer", foreground=PEER_FG, font="ChinwagName")
    text.tag_configure("note", foreground=MUTED_FG, font="ChinwagSmall", justify="center")
    text.tag_configure("pending", foreground=MUTED_FG)
    text.tag_configure("failed", foreground=ERROR_FG, font="ChinwagSmall")
    return text


def insert_message(text: tk.Text, msg: f.Message, me: str, files: FileView | None = None) -> None:
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


def render_conversation(text: tk.Text, conv: Conversation, me: str, files: FileView | None, empty: str) -> bool:
    """Draw a whole conversation: messages and notes in order, then lines still being sent.

    Returns False when there was nothing to show (``empty`` is shown instead).
    """
    clear_pane(text)
    lines = conv.lines()
    if not lines and not conv.pending:
        text.insert("end", empty, ("note",))
        finish_pane(text)
        return False
    for item in lines:
        if isinstance(item, str):
            text.insert("end", f"\u2014 {item}\n", ("note",))
        else:
            insert_message(text, item, me, files)
    for line in sorted(conv.pending.values(), key=lambda p: p.token):
        text.insert("end", f"{format_time(line.ts)}  ", ("ts",))
        text.insert("end", "You", ("me",))
        what = line.body or (describe(line.file) if line.file is not None else "")
        text.insert("end", f"  {what}", ("pending",))
        if line.error is None:
            text.insert("end", "  (sending\u2026)\n", ("pending",))
        else:
            text.insert("end", f"  (not sent: {line.error})\n", ("failed",))
    finish_pane(text)
    return True


def append_line(text: tk.Text, msg: f.Message, me: str, files: FileView | None = None) -> None:
    text.configure(state="normal")
    insert_message(text, msg, me, files)
    finish_pane(text)


def clear_pane(text: tk.Text) -> None:
    """Empty a pane for re-rendering.  Deleting text keeps its marks, so the marks of previews still
    being fetched are dropped too: FileView then skips them (the new rendering has its own)."""
    text.configure(state="normal")
    text.delete("1.0", "end")
    FileView.forget(text)


def finish_pane(text: tk.Text) -> None:
    text.configure(state="disabled")
    text.see("end")
