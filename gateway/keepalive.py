"""Keepalive and slow consumers: one task pings every socket, one sweep finds the sockets
that stopped reading, and :func:`cut_off` ends either kind.

websockets' own keepalive is a task per connection, a kilobyte or more each; this is
one task and one future per connection between sweeps.  ``Gateway`` (server.py) owns
the sockets and tells these what to look at.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from common.runtime import end_if_cancelled, retrieve
from protocol.errors import CloseCode

from .client_ip import peer
from .session import Session

log = logging.getLogger("chinwag.gateway")

Spawn = Callable[[Awaitable[Any], str], "asyncio.Task[Any]"]


async def keepalive(interval: float, connections: Callable[[], Iterable[ServerConnection]], spawn: Spawn) -> None:
    """Ping every open socket each ``interval``; close those whose last ping went unanswered,
    and those whose writes stayed backed up for a whole interval (a ping would wait behind them)."""
    waiting: dict[ServerConnection, asyncio.Future[float]] = {}
    backed_up: set[ServerConnection] = set()

    def drop(ws: ServerConnection, what: str) -> None:  # what: a format of (peer, interval)
        log.info(what + "; closing", peer(ws), interval)
        spawn(cut_off(ws, CloseCode.INTERNAL_ERROR, "keepalive ping timeout"), "cut-off")

    while True:
        end_if_cancelled()  # a ping's write can swallow a cancel, as redis-py's wait_for does
        await asyncio.sleep(interval)
        for ws, pong in waiting.items():
            if not pong.done() and ws.state is State.OPEN:
                drop(ws, "no pong from %s within %.0fs")
        waiting.clear()
        was_backed_up, backed_up = backed_up, set()
        for ws in connections():
            if ws.paused:  # its writes are backed up: a ping would wait behind them
                if ws in was_backed_up:
                    drop(ws, "%s has not read for %.0fs")
                else:
                    backed_up.add(ws)
                continue
            try:
                pong = cast("asyncio.Future[float]", await ws.ping())
            except ConnectionClosed:
                continue
            pong.add_done_callback(retrieve)  # a pong that never came fails when its socket goes
            waiting[ws] = pong


async def sweep_buffers(limit: int, sessions: Callable[[], Iterable[Session]], on_slow: Callable[[Session], None],
                        every: float = 0.5) -> None:
    """Catch clients that only receive fan-out frames (never checked per write) and stopped reading."""
    while True:
        end_if_cancelled()
        await asyncio.sleep(every)
        for session in list(sessions()):
            transport = session.ws.transport
            if transport is not None and transport.get_write_buffer_size() > limit:
                on_slow(session)


async def cut_off(ws: ServerConnection, code: int = CloseCode.SLOW_CONSUMER, reason: str = "slow consumer") -> None:
    """Close with ``code`` if the peer still reads at all, else drop it: its backlog is not ours to keep."""
    try:
        await asyncio.wait_for(ws.close(code, reason), 2)
    except TimeoutError:
        pass
    finally:
        if ws.transport is not None:
            ws.transport.abort()
