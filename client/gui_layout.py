"""How the Chinwag windows look and hold together: style, panes, a bar that wraps, small dialogs.

Shared by ``chinwag-tk`` (:mod:`client.gui`) and ``chinwag-admin``
(:mod:`chinwag.admin`):

* :func:`app_frame` and :func:`apply_style`: the window, ttk's clam theme, one
  palette, and named fonts.  Disabled buttons are visibly greyed out.
* :class:`FlowBar`: a row of controls that wraps onto more lines when the
  window is too narrow, so no button is ever pushed off the right edge (a
  plain ``pack(side="left")`` row cuts them off at the minimum size).
* :class:`FollowText`: a read-only text pane that keeps showing its newest
  line while the user has not scrolled away, also across resizes (checking
  "am I at the end?" only when a line arrives fails after the window was
  enlarged and shrunk again: the view is then no longer at the end).
* :func:`build_chat_window`: the chinwag-tk window's widgets.  The message line
  spans the whole window so it stays wide at the minimum size; notices get a
  line of their own under the status (sharing it, long hints were cut off).
* :class:`FormDialog`: a small non-modal form (a name, a checkbox) for group
  actions.  Non-modal on purpose: it never runs a nested event loop, so the
  network queue keeps draining while it is open.
* :func:`run_mainloop`: ``mainloop()`` that Ctrl-C and SIGTERM end cleanly.
"""

from __future__ import annotations

import logging
import signal
import tkinter as tk
from collections.abc import Callable
from tkinter import ttk
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from client.gui import ChatWindow


log = logging.getLogger("chinwag.gui")

# Colours: calm neutrals, one accent for "me", one for everyone else.
BG = "#f4f5f7"
PANE_BG = "#ffffff"
ME_FG = "#1a5fb4"
PEER_FG = "#26803a"
MUTED_FG = "#6b7280"
ERROR_FG = "#b42318"
DISABLED_FG = "#a0a6b0"
CHAT_SIZE = "960x660"  # chinwag-tk's default size
CHAT_MIN_SIZE = (700, 540)  # its smallest: every control still fits (tests/gui measures it)
STATE_FG = {"connected": "#26803a", "connecting": "#b7791f", "reconnecting": "#d97706", "disconnected": "#9ca3af"}


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
    # A disabled button must not look pressable: flat, pale, grey text.
    style.map("TButton", foreground=[("disabled", DISABLED_FG)], background=[("disabled", "#eceef1")],
              bordercolor=[("disabled", "#dfe2e6")], lightcolor=[("disabled", "#eceef1")],
              darkcolor=[("disabled", "#eceef1")])
    style.configure("Accent.TButton", foreground="white", background="#2563eb", bordercolor="#1d4ed8")
    style.map("Accent.TButton", background=[("disabled", "#c7d2fe"), ("active", "#1d4ed8")],
              foreground=[("disabled", "#eef2ff")], bordercolor=[("disabled", "#c7d2fe")],
              lightcolor=[("disabled", "#c7d2fe")], darkcolor=[("disabled", "#c7d2fe")])
    style.configure("Tool.TButton", padding=(4, 3))  # small buttons, three to a row (Groups)
    style.configure("Treeview", background=PANE_BG, fieldbackground=PANE_BG, rowheight=24, font="ChinwagText")
    style.map("Treeview", background=[("selected", "#dbeafe")], foreground=[("selected", "#111827")])


class FlowBar(ttk.Frame):
    """Controls laid out left to right, wrapping onto further lines when they do not fit the width.

    Each item is one widget (often a small frame holding a label and its
    entry) created as a child of this bar; they keep their order.
    """

    def __init__(self, parent: tk.Misc, *, gap: int = 12, line_gap: int = 6, **kwargs: Any) -> None:
        super().__init__(parent, style="App.TFrame", **kwargs)
        self.items: list[tk.Widget] = []
        self.gap = gap
        self.line_gap = line_gap
        self._width = 0
        self._pending: str | None = None
        self.bind("<Configure>", self._on_configure, add="+")

    def add(self, widget: tk.Widget) -> tk.Widget:
        self.items.append(widget)
        widget.bind("<Configure>", lambda _e: self._later(), add="+")  # its natural size is known
        self._later()
        return widget

    def _later(self) -> None:
        if self._pending is None:
            self._pending = self.after_idle(self.reflow)

    def _on_configure(self, event: tk.Event[Any]) -> None:
        if event.width != self._width:
            self._width = event.width
            self.reflow()

    def reflow(self) -> None:
        self._pending = None
        width = self._width or self.winfo_width()
        if width <= 1:
            width = 10_000  # not mapped yet: one line, and a Configure event will follow
        x = y = line_height = 0
        for widget in self.items:
            w, h = widget.winfo_reqwidth(), widget.winfo_reqheight()
            if x > 0 and x + w > width:
                x, y = 0, y + line_height + self.line_gap
                line_height = 0
            widget.place(x=x, y=y)
            x += w + self.gap
            line_height = max(line_height, h)
        # place() does not size the bar: ask for exactly the height the lines need.
        height = y + line_height
        if int(str(self.cget("height")) or 0) != height:
            self.configure(height=height)


W = TypeVar("W", bound=tk.Widget)


def labelled(bar: FlowBar, text: str, widget_factory: Callable[[tk.Misc], W]) -> W:
    """A label and its control as one item of a :class:`FlowBar`; returns the control."""
    box = ttk.Frame(bar, style="App.TFrame")
    ttk.Label(box, text=text, style="App.TLabel").pack(side="left", padx=(0, 6))
    widget = widget_factory(box)
    widget.pack(side="left")
    bar.add(box)
    return widget


class FollowText:
    """Keeps a read-only text pane scrolled to its end unless the user scrolled away from it."""

    def __init__(self, text: tk.Text, scroll: ttk.Scrollbar) -> None:
        self.text = text
        self.following = True
        scroll.configure(command=self._scrolled)
        for sequence in ("<MouseWheel>", "<Button-4>", "<Button-5>", "<Prior>", "<Next>"):
            text.bind(sequence, lambda _e: text.after_idle(self._update), add="+")
        text.bind("<Configure>", lambda _e: self.follow(), add="+")

    def _scrolled(self, *args: Any) -> None:
        self.text.yview(*args)
        self._update()

    def _update(self) -> None:
        self.following = self.text.yview()[1] >= 0.999

    def follow(self) -> None:
        if self.following:
            self.text.see("end")


def build_chat_window(self: ChatWindow, server: str, user: str, password: str) -> None:
    """The chinwag-tk window's widgets, stored as attributes of ``self`` (the window)."""
    from client.gui_groups import GroupsPanel  # these two build on this module
    from client.gui_panes import text_pane

    top = self.top
    outer = app_frame(top, "Chinwag", CHAT_SIZE, CHAT_MIN_SIZE, grow_row=1)

    # Connection bar: server, username, password, Connect; wraps when narrow.
    bar = FlowBar(outer)
    bar.grid(row=0, column=0, sticky="ew", pady=(0, 10))
    self.server_var = tk.StringVar(top, server)
    self.user_var = tk.StringVar(top, user)
    self.password_var = tk.StringVar(top, password)
    self.server_entry = labelled(bar, "Server", lambda p: ttk.Entry(p, textvariable=self.server_var, width=24))
    self.user_entry = labelled(bar, "Username", lambda p: ttk.Entry(p, textvariable=self.user_var, width=14))
    self.password_entry = labelled(
        bar, "Password", lambda p: ttk.Entry(p, textvariable=self.password_var, width=14, show="\u2022"))
    self.connect_button = ttk.Button(bar, text="Disconnect", command=self.toggle_connection,
                                     style="Accent.TButton")
    self.connect_button.configure(width=len("Disconnect") + 1)  # one width for every label it shows
    bar.add(self.connect_button)
    for entry in (self.server_entry, self.user_entry, self.password_entry):
        entry.bind("<Return>", lambda _e: self.connect())  # never cancels: Enter twice is common

    panes = ttk.Panedwindow(outer, orient="horizontal")
    panes.grid(row=1, column=0, sticky="nsew")

    # Left: Online clients + Select, then Groups.
    left = ttk.Frame(panes, style="App.TFrame")
    left.columnconfigure(0, weight=1)
    left.rowconfigure((0, 1), weight=1, uniform="left")
    self.online_box = ttk.Labelframe(left, text="Online clients", padding=8)
    self.online_box.grid(row=0, column=0, sticky="nsew")
    box = self.online_box
    box.columnconfigure(0, weight=1)
    box.rowconfigure(0, weight=1)
    self.online_tree = ttk.Treeview(box, columns=("unread",), show="tree", selectmode="browse", height=4)
    self.online_tree.column("#0", width=140, stretch=True)
    self.online_tree.column("unread", width=52, anchor="e", stretch=False)
    self.online_tree.tag_configure("me", foreground=MUTED_FG)
    self.online_tree.tag_configure("offline", foreground="#9ca3af")
    self.online_tree.tag_configure("stale", foreground="#b0b5bd")
    self.online_tree.tag_configure("unread", font="ChinwagBold", foreground=ME_FG)
    self.online_tree.tag_configure("current", foreground=ME_FG)
    tree_scroll = ttk.Scrollbar(box, orient="vertical", command=self.online_tree.yview)
    self.online_tree.configure(yscrollcommand=tree_scroll.set)
    self.online_tree.grid(row=0, column=0, sticky="nsew")
    tree_scroll.grid(row=0, column=1, sticky="ns")
    self.online_tree.bind("<Double-1>", self._on_double_click)
    self.online_tree.bind("<Return>", lambda _e: self.select_from_list())
    self.select_button = ttk.Button(box, text="Select", command=self.select_from_list)
    self.select_button.grid(row=1, column=0, columnspan=2, sticky="ew", pady=(6, 0))
    self.groups = GroupsPanel(self, left)
    self.groups.box.grid(row=1, column=0, sticky="nsew", pady=(8, 0))
    panes.add(left, weight=0)

    # Right: the chat over the broadcast pane.
    stack = ttk.Panedwindow(panes, orient="vertical")
    panes.add(stack, weight=1)
    self.chat_box = ttk.Labelframe(stack, text="Chat with your friends", padding=8)
    self.chat_text = text_pane(self.chat_box, height=8)
    stack.add(self.chat_box, weight=3)
    bc_box = ttk.Labelframe(stack, text="Broadcast", padding=8)
    self.broadcast_text = text_pane(bc_box, height=3)
    stack.add(bc_box, weight=1)

    # The line to type in, across the whole window: it stays wide at the minimum size.
    compose = ttk.Frame(outer, style="App.TFrame")
    compose.grid(row=2, column=0, sticky="ew", pady=(10, 0))
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

    # Status line: a coloured dot and what the connection is doing; notices on their own line
    # under it (they used to share the line and got cut off), both wrapping to the width.
    status = ttk.Frame(top, padding=(12, 2, 12, 6), style="App.TFrame")
    status.pack(fill="x", side="bottom", before=outer)  # packed first: always keeps its lines
    status.columnconfigure(1, weight=1)
    self.state_dot = tk.Label(status, text="\u25cf", background=BG, foreground=STATE_FG["disconnected"],
                              font="ChinwagText")
    self.state_dot.grid(row=0, column=0, sticky="nw")
    self.status_var = tk.StringVar(top, "")
    self.status_label = ttk.Label(status, textvariable=self.status_var, style="Status.TLabel")
    self.status_label.grid(row=0, column=1, sticky="w", padx=(4, 0))
    self.notice_var = tk.StringVar(top, " ")
    self.notice_label = ttk.Label(status, textvariable=self.notice_var, style="Notice.TLabel")
    self.notice_label.grid(row=1, column=1, sticky="w", padx=(4, 0))

    def wrap(event: tk.Event[Any]) -> None:
        for label in (self.status_label, self.notice_label):
            label.configure(wraplength=max(100, event.width - 50))

    status.bind("<Configure>", wrap, add="+")


class FormDialog:
    """A small non-modal form: a title, a line of explanation, optional entry and checkbox, OK/Cancel.

    ``on_ok(text, checked)`` runs when OK is pressed (or Enter typed); the
    dialog closes itself.  Non-modal: no grab, no nested event loop.
    """

    def __init__(self, parent: tk.Misc, title: str, prompt: str, ok: str,
                 on_ok: Callable[[str, bool], None], *, entry: str | None = "", check: str | None = None,
                 checked: bool = False) -> None:
        self.top = tk.Toplevel(parent)
        self.top.title(title)
        self.top.configure(background=BG)
        self.top.transient(parent.winfo_toplevel())
        self.top.resizable(False, False)
        self.on_ok = on_ok
        box = ttk.Frame(self.top, padding=14, style="App.TFrame")
        box.pack(fill="both", expand=True)
        ttk.Label(box, text=prompt, style="App.TLabel", wraplength=320).pack(anchor="w")
        self.var = tk.StringVar(self.top, entry or "")
        self.entry: ttk.Entry | None = None
        if entry is not None:
            self.entry = ttk.Entry(box, textvariable=self.var, width=32)
            self.entry.pack(fill="x", pady=(8, 0))
            self.entry.bind("<Return>", lambda _e: self.accept())
            self.entry.focus_set()
        self.checked = tk.BooleanVar(self.top, checked)
        self.check: ttk.Checkbutton | None = None
        if check is not None:
            self.check = ttk.Checkbutton(box, text=check, variable=self.checked)
            self.check.pack(anchor="w", pady=(8, 0))
        buttons = ttk.Frame(box, style="App.TFrame")
        buttons.pack(fill="x", pady=(14, 0))
        self.cancel_button = ttk.Button(buttons, text="Cancel", command=self.cancel)
        self.cancel_button.pack(side="right")
        self.ok_button = ttk.Button(buttons, text=ok, command=self.accept, style="Accent.TButton")
        self.ok_button.pack(side="right", padx=(0, 8))
        self.top.bind("<Escape>", lambda _e: self.cancel())
        self.top.protocol("WM_DELETE_WINDOW", self.cancel)
        parent_top = parent.winfo_toplevel()
        self.top.geometry(f"+{parent_top.winfo_rootx() + 80}+{parent_top.winfo_rooty() + 80}")

    @property
    def open(self) -> bool:
        try:
            return bool(self.top.winfo_exists())
        except tk.TclError:
            return False

    def accept(self) -> None:
        text, checked = self.var.get().strip(), bool(self.checked.get())
        if self.entry is not None and not text:
            self.entry.focus_set()
            return
        self.cancel()
        self.on_ok(text, checked)

    def cancel(self) -> None:
        try:
            self.top.destroy()
        except tk.TclError:
            pass


def tree_rows(tree: ttk.Treeview, column: str) -> list[str]:
    """Each row of a list as shown: its text, then the badge column if any (``"bob  ● 2"``)."""
    rows = []
    for iid in tree.get_children():
        text = str(tree.item(iid, "text"))
        badge = tree.set(iid, column)
        rows.append(f"{text}  {badge}".rstrip() if badge else text)
    return rows


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


def report_callback_exception(exc: type[BaseException], value: BaseException, tb: Any) -> None:
    """Tk callback errors go to the log, never to a traceback dialog or a dead window."""
    log.error("error in a Tk callback", exc_info=(exc, value, tb))
