"""Who gets what is fanned out to every socket: the live set and presence.

A frame that goes to many sockets (a broadcast, a presence change) is serialised
once, framed once (``connection.write_text``) and written to a set kept here,
so each event costs one encode however many clients there are.  ``live`` holds every
logged-in socket past its replay (broadcasts go there); presence goes to the
sockets that asked for it (``login.presence``): ``each`` gets every event as it
comes, ``batched`` one ``presence_batch`` per window, however busy logins are.
The window is ``presence_batch`` seconds, stretched when there are so many
``batched`` sockets that one frame each per window would pass
``presence_batch_writes`` writes a second: during a storm of 10,000 logins the
flushes took a third of the event loop and grew with every login, so the
logins slowed the more of them were in (docs/benchmarks.md).
Sessions still joining (``joining``) hold what arrives until their replay is
written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection

import msgspec
from websockets.asyncio.server import ServerConnection

from common.metrics import Counter
from protocol import frames as f

from .connection import write_text
from .session import Session

log = logging.getLogger("chinwag.gateway")

_presence_decoder = msgspec.json.Decoder(f.Presence)


def batch_window(seconds: float, sockets: int, writes: float) -> float:
    """``seconds``, or longer if one ``presence_batch`` to each of ``sockets`` per window would
    be more than ``writes`` frames a second (``writes`` 0: never longer)."""
    if writes <= 0:
        return seconds
    return max(seconds, sockets / writes)


class Fanout:
    """The sets frames are fanned out to, and presence delivery (each or batched)."""

    def __init__(self, batch_seconds: float, joining: Callable[[], Collection[Session]], out: Counter,
                 batch_writes: float = 0.0) -> None:
        self.batch_seconds = batch_seconds
        self.batch_writes = batch_writes  # presence_batch frames per second at most (0: no limit)
        self._joining = joining
        self._out = out
        self.live: set[ServerConnection] = set()  # logged in and past replay: broadcasts go here
        self.presence_each: set[ServerConnection] = set()  # live, login.presence "each"
        self.presence_batched: set[ServerConnection] = set()  # live, login.presence "batched"
        self._pending: dict[str, str] = {}  # user -> latest status, for the next presence_batch
        self._timer: asyncio.TimerHandle | None = None

    def add(self, session: Session) -> None:
        """The session's replay is written: live frames go straight to its socket from now on."""
        self.live.add(session.ws)
        if session.presence == f.PRESENCE_EACH:
            self.presence_each.add(session.ws)
        elif session.presence == f.PRESENCE_BATCHED:
            self.presence_batched.add(session.ws)

    def drop(self, ws: ServerConnection) -> None:
        self.live.discard(ws)
        self.presence_each.discard(ws)
        self.presence_batched.discard(ws)
        if not self.presence_batched:
            # Nobody is left to get the window's batch, and while nobody is, events are not recorded in it
            # (on_presence): kept, an older status would be flushed to the next batched session after newer
            # events for that user it got held at login (soak seed 7000: a reaper's ``offline u5`` pending
            # since before u5's new login on this gateway reached u5 after that login's own ``online u5``,
            # and u5 saw itself offline for good).  Cleared, every status a batch carries is the latest
            # event this gateway received for that user.
            self._pending.clear()

    def broadcast(self, frame: bytes) -> int:
        """Write ``frame`` to every live socket; how many."""
        write_text(self.live, frame)
        return len(self.live)

    def on_presence(self, frame: bytes) -> None:
        """A presence event from Redis (the presence channel's handler)."""
        if self.presence_each:
            write_text(self.presence_each, frame)
            self._out.inc("presence", amount=len(self.presence_each))
        if self.presence_batched:
            try:
                event = _presence_decoder.decode(frame)
            except msgspec.DecodeError:
                log.error("unreadable presence event %r", frame[:200])
            else:
                self._pending[event.user] = event.status  # the latest status wins
                if self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(self.window(), self.flush)
        for session in self._joining():
            if session.presence != f.PRESENCE_OFF:
                session.hold(frame)

    def window(self) -> float:
        """Seconds until the next ``presence_batch`` (:func:`batch_window`)."""
        return batch_window(self.batch_seconds, len(self.presence_batched), self.batch_writes)

    def flush(self) -> None:
        """Send the window's changes as one ``presence_batch``."""
        self._timer = None
        pending, self._pending = self._pending, {}
        if not pending or not self.presence_batched:
            return
        batch = f.PresenceBatch(
            online=[user for user, status in pending.items() if status == "online"],
            offline=[user for user, status in pending.items() if status != "online"],
        )
        write_text(self.presence_batched, f.encode(batch))
        self._out.inc("presence_batch", amount=len(self.presence_batched))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
