"""gateway.connection.write_text over real WebSocket connections on loopback."""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from gateway.connection import bounded_connection, write_text
from tests.helpers import async_wait_until


async def test_every_open_socket_gets_the_message_framed_once_and_an_aborted_one_is_skipped() -> None:
    conns: list[ServerConnection] = []
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        conns.append(ws)
        await done.wait()

    cls = bounded_connection(1 << 20, 0, lambda *a: None)
    async with serve(handler, "127.0.0.1", 0, create_connection=cls, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        clients = [await connect(f"ws://127.0.0.1:{port}", compression=None) for _ in range(3)]
        try:
            await async_wait_until(lambda: len(conns) == 3, 5, "three server-side connections")
            by_peer = {ws.remote_address: ws for ws in conns}
            ordered = [by_peer[c.local_address] for c in clients]
            write_text(ordered, "héllo".encode())
            assert [await asyncio.wait_for(c.recv(), 5) for c in clients] == ["héllo"] * 3

            ordered[1].transport.abort()  # torn down under websockets' feet: its state still says OPEN
            assert ordered[1].protocol.state.name == "OPEN"
            write_text(ordered, b"x" * 70_000)  # no exception; a 64-bit length field too
            assert len(await asyncio.wait_for(clients[0].recv(), 5)) == 70_000
            assert len(await asyncio.wait_for(clients[2].recv(), 5)) == 70_000
        finally:
            done.set()
            for c in clients:
                await c.close()
