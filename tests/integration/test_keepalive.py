"""The gateway's keepalive sweep: one task pings every socket and closes those that stop answering."""

from __future__ import annotations

import json

from websockets.asyncio.client import connect

from client import ChatClient
from tests.helpers import Clients, Processes, RedisServer, async_wait_until


async def test_a_peer_that_stops_answering_pings_is_closed_and_logged_out(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    gateway = processes.gateway(redis_server.url, env={"CHINWAG_PING_INTERVAL": "1.0"})
    healthy = await clients.login(gateway.url, "healthy")
    async with connect(gateway.url, ping_interval=None, close_timeout=1) as ws:
        await ws.send(json.dumps({"type": "login", "v": 1, "user": "frozen", "password": "pw", "presence": "off"}))
        assert json.loads(await ws.recv())["type"] == "welcome"
        assert ws.transport is not None
        ws.transport.pause_reading()  # alive at the TCP level, but it reads (and so answers) nothing
        await async_wait_until(lambda: "logout frozen" in gateway.log(), 10, "the silent peer to be dropped")
    assert "no pong from" in gateway.log() or "has not read" in gateway.log()
    # Pings went to the healthy client all along, and it answered them: it is still there.
    assert "logout healthy" not in gateway.log()
    await async_wait_until(lambda: _who(healthy), 5, "who without frozen")


async def _who(client: ChatClient) -> bool:
    return await client.who() == ["healthy"]
