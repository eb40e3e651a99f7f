"""The chinwag-admin window's widgets: the Run/Stop bar, the gateway table, the log, the status line.

Built once by :class:`chinwag.admin.AdminWindow` (which declares every widget
attribute set here); the window's behaviour stays in :mod:`chinwag.admin`.  The
style and the shared widgets are the Tk client's (:mod:`client.gui_layout`).
"""

from __future__ import annotations

import tkinter as tk
from tkinter import ttk
from typing import TYPE_CHECKING

from client.gui_layout import BG, MUTED_FG, PANE_BG, STATE_FG, FlowBar, FollowText, app_frame, labelled
from common.redis import redacted_url

if TYPE_CHECKING:
    from chinwag.admin import AdminWindow


def build_admin_window(window: AdminWindow) -> None:
    """Make the window's widgets inside ``window.top`` and store them on ``window``."""
    top = window.top
    title = "Chinwag Server" if not window.redis_url else "Chinwag Cluster"
    outer = app_frame(top, title, "860x600", (620, 420), grow_row=2)

    bar = FlowBar(outer)  # wraps when narrow: Stop Server used to fall off the right edge
    bar.grid(row=0, column=0, sticky="ew", pady=(0, 10))
    window.host_var = tk.StringVar(top, window.settings.host)
    window.port_var = tk.StringVar(top, str(window.settings.port))
    window.host_entry = labelled(bar, "IP address", lambda p: ttk.Entry(p, textvariable=window.host_var, width=18))
    window.port_entry = labelled(bar, "Port", lambda p: ttk.Entry(p, textvariable=window.port_var, width=7))
    window.run_button = ttk.Button(bar, text="Run Server", command=window.run_server, style="Accent.TButton")
    bar.add(window.run_button)
    window.stop_button = ttk.Button(bar, text="Stop Server", command=window.stop_server)
    bar.add(window.stop_button)
    window.online_var = tk.StringVar(top, "")
    bar.add(ttk.Label(bar, textvariable=window.online_var, style="Status.TLabel"))

    where = f"Cluster at {redacted_url(window.redis_url)}" if window.redis_url else "Gateways"
    gw_box = ttk.Labelframe(outer, text=where, padding=8)
    gw_box.grid(row=1, column=0, sticky="ew")
    gw_box.columnconfigure(0, weight=1)
    window.gateway_tree = ttk.Treeview(gw_box, columns=("node", "users", "names", "lease"), show="headings",
                                     height=4, selectmode="none")
    window.gateway_tree.heading("node", text="Gateway", anchor="w")
    window.gateway_tree.heading("users", text="Users", anchor="e")
    window.gateway_tree.heading("names", text="Who", anchor="w")
    window.gateway_tree.heading("lease", text="Lease expires in", anchor="e")
    window.gateway_tree.column("node", width=250, minwidth=120, anchor="w", stretch=False)
    window.gateway_tree.column("users", width=60, minwidth=50, anchor="e", stretch=False)
    window.gateway_tree.column("names", width=200, minwidth=100, anchor="w", stretch=True)
    window.gateway_tree.column("lease", width=140, minwidth=100, anchor="e", stretch=False)
    window.gateway_tree.tag_configure("local", foreground="#1a5fb4")
    window.gateway_tree.grid(row=0, column=0, sticky="ew")

    log_box = ttk.Labelframe(outer, text="Log", padding=8)
    log_box.grid(row=2, column=0, sticky="nsew", pady=(10, 0))
    log_box.columnconfigure(0, weight=1)
    log_box.rowconfigure(0, weight=1)
    window.log_text = tk.Text(log_box, height=14, wrap="word", state="disabled", font="ChinwagText",
                            background=PANE_BG, relief="flat", borderwidth=0, highlightthickness=1,
                            highlightbackground="#d0d4da", padx=10, pady=8, spacing1=2, cursor="arrow")
    scroll = ttk.Scrollbar(log_box, orient="vertical", command=window.log_text.yview)
    window.log_text.configure(yscrollcommand=scroll.set)
    window.log_follow = FollowText(window.log_text, scroll)  # keeps the newest line in view, also after resizing
    window.log_text.grid(row=0, column=0, sticky="nsew")
    scroll.grid(row=0, column=1, sticky="ns")
    window.log_text.tag_configure("time", foreground=MUTED_FG, font="ChinwagSmall")
    window.log_text.tag_configure("online", foreground="#26803a", font="ChinwagName")
    window.log_text.tag_configure("offline", foreground="#b42318", font="ChinwagName")
    window.log_text.tag_configure("info", foreground="#374151")
    window.log_text.tag_configure("warning", foreground="#b7791f")
    window.log_text.tag_configure("detail", foreground=MUTED_FG, font="ChinwagSmall")

    status = ttk.Frame(top, padding=(12, 2, 12, 8), style="App.TFrame")
    status.pack(fill="x", side="bottom", before=outer)  # packed first: always keeps its line
    window.state_dot = tk.Label(status, text="\u25cf", background=BG, foreground=STATE_FG["disconnected"],
                              font="ChinwagText")
    window.state_dot.pack(side="left")
    window.status_var = tk.StringVar(top, "")
    ttk.Label(status, textvariable=window.status_var, style="Status.TLabel").pack(side="left", padx=(4, 0))
