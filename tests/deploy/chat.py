"""Chat through a compose cluster's HAProxy, shared by the compose tests (tests/deploy)."""

from __future__ import annotations

import asyncio
import time

from client import ChatClient
from client.errors import ConnectFailed
from protocol import frames as f
from tests.deploy.harness import Cluster
from tests.helpers import wait_for_event


async def open_client(cluster: Cluster, user: str, password: str = "secret-pw", within: float = 90) -> ChatClient:
    """A logged-in client.  Opening is retried until ``within`` runs out, as a user would: right after a
    Redis restart or restore, HAProxy holds a handshake until a gateway is ready again (its checks take
    a few seconds), and on a loaded machine that can outlast one open_timeout."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await ChatClient.open(cluster.url, user, password, request_timeout=60, backoff_cap=1.0)
        except ConnectFailed:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)  # pacing between bounded attempts, not synchronisation


async def chat_across_three_gateways(cluster: Cluster, prefix: str, greeting: str) -> None:
    """Three fresh clients (``<prefix>0`` to ``<prefix>2``) land on three gateways (HAProxy's leastconn
    over three idle ones); a DM from the first reaches the second, a broadcast from the third both."""
    clients = [await open_client(cluster, f"{prefix}{i}") for i in range(3)]
    try:
        assert len({c.node for c in clients}) == 3
        ack = await clients[0].send(f"@{prefix}1", greeting)
        got = await wait_for_event(clients[1], lambda e: isinstance(e, f.Message) and e.id == ack.id, 30)
        assert isinstance(got, f.Message) and got.body == greeting
        await clients[2].send("*", "to everyone")
        for client in clients[:2]:
            await wait_for_event(client, lambda e: isinstance(e, f.Message) and e.body == "to everyone", 30)
    finally:
        for client in clients:
            await client.close()
