"""Recovery scoped to the channels a cluster shard lost (gateway/recovery.py Scope, issue 15).

On a cluster the router reports ``on_lost(channels)`` for one master's link; only
the sessions those channels serve hold their live frames, and the catch-up after
``on_resubscribed(channels)`` replays only their inboxes (and groups' streams, the
broadcast stream, the online list, as the channels say).  Here one gateway
in-process on one Redis: the loss of bob's channel is what the cluster router
would report, and a handler that drops frames stands in for the dark link.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from common import keys
from common.config import Settings
from gateway.server import Gateway
from protocol import frames as f
from tests.helpers import Clients, RedisServer, async_wait_until, wait_for_event


async def test_a_lost_user_channel_holds_and_replays_only_that_user(
        redis_server: RedisServer, clients: Clients, tmp_path: Path) -> None:
    settings = Settings(
        redis_url=redis_server.url, port=0, http_port=0, argon2_memory_kib=1024, argon2_time_cost=1,
        rate_messages=0, rate_requests=0, ip_connections=0, ip_logins=0, data_dir=str(tmp_path),
    )
    gateway = Gateway(settings)
    await gateway.start()
    try:
        url = f"ws://127.0.0.1:{gateway.port}"
        alice = await clients.login(url, "alice")
        bob = await clients.login(url, "bob")
        carol = await clients.login(url, "carol")
        sessions = gateway.sessions
        await async_wait_until(lambda: all(k in sessions and sessions[k] not in gateway.joining
                                           for k in ("alice", "bob", "carol")), 5, "three sessions live")
        bob_channel = keys.user_channel("bob")

        gateway.router.set_handler(bob_channel, lambda frame: None)  # bob's shard is dark: frames are lost
        gateway.recovery.pubsub_lost({bob_channel})
        assert sessions["bob"].holding and not sessions["carol"].holding and not sessions["alice"].holding
        assert gateway.recovery.held is None  # the broadcast channel was not lost: broadcasts flow

        missed = await alice.send("@bob", "while bob's shard was dark")
        await alice.send("@carol", "carol's shard is fine")
        got = cast(f.Message, await wait_for_event(carol, lambda e: isinstance(e, f.Message), 5))
        assert got.body == "carol's shard is fine"  # delivered at once: carol is not held

        gateway.router.set_handler(bob_channel, sessions["bob"].deliver_dm)  # subscribed again
        gateway.recovery.start({bob_channel})
        message = cast(f.Message, await wait_for_event(bob, lambda e: isinstance(e, f.Message), 5))
        assert (message.id, message.body) == (missed.id, "while bob's shard was dark")  # type: ignore[union-attr]
        await async_wait_until(lambda: not sessions["bob"].holding, 5, "bob live again")
        assert gateway.recovery.scope.empty  # nothing left to replay
    finally:
        await gateway.stop()
