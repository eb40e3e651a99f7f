"""A WebSocket connection that cannot make the gateway buffer or answer without bound.

websockets answers every ping from ``data_received``: the pong goes straight
into the transport's write buffer, whatever the peer does with it.  A peer that
streams pings and never reads grew a gateway by hundreds of MiB within seconds
(before login or after), and parsing the pings starved every other socket.
``Session.push`` bounds the frames the gateway itself writes; this class bounds
what the peer makes websockets write and parse:

* **Write bound.**  After each piece of incoming data is processed (when
  websockets writes pongs, and the only way a peer can make the gateway answer
  before login), unsent bytes above the bound abort the TCP connection at once.
  No close frame: it would queue behind the bytes the peer is not reading.  The
  bound is small until login (``login_write_buffer``; nothing a client is sent
  before login is large) and ``max_write_buffer`` once a session exists
  (:func:`set_write_bound`).
* **Control frames.**  Pings and pongs spend tokens of a per-connection bucket
  (``control_frames`` a second, bursts of 10x); an empty bucket aborts too.
  Honest peers send one every few seconds at most.  Without it a peer whose
  pongs the kernel can still absorb (4 MiB of 2-byte pongs is two million
  pings) costs seconds of CPU before the write bound notices.
* Incoming data is processed in slices of 16 KiB, so either check stops an
  abusive peer after a few thousand frames, not after a whole 256 KiB read.

Replies produced by one slice go to the transport as one buffer.  The
transport keeps every write as an object of its own, so a flood of empty pings
(a 2-byte pong each) would otherwise cost some 20 times the bytes counted.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast

from websockets.asyncio.connection import broadcast
from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import OPEN, Event

from .client_ip import NOBODY, ClientAddressConnection, TrustedProxies
from .handshake import GetOnlyConnection

# Told (connection, reason, detail) when a connection is aborted; reason is "write_bound" or "control_frames".
Overflow = Callable[[ServerConnection, str, str], None]

SLICE = 16 * 1024  # bytes of incoming data processed between two checks
_CONTROL = (Opcode.PING, Opcode.PONG)


class FrameQueue(list[Frame]):
    """The deque methods websockets' receive queue uses (``SimpleQueue.queue``), on a list.

    The queue holds at most ``max_queue`` frames (16) and is empty on an idle socket, where
    a deque's first block is 700 bytes of every connection's memory.
    """

    __slots__ = ()

    def popleft(self) -> Frame:
        return self.pop(0)

    def extendleft(self, frames: Iterable[Frame]) -> None:
        for frame in frames:  # one at a time to the front, as deque.extendleft does
            self.insert(0, frame)


class BoundedConnection(ServerConnection):
    """A ServerConnection that aborts a peer that sends without reading, or floods control frames.

    Its own state is in ``__slots__``, set in ``__init__``: a ServerConnection's ``__dict__``
    holds 29 attributes in a key-sharing dict of 296 bytes, and one attribute more made
    CPython give every connection a dict of its own, 1,584 bytes (it happened to each
    socket at login, when ``set_write_bound`` added ``write_bound``).  For the same reason
    ``drain_waiters`` (websockets appends, removes and iterates, nothing else) is a list: an
    empty deque is 760 bytes, an empty list 56; and so is the queue of frames received and
    not yet read (:class:`FrameQueue`).
    """

    __slots__ = ("control_stamp", "control_tokens", "dropped", "write_bound")
    login_bound = 64 * 1024  # unsent bytes before login; the gateway's subclass sets its login_write_buffer
    control_rate = 10.0  # control frames per second (bursts of 10x); the gateway's subclass sets its own

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.drain_waiters = cast("deque[asyncio.Future[None]]", [])
        self.write_bound = self.login_bound  # unsent bytes allowed; a session's once logged in
        self.control_tokens = -1.0  # < 0: the bucket has not been used yet, so it is full
        self.control_stamp = 0.0
        self.dropped = ""  # why the connection was aborted, once it was: "write_bound" or "control_frames"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # makes recv_messages
        self.recv_messages.frames.queue = cast("deque[Frame]", FrameQueue())

    def on_drop(self, reason: str, detail: str) -> None:
        """Told once when the connection is aborted (metrics, logs); the gateway's subclass overrides it."""

    def data_received(self, data: bytes) -> None:
        for start in range(0, len(data), SLICE):
            if self.dropped:
                return  # aborted: the rest is not worth parsing
            super().data_received(data[start : start + SLICE] if len(data) > SLICE else data)
            if self.dropped:
                self._drop(f"sent control frames faster than {self.control_rate:g}/s")
                return
            unsent = self.transport.get_write_buffer_size()
            if unsent > self.write_bound:
                self.dropped = "write_bound"
                self._drop(f"sends but does not read ({unsent} bytes unsent, bound {self.write_bound})")
                return

    def _drop(self, detail: str) -> None:
        self.transport.abort()
        self.on_drop(self.dropped, detail)

    def process_event(self, event: Event) -> None:
        super().process_event(event)
        if isinstance(event, Frame) and event.opcode in _CONTROL and self.control_rate > 0:
            burst = 10 * self.control_rate
            now = self.loop.time()
            tokens = burst if self.control_tokens < 0 else self.control_tokens
            tokens = min(burst, tokens + (now - self.control_stamp) * self.control_rate) - 1
            self.control_tokens, self.control_stamp = max(tokens, 0.0), now
            if tokens < 0 and not self.dropped:
                self.dropped = "control_frames"

    def send_data(self) -> None:
        writes = self.protocol.writes
        if writes and all(writes):  # all frames, no end-of-stream marker: one write, straight to the transport
            self.protocol.writes = []
            self.transport.write(writes[0] if len(writes) == 1 else b"".join(writes))
            return
        super().send_data()


def bounded_connection(
    bound: int, control_rate: float, on_drop: Overflow, trusted: TrustedProxies = NOBODY
) -> type[BoundedConnection]:
    """The gateway's class for ``serve(create_connection=...)``: ``bound`` unsent bytes until login.

    Also a :class:`~gateway.handshake.GetOnlyConnection` (405 for methods other
    than GET); the bounds come first in the MRO, so they see every byte.  And a
    :class:`~gateway.client_ip.ClientAddressConnection`: it notes the client's
    address from the handshake, believing ``X-Forwarded-For`` from ``trusted``.
    """

    class GatewayConnection(BoundedConnection, ClientAddressConnection, GetOnlyConnection):
        __slots__ = ()  # no dict entries of its own either (see BoundedConnection)
        login_bound = bound

        def on_drop(self, reason: str, detail: str) -> None:
            on_drop(self, reason, detail)

    GatewayConnection.control_rate = control_rate
    GatewayConnection.trusted_proxies = trusted
    return GatewayConnection


def set_write_bound(ws: ServerConnection, limit: int) -> None:
    """From now on ``ws`` may hold ``limit`` unsent bytes (a session's, after login)."""
    if isinstance(ws, BoundedConnection):
        ws.write_bound = limit


def text_frame(payload: bytes) -> bytes:
    """``payload`` as one unmasked, final WebSocket text frame (RFC 6455 §5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        return b"\x81" + n.to_bytes(1, "big") + payload
    if n < 1 << 16:
        return b"\x81\x7e" + n.to_bytes(2, "big") + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


def write_text(connections: Iterable[ServerConnection], payload: bytes) -> None:
    """Write ``payload`` as a text message to each open connection, framed once for all of them.

    ``websockets.broadcast`` frames the message again for every connection (a ``Frame``, its
    serialisation, the protocol's write list): a third of a fan-out's CPU.  A connection with
    no extension (the gateway negotiates permessage-deflate only with ``--compression``),
    open, between messages and with nothing queued gets the shared bytes straight on its
    transport; any other goes through ``broadcast``.  Either way a socket that cannot be
    written is skipped with a warning, never an exception: the rest still get the message.
    """
    data = b""
    for ws in connections:
        protocol = ws.protocol
        if (protocol.state is OPEN and not protocol.extensions and not protocol.writes
                and ws.send_in_progress is None and not ws.transport.is_closing()):
            if not data:
                data = text_frame(payload)
            try:
                ws.transport.write(data)
            except Exception as exc:  # a transport already torn down: skip it, as broadcast does
                ws.logger.warning("skipped a write: %s: %s", type(exc).__name__, exc)
        else:
            broadcast((ws,), payload, text=True)
