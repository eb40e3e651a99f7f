"""The registry and store scripts on a real redis-server (Lua 5.1 as Redis embeds it).

tests/unit/test_registry.py and tests/unit/test_store.py cover the scripts in depth on
fakeredis.  This file runs the same operations once on a real server, to catch any gap
between fakeredis and Redis, and shows a case fakeredis cannot: fakeredis answers ``XREVRANGE key (0-0 -``
with an empty list where Redis 6.2 raises "invalid end ID for the interval".
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import msgspec
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from common import keys
from gateway.store import Store
from presence.registry import Claim, NoLease, OnlinePage, Registry
from protocol import frames as f
from protocol.names import id_tuple
from tests.helpers import RedisServer


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


async def test_registry_lifecycle_on_real_redis(redis: Redis) -> None:
    registry = Registry(redis, lease_ttl=10.0)
    with pytest.raises(NoLease):
        await registry.claim("alice", "Alice", "gw1", "t1")
    before = int(time.time() * 1000)
    await registry.register_gateway("gw1")
    await registry.register_gateway("gw2")
    assert before + 9_000 <= (await registry.gateways())["gw1"] <= int(time.time() * 1000) + 11_000
    assert await registry.renew_lease("gw1") is True
    assert await registry.renew_lease("ghost") is False

    await redis.hset(keys.account("alice"), mapping={"name": "Alice", "pw": "x", "delivered": "1700000000000-2"})
    assert await registry.claim("alice", "Alice", "gw1", "t1") == Claim("1700000000000-2", OnlinePage(["Alice"]))
    assert await registry.claim("alice", "ALICE", "gw2", "t2") is None
    assert await registry.claim("bob", "Bob", "gw1", "t3") == Claim("0-0", OnlinePage(["Alice", "Bob"]))
    assert await registry.claim("carol", "Carol", "gw2", "t4") is not None

    assert await registry.release("alice", "gw1", "wrong") is False
    assert await registry.release("alice", "gw1", "t1") is True
    assert await registry.online() == ["Bob", "Carol"]

    await redis.zadd(keys.GATEWAYS, {"gw2": 1})  # gw2 stopped renewing long ago
    assert await registry.reap_expired() == (["gw2"], ["Carol"])
    assert await registry.release_gateway("gw1") == ["Bob"]
    assert await registry.online() == [] and await registry.gateways() == {}


async def test_store_on_real_redis(redis: Redis) -> None:
    for key, name in (("alice", "Alice"), ("bob", "Bob")):
        await redis.hset(keys.account(key), mapping={"name": name, "pw": "x"})
    await redis.hset(keys.session("bob"), mapping={"gw": "gw1", "token": "t", "name": "Bob"})
    store = Store(redis, maxlen=1000)
    sender = msgspec.json.encode("Alice")

    assert await store.send_dm(sender, "alice", "nobody", "hi") is None
    sent = []
    for i in range(7):
        stored = await store.send_dm(sender, "alice", "bob", f'm{i} "q" \\ \u00e9\U0001f600')
        assert stored is not None and id_tuple(stored.id)[0] == stored.ts
        sent.append(stored)
    b = await store.send_broadcast(sender, "alice", "all")
    ids = [s.id for s in sent]
    assert [id_tuple(i) for i in ids] == sorted(id_tuple(i) for i in ids)  # ordered per stream (bob's clock)
    assert abs(b.ts - time.time() * 1000) < 5_000  # ms on the Redis clock, formatted by Lua 5.1

    page = await store.dm_history("alice", "bob", None, 3)
    assert [json.loads(bytes(r))["id"] for r in page] == ids[-3:]
    older = await store.dm_history("bob", "alice", ids[-3], 100)
    assert [json.loads(bytes(r))["id"] for r in older] == ids[:-3]
    msg = f.parse_server_frame(bytes(page[-1]))
    assert msg == f.Message(id=ids[-1], from_="Alice", to="@Bob", body='m6 "q" \\ \u00e9\U0001f600', ts=sent[-1].ts)

    assert [rid for rid, _ in await store.stream_after(keys.inbox_stream("bob"), "0-0")] == ids
    assert [rid for rid, _ in await store.stream_after(keys.inbox_stream("bob"), ids[3])] == ids[4:]
    assert await redis.hget(keys.account("bob"), "delivered") == ids[-1].encode()  # bob was online
    await store.advance_delivered("bob", ids[0])
    assert await redis.hget(keys.account("bob"), "delivered") == ids[-1].encode()  # never backwards


@pytest.mark.parametrize("before", ["0-0", "99999999999999999999-0", "1-2\n"])
async def test_history_before_ids_redis_rejects(redis: Redis, before: str) -> None:
    """Store.dm_history passes ``before`` straight to XREVRANGE, which raises on these; fakeredis
    even answers [] for "(0-0".  Only the parser's is_message_id keeps them away from Redis."""
    await redis.hset(keys.account("bob"), mapping={"name": "Bob", "pw": "x"})
    store = Store(redis)
    await store.send_dm(msgspec.json.encode("Alice"), "alice", "bob", "hi")
    with pytest.raises(ResponseError):
        await store.dm_history("alice", "bob", before, 10)
