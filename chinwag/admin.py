"""``chinwag-admin``: the server window (Tk) — run a single node, or watch a whole cluster.

    chinwag-admin                                  # run the embedded single node from the window
    chinwag-admin --redis-url redis://10.0.0.5/0   # watch an existing cluster

Like the original server window it has an IP address to bind to, a port
(default 9000), Run Server and Stop Server buttons, and a log of clients
connecting and disconnecting with their times.  Run Server starts the same
node as ``chinwag-server`` (gateway + presence reaper via
:func:`chinwag.server.serve`) on an asyncio loop in a background thread, with
its own embedded Redis, so the window stays responsive and knows the Redis
URL to watch.

The log and the gateway table come from Redis itself, not from the local
gateway: the window subscribes to the presence channel (every login and
logout on every gateway) and polls the gateway leases and their user sets
about once a second.  So the same view works for a remote cluster: with
``--redis-url`` the window attaches to that Redis and shows every gateway
with its user count and the whole cluster's connect/disconnect log (Run
Server then adds one more node to that cluster).

Threads follow :mod:`client.bridge`: network and server work run on the
bridge's loop thread; widgets are touched only by callables it posts back.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import json
import logging
import socket
import sys
import tkinter as tk
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from tkinter import messagebox, ttk
from typing import Any, Literal

from redis.exceptions import RedisError

from chinwag.server import serve
from client.bridge import Bridge
from client.gui import BG, MUTED_FG, PANE_BG, STATE_FG, app_frame, run_mainloop
from client.tk_support import reason as _reason
from client.tk_support import report_callback_exception as _report_callback_exception
from common import keys
from common.backoff import Backoff
from common.config import Settings
from common.embedded import EmbeddedRedis
from common.logs import setup_logging
from common.redis import connect_redis, redacted_url
from presence.registry import Registry
from protocol.names import name_key

log = logging.getLogger("chinwag.admin")

REFRESH_SECONDS = 1.0  # how often the gateway table is re-read from Redis
READY_TIMEOUT = 30.0  # a node that is not ready by then is reported as failed
LOG_LIMIT = 5000  # lines kept in the log pane
NAMES_SHOWN = 20  # user names listed per gateway in the table

ServerState = Literal["stopped", "starting", "running", "stopping"]
Post = Callable[[Callable[[], None]], None]


@dataclass(frozen=True, slots=True)
class GatewayRow:
    """One gateway as the table shows it."""

    node: str
    users: int
    names: list[str]  # who is on it (name keys), when there are few enough to list
    lease_left: float  # seconds until its lease expires unless renewed


def _clock() -> str:
    return dt.datetime.now().strftime("%H:%M:%S")


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
        top = self.top
        title = "Chinwag Server" if not self.redis_url else "Chinwag Cluster"
        outer = app_frame(top, title, "860x600", (620, 420), grow_row=2)

        bar = ttk.Frame(outer, style="App.TFrame")
        bar.grid(row=0, column=0, sticky="ew", pady=(0, 10))
        self.host_var = tk.StringVar(top, self.settings.host)
        self.port_var = tk.StringVar(top, str(self.settings.port))
        ttk.Label(bar, text="IP address", style="App.TLabel").pack(side="left")
        self.host_entry = ttk.Entry(bar, textvariable=self.host_var, width=18)
        self.host_entry.pack(side="left", padx=(6, 14))
        ttk.Label(bar, text="Port", style="App.TLabel").pack(side="left")
        self.port_entry = ttk.Entry(bar, textvariable=self.port_var, width=7)
        self.port_entry.pack(side="left", padx=(6, 14))
        self.run_button = ttk.Button(bar, text="Run Server", command=self.run_server, style="Accent.TButton")
        self.run_button.pack(side="left")
        self.stop_button = ttk.Button(bar, text="Stop Server", command=self.stop_server)
        self.stop_button.pack(side="left", padx=(8, 0))
        self.online_var = tk.StringVar(top, "")
        ttk.Label(bar, textvariable=self.online_var, style="Status.TLabel").pack(side="right")

        where = f"Cluster at {redacted_url(self.redis_url)}" if self.redis_url else "Gateways"
        gw_box = ttk.Labelframe(outer, text=where, padding=8)
        gw_box.grid(row=1, column=0, sticky="ew")
        gw_box.columnconfigure(0, weight=1)
        self.gateway_tree = ttk.Treeview(gw_box, columns=("node", "users", "names", "lease"), show="headings",
                                         height=4, selectmode="none")
        self.gateway_tree.heading("node", text="Gateway", anchor="w")
        self.gateway_tree.heading("users", text="Users", anchor="e")
        self.gateway_tree.heading("names", text="Who", anchor="w")
        self.gateway_tree.heading("lease", text="Lease expires in", anchor="e")
        self.gateway_tree.column("node", width=250, minwidth=120, anchor="w", stretch=False)
        self.gateway_tree.column("users", width=60, minwidth=50, anchor="e", stretch=False)
        self.gateway_tree.column("names", width=200, minwidth=100, anchor="w", stretch=True)
        self.gateway_tree.column("lease", width=140, minwidth=100, anchor="e", stretch=False)
        self.gateway_tree.tag_configure("local", foreground="#1a5fb4")
        self.gateway_tree.grid(row=0, column=0, sticky="ew")

        log_box = ttk.Labelframe(outer, text="Log", padding=8)
        log_box.grid(row=2, column=0, sticky="nsew", pady=(10, 0))
        log_box.columnconfigure(0, weight=1)
        log_box.rowconfigure(0, weight=1)
        self.log_text = tk.Text(log_box, height=14, wrap="word", state="disabled", font="ChinwagText",
                                background=PANE_BG, relief="flat", borderwidth=0, highlightthickness=1,
                                highlightbackground="#d0d4da", padx=10, pady=8, spacing1=2, cursor="arrow")
        scroll = ttk.Scrollbar(log_box, orient="vertical", command=self.log_text.yview)
        self.log_text.configure(yscrollcommand=scroll.set)
        self.log_text.grid(row=0, column=0, sticky="nsew")
        scroll.grid(row=0, column=1, sticky="ns")
        self.log_text.tag_configure("time", foreground=MUTED_FG, font="ChinwagSmall")
        self.log_text.tag_configure("online", foreground="#26803a", font="ChinwagName")
        self.log_text.tag_configure("offline", foreground="#b42318", font="ChinwagName")
        self.log_text.tag_configure("info", foreground="#374151")
        self.log_text.tag_configure("warning", foreground="#b7791f")
        self.log_text.tag_configure("detail", foreground=MUTED_FG, font="ChinwagSmall")

        status = ttk.Frame(top, padding=(12, 2, 12, 8), style="App.TFrame")
        status.pack(fill="x", side="bottom", before=outer)  # packed first: always keeps its line
        self.state_dot = tk.Label(status, text="\u25cf", background=BG, foreground=STATE_FG["disconnected"],
                                  font="ChinwagText")
        self.state_dot.pack(side="left")
        self.status_var = tk.StringVar(top, "")
        ttk.Label(status, textvariable=self.status_var, style="Status.TLabel").pack(side="left", padx=(4, 0))

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
        exc = None if fut.cancelled() else fut.exception()
        if exc is not None:
            log.error("chat server failed", exc_info=exc)
            reason = _reason(exc)
            self._log("warning", f"Server stopped: {reason}")
            self._set_server_state("stopped", f"Server not running: {reason}")
            self._error("Server Error", f"The chat server on {self.node_url} stopped:\n\n{reason}")
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
            self._monitor_note("warning", f"Monitoring stopped: {_reason(fut.exception())}")

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
        at_end = widget.yview()[1] >= 0.999
        widget.configure(state="normal")
        widget.insert("end", f"{when}  ", ("time",))
        for text, tag in parts:
            widget.insert("end", text, (tag,))
        widget.insert("end", "\n")
        lines = int(widget.index("end-1c").split(".")[0])
        if lines > LOG_LIMIT:
            widget.delete("1.0", f"{lines - LOG_LIMIT}.0")
        widget.configure(state="disabled")
        if at_end:
            widget.see("end")

    def _error(self, title: str, text: str) -> None:
        """An error dialog, shown after the current callback so the queue keeps draining."""
        log.info("dialog %s: %s", title, text.replace("\n", " "))

        def pop_up() -> None:
            if not self._closing:
                messagebox.showerror(title, text, parent=self.top)

        self.top.after(0, pop_up)


# -- loop thread ---------------------------------------------------------------------------


async def _run_node(settings: Settings, stop: asyncio.Event, post: Post, window: AdminWindow,
                    *, with_monitor: bool) -> None:
    """Run one node until ``stop``: embedded Redis (unless joining a cluster), gateway, reaper.

    When ``with_monitor`` the presence monitor runs inside this coroutine: it is
    subscribed before the gateway accepts anyone (so the log misses no connect,
    not even of clients that were waiting to reconnect), still sees the offline
    events the gateway publishes while stopping, and is finished before the
    embedded Redis goes away.
    """
    loop = asyncio.get_running_loop()
    before = asyncio.all_tasks()
    embedded: EmbeddedRedis | None = None
    monitor: asyncio.Task[None] | None = None
    finish = asyncio.Event()
    try:
        await _check_port_free(settings.host, settings.port)  # fail fast, before starting Redis
        if settings.redis_url is None:
            embedded = EmbeddedRedis(settings.data_dir)
            # Blocks this (background) loop briefly while redis-server starts; nothing
            # else runs here yet, and doing it inline means a cancel cannot leak it.
            settings = settings.with_(redis_url=embedded.start())
        if with_monitor:
            assert settings.redis_url is not None
            watching = asyncio.Event()
            monitor = asyncio.create_task(_monitor(settings.redis_url, finish, post, window, watching))
            with contextlib.suppress(TimeoutError):  # a slow Redis delays the log, not the server
                await asyncio.wait_for(watching.wait(), 5)
        serving = asyncio.create_task(serve(settings, stop), name="chinwag-node")
        deadline = loop.time() + READY_TIMEOUT
        while True:
            with contextlib.suppress(TimeoutError):  # give it a moment to start, or to fail
                await asyncio.wait_for(asyncio.shield(serving), 0.05)
            if serving.done():
                await serving  # raises why it stopped (e.g. the port is in use)
                return  # stopped before it was ready
            if await _ready(settings.host, settings.port):
                break
            if loop.time() > deadline:
                raise TimeoutError(f"the server was not ready within {READY_TIMEOUT:.0f} s")
        post(partial(window._node_started, settings))
        await serving
    finally:
        if monitor is not None:
            finish.set()
            try:
                await asyncio.wait_for(monitor, 5)
            except (Exception, asyncio.CancelledError):
                log.exception("monitor did not finish cleanly")
        # serve() leaves the gateway's background tasks behind when it fails to start
        # (e.g. the port is taken); cancel whatever this node started and left running.
        me = asyncio.current_task()
        leftovers = [t for t in asyncio.all_tasks() - before if t is not me and not t.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.gather(*leftovers, return_exceptions=True)
        if embedded is not None:
            post(partial(window._monitor_note, "info", "Stopping the embedded Redis"))
            # Blocking, on this background loop, with nothing else left running on it.
            embedded.stop()


async def _check_port_free(host: str, port: int) -> None:
    """Raise the OSError the server would get binding ``host:port`` (e.g. it is in use)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None


async def _ready(host: str, port: int) -> bool:
    """True once the node answers ``GET /readyz`` with 200 (listening and Redis is live)."""
    target = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(target, port), 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: chinwag\r\nConnection: close\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), 2.0)
        return status.split(b" ")[1:2] == [b"200"]
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 1.0)


async def _monitor(redis_url: str, finish: asyncio.Event, post: Post, window: AdminWindow,
                   watching: asyncio.Event | None = None) -> None:
    """Watch a Chinwag Redis until ``finish``: presence events as log lines, gateways as a table.

    Survives Redis outages (logged once each, retried with backoff); when
    ``finish`` is set it drains the presence events already sent, then ends.
    """
    loop = asyncio.get_running_loop()
    redis = connect_redis(redis_url, max_connections=4)
    registry = Registry(redis)
    holders: dict[str, str] = {}  # name key -> gateway, learnt when the user came online
    backoff = Backoff(base=0.2, cap=5.0)
    first = True
    down = False
    try:
        while not finish.is_set():
            pubsub = redis.pubsub()
            try:
                await pubsub.subscribe(keys.PRESENCE_CHANNEL)
                online = await registry.online()
                for user in online:
                    node = await registry.holder(name_key(user))
                    if node:
                        holders[name_key(user)] = node
                if first:
                    who = ", ".join(online) if online else "nobody"
                    post(partial(window._monitor_note, "info",
                                 f"Watching {redacted_url(redis_url)}: {len(online)} online ({who})"))
                elif down:
                    post(partial(window._monitor_note, "info", "Redis connection restored"))
                first = down = False
                backoff.reset()
                if watching is not None:
                    watching.set()
                next_poll = 0.0
                while True:
                    if loop.time() >= next_poll:
                        rows, count = await _gateways(registry)
                        post(partial(window._show_gateways, rows, count))
                        next_poll = loop.time() + REFRESH_SECONDS
                    if finish.is_set():
                        break
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                    if message is not None:
                        await _on_presence(message, registry, holders, post, window)
                # Finishing: what was published before now is already on its way; show it.
                while (message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.3)) is not None:
                    await _on_presence(message, registry, holders, post, window)
            except (RedisError, OSError, TimeoutError) as exc:
                if not down:
                    post(partial(window._monitor_note, "warning",
                                 f"Lost the Redis connection ({type(exc).__name__}); retrying"))
                    down = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finish.wait(), backoff.next_delay())
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    finally:
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await redis.aclose()


async def _on_presence(message: dict[str, Any], registry: Registry, holders: dict[str, str], post: Post,
                       window: AdminWindow) -> None:
    when = _clock()
    try:
        event = json.loads(message["data"])
        user, status = str(event["user"]), str(event["status"])
    except (ValueError, KeyError, TypeError):
        log.warning("unreadable presence event: %.200r", message.get("data"))
        return
    key = name_key(user)
    if status == "online":
        node = await registry.holder(key)
        if node:
            holders[key] = node
    else:
        node = holders.pop(key, None)
    post(partial(window._presence, when, user, status, node))


async def _gateways(registry: Registry) -> tuple[list[GatewayRow], int]:
    redis = registry.redis
    leases = await registry.gateways()
    seconds, micros = await redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    rows = []
    for node in sorted(leases):
        users = int(await redis.scard(keys.gateway_users(node)))
        names: list[str] = []
        if users:  # a page of names is plenty for a glance; SSCAN keeps big gateways cheap
            _, page = await redis.sscan(keys.gateway_users(node), 0, count=NAMES_SHOWN)
            names = sorted(n.decode() if isinstance(n, bytes) else str(n) for n in page)[:NAMES_SHOWN]
        rows.append(GatewayRow(node, users, names, (leases[node] - now_ms) / 1000))
    online = int(await redis.zcard(keys.ONLINE))
    return rows, online


class _WindowLogHandler(logging.Handler):
    """Warnings from the in-process server (``chinwag.*`` loggers) also go to the log pane."""

    def __init__(self, post: Post, window: AdminWindow) -> None:
        super().__init__(logging.WARNING)
        self._post = post
        self._window = window

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:
            return
        if record.name == log.name:
            return  # the window's own messages are already in the pane
        self._post(partial(self._window._monitor_note, "warning", f"{record.levelname.lower()}: {text}"))


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
                        help="attach to this cluster's Redis instead of running an embedded one")
    parser.add_argument("--data-dir", default=defaults.data_dir,
                        help=f"where the embedded Redis keeps its data (default {defaults.data_dir})")
    parser.add_argument("--run", action="store_true", help="press Run Server at start")
    return parser


def main(argv: list[str] | None = None) -> None:
    base = Settings.from_args("server", [], prog="chinwag-admin").with_(redis_url=None)
    args = build_parser(base).parse_args(argv)
    setup_logging(base.log_level, base.log_json)
    try:
        root = tk.Tk(className="ChinwagAdmin")
    except tk.TclError as exc:
        print(f"chinwag-admin: cannot open a window ({exc}); is DISPLAY set?", file=sys.stderr)
        raise SystemExit(1) from None
    root.report_callback_exception = _report_callback_exception
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
