"""What the Lua scripts under test PUBLISH, collected from a fakeredis server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import fakeredis


class Listener:
    """Subscribed to ``channels`` on its own connection; hands over what has arrived so far."""

    def __init__(self, server: fakeredis.FakeServer, *channels: str) -> None:
        self.client = fakeredis.FakeAsyncRedis(server=server)
        self.pubsub = self.client.pubsub()
        self.channels = channels

    async def start(self) -> None:
        await self.pubsub.subscribe(*self.channels)
        for _ in self.channels:
            await self.pubsub.get_message(timeout=1)  # the subscribe confirmations

    async def messages(self) -> list[tuple[str, bytes]]:
        """(channel, data) of every message published since the last call."""
        out = []
        while (msg := await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)) is not None:
            out.append((msg["channel"].decode(), msg["data"]))
        return out

    async def data(self) -> list[bytes]:
        """Just the data of :meth:`messages` (for one channel)."""
        return [data for _, data in await self.messages()]

    async def close(self) -> None:
        await self.pubsub.aclose()
        await self.client.aclose()


@contextlib.asynccontextmanager
async def listening(server: fakeredis.FakeServer, *channels: str) -> AsyncIterator[Listener]:
    listener = Listener(server, *channels)
    await listener.start()
    try:
        yield listener
    finally:
        await listener.close()
