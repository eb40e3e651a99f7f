"""One logged-in connection: its identity and the single path frames take to its socket.

Every frame for a client, whether a reply, a live message or a replayed one,
goes through :meth:`Session.push`, which writes synchronously with
``connection.write_text`` (no await, so the router can deliver from
``data_received``) and cuts off a client whose unsent bytes pass the bound.

While a session is *holding* (just claimed and its inbox not yet replayed, or
catching up after the gateway lost its Redis subscriptions), live frames wait
in ``early`` and are released after the replay.  DMs and broadcasts only ever
go out in id order: one whose id is not above the last of its kind already
sent is a duplicate of a replayed one and is dropped, so the client sees no gap
and no duplicate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection

from common.metrics import Counter
from protocol import frames as f
from protocol.frames import frame_id

from .connection import set_write_bound, write_text

log = logging.getLogger("chinwag.session")

_DM, _BROADCAST, _OTHER, _GROUP = 0, 1, 2, 3  # kinds of held frames
_GROUP_EVENT = f.encode(f.GroupEvent(group="", event="", user="")).partition(b",")[0] + b","


class Session:
    __slots__ = (
        "cursors_dirty",
        "early",
        "groups",
        "holding",
        "key",
        "last_broadcast",
        "last_dm",
        "last_group",
        "limited",
        "max_buffer",
        "name",
        "name_json",
        "on_slow",
        "out",
        "presence",
        "token",
        "token_hash",
        "ws",
    )

    def __init__(
        self,
        ws: ServerConnection,
        key: str,
        name: str,
        token: str,
        token_hash: str,
        max_buffer: int,
        on_slow: Callable[[Session], None],
        out: Counter | None = None,
        presence: str = "each",
    ) -> None:
        self.ws = ws
        self.key = key
        self.name = name
        self.name_json = b'"' + name.encode() + b'"'  # names never need JSON escaping
        self.token = token
        self.token_hash = token_hash
        self.max_buffer = max_buffer
        set_write_bound(ws, max_buffer)  # from the small pre-login bound to a session's
        self.on_slow = on_slow
        self.out = out or Counter("chinwag_messages_out_total", "", ("kind",))
        self.presence = presence  # login.presence: "each", "batched" or "off"
        self.holding = True
        self.limited = 0  # rate_limited answers in a row
        self.early: list[tuple[int, bytes, str]] = []  # (kind, frame, group key) held back
        self.last_dm = (0, 0)  # id of the last DM written to the socket
        self.last_broadcast = (0, 0)  # id of the last broadcast written while not yet live
        self.groups: dict[str, str] = {}  # group key -> display name, for groups this session is in
        self.last_group: dict[str, tuple[int, int]] = {}  # group key -> id of the last message written
        self.cursors_dirty = False  # last_group moved since the gateway last saved it to Redis

    def push(self, frame: bytes) -> None:
        """Write one frame now; flag the session as a slow consumer if it is not reading.

        Framed by :func:`~gateway.connection.write_text` (as ``websockets.broadcast`` would, for
        less): this runs for every frame a client gets."""
        ws = self.ws
        write_text((ws,), frame)
        transport = ws.transport
        if transport is not None and transport.get_write_buffer_size() > self.max_buffer:
            self.on_slow(self)

    def deliver_dm(self, frame: bytes) -> None:
        """Router handler for this user's channel: live DMs, and notices for this user alone (an
        invitation to a group: gateway/groups.py), which are not DMs and are written as they come."""
        if frame.startswith(_GROUP_EVENT):
            if self.holding:
                self.hold(frame)
            else:
                self.push(frame)
            return
        if self.holding:
            self.early.append((_DM, frame, ""))
        else:
            self.push_dm(frame)

    def push_dm(self, frame: bytes) -> None:
        """Write a DM unless one with this id or a later one was already written."""
        mid = frame_id(frame)
        if mid > self.last_dm:
            self.last_dm = mid
            self.out.inc("dm")
            self.push(frame)

    async def replay_dm(self, frame: bytes) -> None:
        """A DM from a stream replay: id-checked like live ones, but written with backpressure,
        so catching up on a long absence waits for the client instead of looking like a slow consumer."""
        mid = frame_id(frame)
        if mid > self.last_dm:
            self.last_dm = mid
            self.out.inc("dm")
            await self._send_paced(frame)

    async def replay_broadcast(self, frame: bytes) -> None:
        mid = frame_id(frame)
        if mid > self.last_broadcast:
            self.last_broadcast = mid
            self.out.inc("broadcast")
            await self._send_paced(frame)

    async def _send_paced(self, frame: bytes) -> None:
        transport = self.ws.transport
        if transport is not None and transport.get_write_buffer_size() > self.max_buffer // 2:
            await self.ws.send(frame, text=True)  # waits for the buffer to drain below its limit
        else:
            write_text((self.ws,), frame)

    def deliver_group(self, gkey: str, frame: bytes) -> None:
        """A group message from the group's channel (held while holding)."""
        if self.holding:
            self.early.append((_GROUP, frame, gkey))
        else:
            self.push_group(gkey, frame)

    def push_group(self, gkey: str, frame: bytes) -> None:
        """Write a group message if this session is (still) a member and has not had it.

        ``groups`` holds only memberships Redis has confirmed, and ``last_group``
        starts at the membership's first position, so a message stored before
        the join, or after a leave or removal, never gets through here."""
        if gkey not in self.groups:
            return  # left or removed meanwhile
        mid = frame_id(frame)
        if mid > self.last_group.get(gkey, (0, 0)):
            self.last_group[gkey] = mid
            self.cursors_dirty = True
            self.out.inc("group")
            self.push(frame)

    async def replay_group(self, gkey: str, frame: bytes, member: bool = False) -> None:
        """A group message from a replay (``member``: Redis says the user is a member even if this
        session has already stopped live delivery of the group, as a leave in progress does)."""
        mid = frame_id(frame)
        if (member or gkey in self.groups) and mid > self.last_group.get(gkey, (0, 0)):
            self.last_group[gkey] = mid
            self.cursors_dirty = True
            self.out.inc("group")
            await self._send_paced(frame)

    def push_broadcast(self, frame: bytes) -> None:
        """Write a replayed or held broadcast unless already written (live ones skip this check)."""
        mid = frame_id(frame)
        if mid > self.last_broadcast:
            self.last_broadcast = mid
            self.out.inc("broadcast")
            self.push(frame)

    def hold(self, frame: bytes) -> None:
        """A presence (or other unordered) frame that arrived while holding."""
        self.early.append((_OTHER, frame, ""))

    def hold_broadcast(self, frame: bytes) -> None:
        self.early.append((_BROADCAST, frame, ""))

    def start_holding(self) -> None:
        self.holding = True

    def go_live(self) -> None:
        """Release held frames in arrival order, dropping DMs already delivered."""
        held, self.early = self.early, []
        self.holding = False
        for kind, frame, gkey in held:
            if kind == _DM:
                self.push_dm(frame)
            elif kind == _BROADCAST:
                self.push_broadcast(frame)
            elif kind == _GROUP:
                self.push_group(gkey, frame)
            else:
                self.push(frame)

    @property
    def last_dm_id(self) -> str:
        return f"{self.last_dm[0]}-{self.last_dm[1]}"
