"""The loop-thread half of ``chinwag-admin``: running a node, watching Redis, port checks.

Everything here runs on the admin window's :class:`client.bridge.Bridge` loop
and reaches the window only through ``post`` (callables the Tk thread runs),
as :mod:`client.bridge` prescribes.  Split from :mod:`chinwag.admin`, which is
the window itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import errno
import json
import logging
import socket
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from chinwag.admin_feed import FeedNote, presence_feed
from chinwag.migrate import run as migrate_run
from chinwag.server import serve
from common import keys
from common.backoff import Backoff
from common.config import Settings
from common.embedded import EmbeddedRedis
from common.redis import connect_any, redacted_url
from common.runtime import cancel_and_wait, end_if_cancelled
from common.sharded_pubsub import CLUSTER_ERRORS
from presence.registry import Registry, held_key
from protocol.names import name_key

if TYPE_CHECKING:
    from chinwag.admin import AdminWindow

log = logging.getLogger("chinwag.admin")

REFRESH_SECONDS = 1.0  # how often the gateway table is re-read from Redis
READY_TIMEOUT = 30.0  # a node that is not ready by then is reported as failed
NAMES_SHOWN = 20  # user names listed per gateway in the table

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
    _IN_NODE.set(True)  # in this task's own context: what it starts, and what those start, is the node's
    made = _track_node_tasks(loop)
    embedded: EmbeddedRedis | None = None
    monitor: asyncio.Task[None] | None = None
    finish = asyncio.Event()
    try:
        await _check_port_free(settings.host, settings.port)  # fail fast, before starting Redis
        if settings.redis_url is None:
            embedded = EmbeddedRedis(settings.data_dir)
            # Blocks this (background) loop briefly while redis-server starts; nothing
            # else runs here yet, and doing it inline means a cancel cannot leak it.
            url = embedded.start()
            settings = settings.with_(redis_url=url)
            # Its own Redis: the previous release's data is migrated in place, as chinwag-server does.
            if await migrate_run(url, log.info, only_if_old=True) != 0:
                raise RuntimeError("the previous release's data could not be migrated: run chinwag-migrate "
                                   f"--redis-url {url} to see why")
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
        # (e.g. the port is taken); cancel whatever this node started and left running.  Only the node's:
        # a window attached to a cluster runs its monitor on this loop too, and its tasks (a sharded
        # subscriber's link readers, opened again after a failover) must outlive the node.
        _untrack_node_tasks(loop)
        me = asyncio.current_task()
        leftovers = [t for t in list(made) if t is not me and not t.done()]
        await cancel_and_wait(leftovers)  # bounded: one that swallows its cancels is reported, not waited on
        if embedded is not None:
            post(partial(window._monitor_note, "info", "Stopping the embedded Redis"))
            # Blocking, on this background loop, with nothing else left running on it.
            embedded.stop()


# Set (True) in a node's task only; the tasks it creates inherit their creator's context, so the
# tracking task factory below can tell the node's tasks from the monitor's on the same loop.
_IN_NODE: contextvars.ContextVar[bool] = contextvars.ContextVar("chinwag_admin_in_node", default=False)


def _track_node_tasks(loop: asyncio.AbstractEventLoop) -> weakref.WeakSet[asyncio.Task[Any]]:
    """Record every task created on ``loop`` in a context where ``_IN_NODE`` is set, until untracked.

    Python 3.11 cannot tell a task's context afterwards (``Task.get_context`` is 3.12), so
    the loop's task factory looks at the creator's context when the task is made.
    """
    made: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Future[Any]:
        task = previous(loop, coro, **kwargs) if previous is not None else asyncio.Task(coro, loop=loop, **kwargs)
        if _IN_NODE.get() and isinstance(task, asyncio.Task):
            made.add(task)
        return task

    factory.previous = previous  # type: ignore[attr-defined]  # restored by _untrack_node_tasks
    loop.set_task_factory(factory)
    return made


def _untrack_node_tasks(loop: asyncio.AbstractEventLoop) -> None:
    factory = loop.get_task_factory()
    loop.set_task_factory(getattr(factory, "previous", None))


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
            raise PortUnavailable(exc.errno, _port_problem(exc.errno, host, port, exc.strerror)) from None


_PORT_ERRORS = frozenset((errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL))


class PortUnavailable(OSError):
    """The node cannot listen on its address; reads as a sentence (no ``[Errno 98]``)."""

    def __str__(self) -> str:
        return str(self.strerror)


def _port_problem(code: int | None, host: str, port: int, strerror: str | None) -> str:
    if code == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use by another program"
    if code == errno.EACCES:
        return f"listening on port {port} needs more privileges (use a port above 1023)"
    if code == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine"
    return f"cannot listen on {host}:{port}: {strerror or 'unknown error'}"


def _in_use(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE


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
    """Watch a Chinwag Redis or Redis Cluster until ``finish``: presence events as log lines, gateways as a table.

    Follows every presence partition (chinwag.admin_feed: plain channels on one
    Redis, sharded ones on a cluster).  Survives Redis outages (logged once
    each, retried with backoff); when ``finish`` is set it drains the presence
    events already sent, then ends.
    """
    loop = asyncio.get_running_loop()
    redis = connect_any(redis_url, max_connections=4)
    registry = Registry(redis)
    feed = presence_feed(redis)
    holders: dict[str, str] = {}  # name key -> gateway, learnt when the user came online
    backoff = Backoff(base=0.2, cap=5.0)
    first = True
    down = False
    try:
        while not finish.is_set():
            end_if_cancelled()  # redis-py's wait_for may have swallowed a cancel during the last turn
            try:
                await feed.open()  # subscribed before the index is read: no change falls between the two
                online = await _learn_holders(registry, holders)
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
                    end_if_cancelled()
                    if loop.time() >= next_poll:
                        rows, count = await _gateways(registry)
                        post(partial(window._show_gateways, rows, count))
                        next_poll = loop.time() + REFRESH_SECONDS
                    if finish.is_set():
                        break
                    item = await feed.get(0.2)
                    if item is not None:
                        await _on_item(item, registry, holders, post, window)
                # Finishing: what was published before now is already on its way; show it.
                while (item := await feed.get(0.3)) is not None:
                    await _on_item(item, registry, holders, post, window)
            except CLUSTER_ERRORS as exc:
                if not down:
                    post(partial(window._monitor_note, "warning",
                                 f"Lost the Redis connection ({type(exc).__name__}); retrying"))
                    down = True
                await feed.reset()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finish.wait(), backoff.next_delay())
    finally:
        with contextlib.suppress(*CLUSTER_ERRORS):
            await feed.close()
        with contextlib.suppress(*CLUSTER_ERRORS):
            await redis.aclose()


async def _learn_holders(registry: Registry, holders: dict[str, str]) -> list[str]:
    """Everyone online now, and (into ``holders``) the gateway each one is on."""
    online = await registry.online()
    for user in online:
        node = await registry.holder(name_key(user))
        if node:
            holders[name_key(user)] = node
    return online


async def _on_item(item: bytes | FeedNote, registry: Registry, holders: dict[str, str], post: Post,
                   window: AdminWindow) -> None:
    if isinstance(item, FeedNote):
        post(partial(window._monitor_note, item.level, item.text))
        if item.resync:
            await _learn_holders(registry, holders)
    else:
        await _on_presence(item, registry, holders, post, window)


async def _on_presence(data: bytes, registry: Registry, holders: dict[str, str], post: Post,
                       window: AdminWindow) -> None:
    when = _clock()
    try:
        event = json.loads(data)
        user, status = str(event["user"]), str(event["status"])
    except (ValueError, KeyError, TypeError):
        log.warning("unreadable presence event: %.200r", data)
        return
    key = name_key(user)
    if status == "online":
        node = await registry.holder(key)
        if node:
            holders[key] = node
    else:
        node = holders.pop(key, None)
    post(partial(window._presence, when, user, status, node))


# Redis's clock where the leases are (the {reg} slot's master: lease expiries are its TIME plus the TTL).
# A script routes by its key on a cluster, following the slot through a failover; TIME alone would go to
# whichever node redis-py calls its default.
_REG_TIME = "return redis.call('TIME')"


async def _gateways(registry: Registry) -> tuple[list[GatewayRow], int]:
    redis = registry.redis
    leases = await registry.gateways()
    seconds, micros = await redis.eval(_REG_TIME, 1, keys.GATEWAYS)
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    rows = []
    for node in sorted(leases):
        users = int(await redis.scard(keys.gateway_users(node)))
        names: list[str] = []
        if users:  # a page of names is plenty for a glance; SSCAN keeps big gateways cheap
            _, page = await redis.sscan(keys.gateway_users(node), 0, count=NAMES_SHOWN)
            names = sorted(held_key(n.decode() if isinstance(n, bytes) else str(n)) for n in page)[:NAMES_SHOWN]
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
