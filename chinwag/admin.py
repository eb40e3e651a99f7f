"""``chinwag-admin``: the server window (Tk) — run a single node, or watch a whole cluster.

    chinwag-admin                                  # run the embedded single node from the window
    chinwag-admin --redis-url redis://10.0.0.5/0   # watch an existing cluster (one Redis)
    chinwag-admin --redis-url redis+cluster://10.0.0.5:7000,10.0.0.6:7000   # ... on a Redis Cluster

Like the original server window it has an IP address to bind to, a port
(default 9000), Run Server and Stop Server buttons, and a log of clients
connecting and disconnecting with their times.  Run Server starts the same
node as ``chinwag-server`` (gateway + presence reaper via
:func:`chinwag.server.serve`) on an asyncio loop in a background thread, with
its own embedded Redis, so the window stays responsive and knows the Redis
URL to watch.

The log and the gateway table come from Redis itself, not from the local
gateway: the window follows every presence partition (every login and
logout on every gateway; sharded channels on a Redis Cluster, see
:mod:`chinwag.admin_feed`) and polls the gateway leases and their user sets
about once a second.  So the same view works for a remote cluster: with
``--redis-url`` the window attaches to that Redis and shows every gateway
with its user count and the whole cluster's connect/disconnect log (Run
Server then adds one more node to that cluster).

Threads follow :mod:`client.bridge`: network and server work run on the
bridge's loop thread (:mod:`chinwag.admin_node`); widgets are touched only by
callables it posts back.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import logging
import sys
import tkinter as tk
from tkinter import messagebox, ttk
from typing import Literal

from chinwag.admin_layout import build_admin_window
from chinwag.admin_node import (
    _PORT_ERRORS,
    GatewayRow,
    _clock,
    _in_use,
    _monitor,
    _run_node,
    _WindowLogHandler,
)
from client.bridge import Bridge
from client.gui_layout import (
    STATE_FG,
    FollowText,
    report_callback_exception,
    run_mainloop,
)
from client.gui_model import error_text
from common.config import Settings
from common.logs import setup_logging
from common.redis import is_cluster_url, parse_cluster_url, redacted_url

log = logging.getLogger("chinwag.admin")

LOG_LIMIT = 5000  # lines kept in the log pane

ServerState = Literal["stopped", "starting", "running", "stopping"]


def parse_port(text: str) -> int:
    """The port entry's value, or ValueError with a message for people."""
    try:
        port = int(text.strip())
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    if not 1 <= port <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return port


class AdminWindow:
    """The chinwag-admin window, built inside ``top`` (a Tk root or a Toplevel).

    ``settings`` is the node configuration Run Server starts from (host and
    port come from the entries).  With ``redis_url`` the window attaches to
    that Redis at once and Run Server joins that cluster instead of starting
    an embedded Redis.
    """

    # Widgets (made by chinwag.admin_layout.build_admin_window); tests drive them through the screen.
    host_var: tk.StringVar
    port_var: tk.StringVar
    online_var: tk.StringVar
    status_var: tk.StringVar
    host_entry: ttk.Entry
    port_entry: ttk.Entry
    run_button: ttk.Button
    stop_button: ttk.Button
    gateway_tree: ttk.Treeview
    log_text: tk.Text
    log_follow: FollowText
    state_dot: tk.Label

    def __init__(
        self,
        top: tk.Tk | tk.Toplevel,
        *,
        settings: Settings | None = None,
        redis_url: str | None = None,
        bridge: Bridge | None = None,
    ) -> None:
        self.top = top
        self.settings = settings or Settings()
        self.redis_url = redis_url
        self.bridge = bridge or Bridge(top, name="chinwag-admin-io")
        self.server_state: ServerState = "stopped"
        self.node_url = ""  # ws:// URL of the node this window runs
        self.local_node: str | None = None  # its gateway id, marked "(this server)" in the table
        self.closed = False
        self._closing = False
        self._node: concurrent.futures.Future[None] | None = None
        self._stop: asyncio.Event | None = None
        self._monitor_finish: asyncio.Event | None = None
        self._monitor: concurrent.futures.Future[None] | None = None
        self._grace_timer: str | None = None
        self._ran = False  # the node was up (ready) at some point: a failure then "stopped" it
        self._log_handler = _WindowLogHandler(self.bridge.post, self)
        self._build()
        self.top.protocol("WM_DELETE_WINDOW", self.close)
        self.bridge.start()
        logging.getLogger("chinwag").addHandler(self._log_handler)
        if redis_url:
            self._set_server_state("stopped", f"Attached to {redacted_url(redis_url)}. "
                                              "Run Server adds a node to this cluster.")
            self._start_monitor(redis_url)
        else:
            self._set_server_state("stopped", "Server stopped. Press Run Server to start the chat server.")

    # -- layout -----------------------------------------------------------------

    def _build(self) -> None:
        build_admin_window(self)

    # -- what the widgets show (tests, screenshots) ------------------------------------

    def status_text(self) -> str:
        return self.status_var.get()

    def log_contents(self) -> str:
        return self.log_text.get("1.0", "end-1c")

    def gateway_rows(self) -> list[tuple[str, str, str, str]]:
        """The table as shown: (gateway, users, who, lease) per row."""
        rows = []
        for iid in self.gateway_tree.get_children():
            node, users, names, lease = (str(v) for v in self.gateway_tree.item(iid, "values"))
            rows.append((node, users, names, lease))
        return rows

    # -- Run / Stop -------------------------------------------------------------------------

    def run_server(self) -> None:
        """Run Server: start a node on the loop thread (returns at once)."""
        if self._closing or self.server_state != "stopped":
            return
        host = self.host_var.get().strip()
        if not host:
            self._error("Bad Address", "Enter the IP address to listen on, e.g. 127.0.0.1 or 0.0.0.0.")
            return
        try:
            port = parse_port(self.port_var.get())
        except ValueError as exc:
            self._error("Bad Port", f"{str(exc).capitalize()}.")
            return
        settings = self.settings.with_(host=host, port=port, redis_url=self.redis_url)
        shown_host = f"[{host}]" if ":" in host else host
        self.node_url = f"ws://{shown_host}:{port}"
        self._stop = asyncio.Event()
        self._set_server_state("starting", f"Starting the chat server on {self.node_url}\u2026")
        self._log("info", f"Starting server on {self.node_url}")
        self._node = self.bridge.submit(
            _run_node(settings, self._stop, self.bridge.post, self, with_monitor=not self.redis_url),
            done=self._node_ended,
        )

    def stop_server(self) -> None:
        """Stop Server: close every connection, release the names, stop the node."""
        if self.server_state not in ("starting", "running") or self._stop is None:
            return
        self._set_server_state("stopping", "Stopping the chat server\u2026")
        self._log("info", "Stopping server")
        self.bridge.call_soon(self._stop.set)

    def close(self) -> None:
        """Closing the window stops the server first (bounded), then destroys the window."""
        if self._closing:
            return
        self._closing = True
        with contextlib.suppress(tk.TclError):
            self.top.withdraw()
        if self._monitor_finish is not None:
            self.bridge.call_soon(self._monitor_finish.set)
        if self._node is not None and not self._node.done() and self._stop is not None:
            self.bridge.call_soon(self._stop.set)
            grace = int((self.settings.shutdown_timeout + 5) * 1000)
            self._grace_timer = self.top.after(grace, self._finish_close)
        else:
            self._grace_timer = self.top.after(300 if self._monitor is not None else 0, self._finish_close)

    def shutdown(self, timeout: float) -> None:
        """After the Tk loop has ended (Ctrl-C, or the window closed): stop the server and the
        monitor and wait for them (embedded Redis included), at most ``timeout`` seconds.
        Blocks, so never call it from a Tk callback; :meth:`close` is the non-blocking way."""
        self._closing = True
        if self._monitor_finish is not None:
            self.bridge.call_soon(self._monitor_finish.set)
        node = self._node
        if node is not None and self._stop is not None:
            self.bridge.call_soon(self._stop.set)
            with contextlib.suppress(Exception):
                node.result(timeout)
        if self._monitor is not None:
            with contextlib.suppress(Exception):
                self._monitor.result(2.0)
        logging.getLogger("chinwag").removeHandler(self._log_handler)
        self.bridge.join(timeout)

    def _finish_close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._grace_timer is not None:
            with contextlib.suppress(tk.TclError):
                self.top.after_cancel(self._grace_timer)
        logging.getLogger("chinwag").removeHandler(self._log_handler)
        self.bridge.shutdown()
        with contextlib.suppress(tk.TclError):
            self.top.destroy()

    # loop thread -> here (posted)

    def _node_started(self, settings: Settings) -> None:
        if self._closing:
            return
        embedded = "" if self.redis_url else f" (embedded Redis at {settings.redis_url})"
        self.local_node = settings.node_id
        self._ran = True
        if self.server_state == "starting":
            self._set_server_state("running", f"Server running on {self.node_url}{embedded}")
        self._log("info", f"Server running on {self.node_url}, gateway {settings.node_id}")

    def _node_ended(self, fut: concurrent.futures.Future[None]) -> None:
        self._node = None
        self._stop = None
        self.local_node = None
        if self._closing:
            self._finish_close()
            return
        ran, self._ran = self._ran, False
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None:
            why = error_text(exc)
            if isinstance(exc, OSError) and exc.errno in _PORT_ERRORS:
                log.warning("cannot run the chat server on %s: %s", self.node_url, why)  # no traceback
            else:
                log.error("chat server failed", exc_info=exc)
            if ran:
                self._log("warning", f"Server stopped: {why}")
                self._set_server_state("stopped", f"Server not running: {why}")
                self._error("Server Error", f"The chat server on {self.node_url} stopped:\n\n{why}")
            else:
                self._log("warning", f"Server not started: {why}")
                self._set_server_state("stopped", f"Server not started: {why}")
                hint = "\n\nChoose another port, or stop the program using it." if _in_use(exc) else ""
                self._error("Server Not Started", f"The chat server could not start on {self.node_url}:"
                                                  f"\n\n{why}.{hint}")
        else:
            self._log("info", "Server stopped")
            self._set_server_state("stopped", "Server stopped. Press Run Server to start it again.")
        if not self.redis_url:
            self._show_gateways([], None)

    def _monitor_note(self, level: str, text: str) -> None:
        if not self._closing:
            self._log(level, text)

    def _presence(self, when: str, user: str, status: str, node: str | None) -> None:
        if self._closing:
            return
        verb = "connected" if status == "online" else "disconnected"
        self._log_line(when, [(user, status), (f" {verb}", "info")]
                       + ([(f"  (gateway {node})", "detail")] if node else []))

    def _show_gateways(self, rows: list[GatewayRow], online: int | None) -> None:
        if self._closing:
            return
        local = self.local_node
        tree = self.gateway_tree
        wanted = {row.node for row in rows}
        for iid in tree.get_children():
            if iid not in wanted:
                tree.delete(iid)
        for index, row in enumerate(rows):
            name = f"{row.node}  (this server)" if row.node == local else row.node
            lease = f"{row.lease_left:.0f} s" if row.lease_left > 0 else "expired"
            shown = ", ".join(row.names) if len(row.names) == row.users else f"{', '.join(row.names)}, \u2026"
            values = (name, str(row.users), shown if row.names else "", lease)
            tags = ("local",) if row.node == local else ()
            if tree.exists(row.node):
                tree.item(row.node, values=values, tags=tags)
                tree.move(row.node, "", index)
            else:
                tree.insert("", index, iid=row.node, values=values, tags=tags)
        if online is None:
            self.online_var.set("")
        else:
            gws = len(rows)
            self.online_var.set(f"{online} online \u00b7 {gws} gateway{'s' if gws != 1 else ''}")

    # -- monitor ------------------------------------------------------------------------------

    def _start_monitor(self, redis_url: str) -> None:
        self._monitor_finish = asyncio.Event()
        self._monitor = self.bridge.submit(
            _monitor(redis_url, self._monitor_finish, self.bridge.post, self),
            done=self._monitor_ended,
        )

    def _monitor_ended(self, fut: concurrent.futures.Future[None]) -> None:
        self._monitor = None
        if not fut.cancelled() and fut.exception() is not None:
            log.error("cluster monitor failed", exc_info=fut.exception())
            self._monitor_note("warning", f"Monitoring stopped: {error_text(fut.exception())}")

    # -- status and log -----------------------------------------------------------------------

    def _set_server_state(self, state: ServerState, message: str) -> None:
        self.server_state = state
        self.status_var.set(message)
        colour = {"running": "connected", "starting": "connecting", "stopping": "connecting"}.get(
            state, "disconnected")
        self.state_dot.configure(foreground=STATE_FG[colour])
        self.run_button.configure(state="normal" if state == "stopped" else "disabled")
        self.stop_button.configure(state="normal" if state in ("starting", "running") else "disabled")
        entry_state = "normal" if state == "stopped" else "disabled"
        self.host_entry.configure(state=entry_state)
        self.port_entry.configure(state=entry_state)

    def _log(self, level: str, text: str) -> None:
        self._log_line(_clock(), [(text, level)])

    def _log_line(self, when: str, parts: list[tuple[str, str]]) -> None:
        widget = self.log_text
        widget.configure(state="normal")
        widget.insert("end", f"{when}  ", ("time",))
        for text, tag in parts:
            widget.insert("end", text, (tag,))
        widget.insert("end", "\n")
        lines = int(widget.index("end-1c").split(".")[0])
        if lines > LOG_LIMIT:
            widget.delete("1.0", f"{lines - LOG_LIMIT}.0")
        widget.configure(state="disabled")
        self.log_follow.follow()

    def _error(self, title: str, text: str) -> None:
        """An error dialog, shown after the current callback so the queue keeps draining."""
        log.info("dialog %s: %s", title, text.replace("\n", " "))

        def pop_up() -> None:
            if not self._closing:
                messagebox.showerror(title, text, parent=self.top)

        self.top.after(0, pop_up)


# -- program ---------------------------------------------------------------------------------


def build_parser(defaults: Settings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chinwag-admin",
        description="Chinwag server window: run the single-node server, or watch a cluster's gateways and log.",
        epilog="Other node settings (CHINWAG_LEASE_TTL, CHINWAG_ARGON2_*, ...) are read from the environment "
               "as chinwag-server reads them.",
    )
    parser.add_argument("--host", default=defaults.host, help=f"IP address to listen on (default {defaults.host})")
    parser.add_argument("--port", type=int, default=defaults.port, help=f"port (default {defaults.port})")
    parser.add_argument("--redis-url", metavar="URL",
                        help="attach to this cluster's Redis (redis://…, or redis+cluster://host:port[,host:port…] "
                             "for a Redis Cluster) instead of running an embedded one")
    parser.add_argument("--data-dir", default=defaults.data_dir,
                        help=f"where the embedded Redis keeps its data (default {defaults.data_dir})")
    parser.add_argument("--run", action="store_true", help="press Run Server at start")
    return parser


def main(argv: list[str] | None = None) -> None:
    base = Settings.from_args("server", [], prog="chinwag-admin").with_(redis_url=None)
    parser = build_parser(base)
    args = parser.parse_args(argv)
    if args.redis_url and is_cluster_url(args.redis_url):
        try:  # a malformed cluster URL is named at start, not by the first command
            parse_cluster_url(args.redis_url)
        except ValueError as exc:
            parser.error(f"--redis-url: {exc}")
    setup_logging(base.log_level, base.log_json)
    try:
        root = tk.Tk(className="ChinwagAdmin")
    except tk.TclError as exc:
        print(f"chinwag-admin: cannot open a window ({exc}); is DISPLAY set?", file=sys.stderr)
        raise SystemExit(1) from None
    root.report_callback_exception = report_callback_exception
    settings = base.with_(host=args.host, port=args.port, data_dir=args.data_dir)
    app = AdminWindow(root, settings=settings, redis_url=args.redis_url)
    if args.run:
        root.after_idle(app.run_server)
    try:
        run_mainloop(root)
    finally:
        app.shutdown(settings.shutdown_timeout + 10)


if __name__ == "__main__":
    main()
