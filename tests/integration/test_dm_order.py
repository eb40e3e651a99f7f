"""A DM conversation's order when its two directions are numbered by two clocks (issue 15).

Each user's inbox has its own id clock; on a cluster the two users' clocks live on two shards whose
TIME may differ.  Bob's clock is set a minute ahead here (the shard of a user whose Redis runs fast),
so alice's message gets an id from the future; bob's reply is numbered by alice's clock, at the real
time, and would sort *before* the message it answers.  The gateway passes the last DM bob's session
wrote out as the reply's floor, so the history shows the reply after it.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from common import keys
from protocol import frames as f
from protocol.names import id_tuple
from tests.helpers import Clients, Proc, RedisServer, wait_for_event


async def test_a_reply_follows_the_message_it_answers_though_the_clocks_disagree(
    redis_server: RedisServer, gateway_pair: tuple[Proc, Proc], clients: Clients
) -> None:
    gw1, gw2 = gateway_pair
    alice = await clients.login(gw1.url, "alice")
    bob = await clients.login(gw2.url, "bob")
    ahead = int(time.time() * 1000) + 60_000
    admin = Redis.from_url(redis_server.url)
    try:
        await admin.set(keys.user_clock("bob"), f"{ahead}-0")
        question = await alice.send("@bob", "question")
        assert id_tuple(question.id)[0] == ahead
        got = await wait_for_event(bob, lambda e: isinstance(e, f.Message))
        assert isinstance(got, f.Message) and got.id == question.id
        answer = await bob.send("@alice", "answer")
        assert id_tuple(answer.id) > id_tuple(question.id)  # alice's clock is at the real time
        assert await admin.get(keys.user_clock("alice")) == answer.id.encode()
    finally:
        await admin.aclose()
    for client, peer in ((alice, "@bob"), (bob, "@alice")):
        assert [m.body for m in await client.history(peer)] == ["question", "answer"]
