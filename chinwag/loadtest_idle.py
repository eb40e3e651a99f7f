"""The idle scenario's client: one logged-in socket that reads every frame and keeps none.

``ChatClient`` is a real client: it decodes every frame, tracks who is online and queues
every event for a reader.  The idle scenario reads no events, so with presence on the
queues only grew, and each client's online set grew to everyone: 10,000 clients in two
worker processes held about 10,000 x 10,000 names (2.7 GiB per worker at 4,000 clients
each) and decoded every ``presence_batch`` once per client.  The generator then took twice
the gateway's CPU and set the pace of the logins it was meant to measure.  An idle client
here sends the same ``login`` frame (the mode in ``presence``), waits for its ``welcome``,
then reads and drops frames (raw bytes, never decoded) so the gateway never sees a slow
consumer; websockets answers the gateway's pings while it reads.
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from protocol import frames as f
from protocol.errors import CloseCode, Unavailable


class IdleLoginFailed(Exception):
    """The gateway answered the login with anything but a ``welcome``."""


class IdleClient:
    """A socket logged in as one user, drained by one task until :meth:`close`."""

    __slots__ = ("_drain", "user", "ws")

    def __init__(self, ws: ClientConnection, user: str) -> None:
        self.ws = ws
        self.user = user
        self._drain = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, user: str, password: str, presence: str, timeout: float) -> IdleClient:
        """Connect and log in; ``Unavailable`` when the gateway says to try later (close 1013)."""
        ws = await connect(url, compression=None, open_timeout=timeout, ping_interval=None, max_size=None)
        try:
            login = f.Login(v=f.PROTOCOL_VERSION, user=user, password=password, presence=presence)
            await ws.send(f.encode(login), text=True)
            reply = f.parse_server_frame(await asyncio.wait_for(ws.recv(decode=False), timeout))
        except ConnectionClosed:
            await ws.close()
            if ws.close_code == CloseCode.TRY_AGAIN_LATER:
                raise Unavailable() from None
            raise IdleLoginFailed(f"connection closed ({ws.close_code})") from None
        except BaseException:
            await ws.close()
            raise
        if not isinstance(reply, f.Welcome):
            await ws.close()
            if isinstance(reply, f.Error) and reply.code == Unavailable.code.value:
                raise Unavailable()
            raise IdleLoginFailed(f"login answered with {reply!r:.200}")
        return cls(ws, user)

    async def _read(self) -> None:
        try:
            while True:
                await self.ws.recv(decode=False)
        except ConnectionClosed:
            pass

    async def close(self) -> None:
        self._drain.cancel()
        await self.ws.close()
