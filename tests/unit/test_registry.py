"""Presence registry Lua scripts (presence/registry.py) on fakeredis with real Lua (lupa, Lua 5.1).

fakeredis runs the scripts unchanged: TIME, ZSCORE/HMGET nil checks, string.format('%d'),
PUBLISH and SMEMBERS all behave as on redis-server, so these tests need no server process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import fakeredis
import pytest

from common import keys
from presence.registry import Claim, NoLease, OnlinePage, Registry, held_key, token_hash
from protocol import control
from tests.unit.pubsub import Listener, listening


@pytest.fixture
def registry(redis: fakeredis.FakeAsyncRedis) -> Registry:
    return Registry(redis, lease_ttl=10.0)


@pytest.fixture
async def presence(server: fakeredis.FakeServer) -> AsyncIterator[Listener]:
    """Collects what the scripts PUBLISH on the presence channel."""
    async with listening(server, *keys.PRESENCE_CHANNELS) as listener:
        yield listener


def _online(name: str) -> bytes:
    return b'{"type":"presence","user":"%s","status":"online"}' % name.encode()


def _offline(name: str) -> bytes:
    return b'{"type":"presence","user":"%s","status":"offline"}' % name.encode()


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _held(redis: fakeredis.FakeAsyncRedis, node: str) -> set[str]:
    """The name keys a gateway's set lists (its members are "<key> <token hash> <lease epoch>")."""
    return {held_key(m) for m in await redis.smembers(keys.gateway_users(node))}


async def _expire(redis: fakeredis.FakeAsyncRedis, node: str) -> None:
    """Make a gateway's lease look expired (as if it stopped renewing long ago)."""
    await redis.zadd(keys.GATEWAYS, {node: 1})


# -- leases ------------------------------------------------------------------------------


async def test_register_sets_lease_expiry_from_the_redis_clock(registry: Registry) -> None:
    before = _now_ms()
    await registry.register_gateway("gw1")
    after = _now_ms()
    expiry = (await registry.gateways())["gw1"]
    assert before + 10_000 - 1000 <= expiry <= after + 10_000 + 1000


async def test_renew_extends_a_live_lease(registry: Registry, redis: fakeredis.FakeAsyncRedis) -> None:
    await registry.register_gateway("gw1")
    await redis.zadd(keys.GATEWAYS, {"gw1": _now_ms() + 5})
    assert await registry.renew_lease("gw1") is True
    assert (await registry.gateways())["gw1"] > _now_ms() + 5_000


async def test_renew_of_unknown_or_reaped_gateway_is_false_and_creates_nothing(registry: Registry) -> None:
    assert await registry.renew_lease("ghost") is False
    assert await registry.gateways() == {}
    await registry.register_gateway("gw1")
    await registry.release_gateway("gw1")
    assert await registry.renew_lease("gw1") is False
    assert await registry.gateways() == {}


# -- claim -------------------------------------------------------------------------------


async def test_claim_records_session_and_publishes_online(registry: Registry, redis: fakeredis.FakeAsyncRedis,
                                                          presence: Listener) -> None:
    await registry.register_gateway("gw1")
    claim = await registry.claim("alice", "Alice", "gw1", "tok1")
    assert claim == Claim(delivered="0-0", online=OnlinePage(["Alice"]))
    # Only a hash of the session token is stored: a Redis dump cannot take the name over.
    # 'hold': DMs do not move the delivered cursor until the gateway has replayed the inbox and settled it.
    stored = {b"gw": b"gw1", b"epoch": b"1", b"token": token_hash("tok1").encode(), b"name": b"Alice", b"hold": b"1"}
    # 'since' (the claim's time, Redis clock): how long it has been on hold (an abandoned login, issue 15).
    session = await redis.hgetall(keys.session("alice"))
    assert int(session.pop(b"since")) > 0 and session == stored
    assert await _held(redis, "gw1") == {"alice"}
    assert await registry.online() == ["Alice"]
    assert await registry.holder("alice") == "gw1"
    assert await presence.data() == [_online("Alice")]


async def test_claim_returns_delivered_cursor_and_everyone_online_sorted(registry: Registry,
                                                                         redis: fakeredis.FakeAsyncRedis) -> None:
    await registry.register_gateway("gw1")
    await registry.register_gateway("gw2")
    await redis.hset(keys.account("carol"), mapping={"name": "carol", "pw": "x", "delivered": "1700000000000-4"})
    await registry.claim("bob", "bob", "gw1", "t1")
    await registry.claim("Zed", "Zed", "gw2", "t2")
    claim = await registry.claim("carol", "carol", "gw2", "t3")
    assert claim is not None
    assert claim.delivered == "1700000000000-4"
    # Without the online list (a login with presence "off"): the same claim, the same event, no names.
    quiet = await registry.claim("dave", "Dave", "gw1", "t4", online_limit=0)
    assert quiet == Claim(delivered="0-0", online=OnlinePage([]))
    assert "Dave" in await registry.online()
    assert claim.online == OnlinePage(["Zed", "bob", "carol"])  # sorted (code point order), everyone


async def test_claim_returns_at_most_a_page_of_names_with_the_count_and_a_cursor(registry: Registry) -> None:
    """A login storm must not cost O(online) per login: the claim returns the first names only."""
    await registry.register_gateway("gw1")
    names = [f"user{i:03d}" for i in range(25)]
    for name in names:
        await registry.claim(name, name, "gw1", f"t-{name}", online_limit=10)
    claim = await registry.claim("zz", "zz", "gw1", "t-zz", online_limit=10)
    assert claim is not None
    assert claim.online == OnlinePage(names[:10], total=26, next=names[9])
    exact = await registry.claim("zzz", "zzz", "gw1", "t-zzz", online_limit=27)  # fits exactly: no cursor
    assert exact is not None and exact.online == OnlinePage([*names, "zz", "zzz"])


async def test_online_pages_cover_everyone_once_in_name_order(registry: Registry) -> None:
    await registry.register_gateway("gw1")
    names = sorted(["Zoë", "alice", "Bob", "ßtraße", "carol", "dave", "名前", "eve"])
    for name in names:
        await registry.claim(name.casefold(), name, "gw1", f"t-{name}")
    assert await registry.online_page(None, 100) == OnlinePage(names)  # everyone: no total, no cursor
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = await registry.online_page(cursor, 3)
        assert len(page.names) <= 3 and page.total == len(names)
        seen += page.names
        if page.next is None:
            break
        cursor = page.next
    assert seen == names  # code-point order, each exactly once
    # Names coming and going between pages: the ones online throughout are still each seen once.
    first = await registry.online_page(None, 3)
    assert first.names == ["Bob", "Zoë", "alice"] and first.next == "alice"
    await registry.release("dave", "gw1", "t-dave")  # after the cursor: gone from later pages
    await registry.claim("aaron", "aaron", "gw1", "t-aaron")  # before the cursor: not in later pages
    await registry.claim("zed", "zed", "gw1", "t-zed")  # after it: in them
    rest = await registry.online_page(first.next, 100)
    assert rest == OnlinePage(["carol", "eve", "zed", "ßtraße", "名前"], total=len(names) + 1)


async def test_a_held_name_cannot_be_claimed_again(registry: Registry, redis: fakeredis.FakeAsyncRedis,
                                                   presence: Listener) -> None:
    await registry.register_gateway("gw1")
    await registry.register_gateway("gw2")
    assert await registry.claim("alice", "Alice", "gw1", "tok1") is not None
    assert await registry.claim("alice", "ALICE", "gw2", "tok2") is None
    assert await registry.claim("alice", "Alice", "gw1", "tok3") is None  # same gateway too
    assert await redis.hget(keys.session("alice"), "token") == token_hash("tok1").encode()
    assert await registry.online() == ["Alice"]
    assert await redis.smembers(keys.gateway_users("gw2")) == set()
    assert await presence.data() == [_online("Alice")]  # no event for the refused claims


async def test_claim_without_a_lease_raises_no_lease_and_changes_nothing(
    registry: Registry, redis: fakeredis.FakeAsyncRedis, presence: Listener
) -> None:
    with pytest.raises(NoLease):
        await registry.claim("alice", "Alice", "gw1", "tok1")
    assert await redis.exists(keys.session("alice")) == 0
    assert await registry.online() == []
    assert await presence.data() == []


async def test_concurrent_claims_have_exactly_one_winner(registry: Registry) -> None:
    for n in range(4):
        await registry.register_gateway(f"gw{n}")
    results = await asyncio.gather(*(registry.claim("racer", "racer", f"gw{i % 4}", f"t{i}") for i in range(20)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert await registry.online() == ["racer"]


# -- release -----------------------------------------------------------------------------


async def test_release_needs_the_holder_node_and_token(registry: Registry, redis: fakeredis.FakeAsyncRedis,
                                                       presence: Listener) -> None:
    await registry.register_gateway("gw1")
    await registry.claim("alice", "Alice", "gw1", "tok1")
    await presence.data()
    assert await registry.release("alice", "gw1", "wrong") is False
    assert await registry.release("alice", "gw2", "tok1") is False
    assert await registry.holder("alice") == "gw1"
    assert await presence.data() == []

    assert await registry.release("alice", "gw1", "tok1") is True
    assert await redis.exists(keys.session("alice")) == 0
    assert await registry.online() == []
    assert await redis.smembers(keys.gateway_users("gw1")) == set()
    assert await registry.holder("alice") is None
    assert await presence.data() == [_offline("Alice")]
    assert await registry.release("alice", "gw1", "tok1") is False  # twice: nothing left to free
    assert await presence.data() == []


async def test_stale_release_does_not_free_a_newer_session(registry: Registry) -> None:
    """A reconnect got the name back with a new token; the old session's late release must not free it."""
    await registry.register_gateway("gw1")
    await registry.register_gateway("gw2")
    await registry.claim("alice", "Alice", "gw1", "old")
    assert await registry.release("alice", "gw1", "old")
    assert await registry.claim("alice", "Alice", "gw2", "new") is not None
    assert await registry.release("alice", "gw1", "old") is False
    assert await registry.holder("alice") == "gw2"
    assert await registry.online() == ["Alice"]


async def test_release_of_unknown_name_is_false(registry: Registry, presence: Listener) -> None:
    assert await registry.release("nobody", "gw1", "t") is False
    assert await presence.data() == []


# -- release_gateway and reaping ---------------------------------------------------------


async def _two_gateways(registry: Registry) -> None:
    await registry.register_gateway("gw1")
    await registry.register_gateway("gw2")
    await registry.claim("alice", "Alice", "gw1", "t1")
    await registry.claim("bob", "Bob", "gw1", "t2")
    await registry.claim("carol", "Carol", "gw2", "t3")


async def test_release_gateway_frees_only_its_names_and_drops_its_lease(
    registry: Registry, redis: fakeredis.FakeAsyncRedis, presence: Listener
) -> None:
    await _two_gateways(registry)
    await presence.data()
    freed = await registry.release_gateway("gw1")
    assert sorted(freed) == ["Alice", "Bob"]
    assert await registry.online() == ["Carol"]
    assert list(await registry.gateways()) == ["gw2"]
    assert await redis.exists(keys.gateway_users("gw1")) == 0
    assert await registry.holder("carol") == "gw2"
    assert sorted(await presence.data()) == sorted([_offline("Alice"), _offline("Bob")])
    assert await registry.release_gateway("gw1") == []


async def test_reap_frees_names_of_expired_gateways_only(
    registry: Registry, redis: fakeredis.FakeAsyncRedis, presence: Listener
) -> None:
    await _two_gateways(registry)
    await presence.data()
    assert await registry.reap_expired() == ([], [])
    await _expire(redis, "gw1")
    ids, freed = await registry.reap_expired()
    assert ids == ["gw1"] and sorted(freed) == ["Alice", "Bob"]
    assert await registry.online() == ["Carol"]
    assert list(await registry.gateways()) == ["gw2"]
    assert sorted(await presence.data()) == sorted([_offline("Alice"), _offline("Bob")])
    assert await registry.reap_expired() == ([], [])


async def test_reap_respects_the_batch_size(registry: Registry, redis: fakeredis.FakeAsyncRedis) -> None:
    for n in range(3):
        await registry.register_gateway(f"gw{n}")
        await registry.claim(f"u{n}", f"u{n}", f"gw{n}", "t")
        await _expire(redis, f"gw{n}")
    first = await registry.reap_expired(batch=2)
    second = await registry.reap_expired(batch=2)
    assert len(first[0]) == 2 and len(second[0]) == 1
    assert sorted(first[0] + second[0]) == ["gw0", "gw1", "gw2"]
    assert sorted(first[1] + second[1]) == ["u0", "u1", "u2"]
    assert await registry.online() == []


async def test_reap_leaves_a_name_now_held_by_another_gateway(
    registry: Registry, redis: fakeredis.FakeAsyncRedis
) -> None:
    await registry.register_gateway("gw1")
    await registry.register_gateway("gw2")
    await registry.claim("alice", "Alice", "gw2", "t2")
    await redis.sadd(keys.gateway_users("gw1"), "alice")  # leftover entry from an earlier session on gw1
    await _expire(redis, "gw1")
    ids, freed = await registry.reap_expired()
    assert ids == ["gw1"] and freed == []
    assert await registry.holder("alice") == "gw2"
    assert await registry.online() == ["Alice"]


async def test_reaped_gateway_must_register_again(registry: Registry, redis: fakeredis.FakeAsyncRedis) -> None:
    await registry.register_gateway("gw1")
    await registry.claim("alice", "Alice", "gw1", "t1")
    await _expire(redis, "gw1")
    await registry.reap_expired()
    assert await registry.renew_lease("gw1") is False
    with pytest.raises(NoLease):
        await registry.claim("alice", "Alice", "gw1", "t2")
    await registry.register_gateway("gw1")
    assert await registry.claim("alice", "Alice", "gw1", "t2") == Claim("0-0", OnlinePage(["Alice"]))


async def test_registry_uses_only_chinwag_keys(registry: Registry, redis: fakeredis.FakeAsyncRedis) -> None:
    await _two_gateways(registry)
    await registry.release("bob", "gw1", "t2")
    assert all(k.startswith(keys.PREFIX.encode()) for k in await redis.keys("*"))


async def test_takeover_with_the_session_token_moves_the_name_and_kicks_the_old_gateway(
    registry: Registry, redis: fakeredis.FakeAsyncRedis, presence: Listener
) -> None:
    await registry.register_gateway("gw1")
    await registry.register_gateway("gw2")
    assert await registry.claim("alice", "Alice", "gw1", "old") is not None
    kicks = redis.pubsub()
    await kicks.subscribe(keys.gateway_channel("gw1"))
    assert (await kicks.get_message(timeout=1))["type"] == "subscribe"  # type: ignore[index]

    assert await registry.claim("alice", "Alice", "gw2", "new", takeover_token="wrong") is None
    claim = await registry.claim("alice", "Alice", "gw2", "new", takeover_token="old")
    assert claim is not None and claim.took_over
    assert await registry.holder("alice") == "gw2"
    assert await redis.smembers(keys.gateway_users("gw1")) == set()
    assert await _held(redis, "gw2") == {"alice"}
    kick = await kicks.get_message(timeout=1)
    assert kick is not None
    assert control.decode(kick["data"]) == control.Kick(user="alice", token=token_hash("old"))
    await kicks.aclose()
    # The old session can no longer release the name, and the old token no longer takes it over.
    assert await registry.release("alice", "gw1", "old") is False
    assert await registry.claim("alice", "Alice", "gw1", "x", takeover_token="old") is None
    assert await presence.data() == [_online("Alice")]  # a takeover is not a presence change


async def test_reaping_the_old_gateway_after_a_takeover_keeps_the_name(registry: Registry) -> None:
    await registry.register_gateway("gw1")
    await registry.register_gateway("gw2")
    await registry.claim("alice", "Alice", "gw1", "old")
    await registry.claim("alice", "Alice", "gw2", "new", takeover_token="old")
    assert await registry.release_gateway("gw1") == []
    assert await registry.online() == ["Alice"]


# -- re-claiming names after a lost lease -------------------------------------------------


async def test_reclaim_takes_back_free_names_keeps_own_and_leaves_others(
    registry: Registry, redis: fakeredis.FakeAsyncRedis, presence: Listener
) -> None:
    await registry.register_gateway("gw1")
    await registry.register_gateway("gw2")
    await registry.claim("alice", "Alice", "gw1", "ta")
    await registry.claim("bob", "Bob", "gw1", "tb")
    await registry.claim("carol", "Carol", "gw1", "tc")
    await _expire(redis, "gw1")
    await registry.reap_expired()  # gw1 paused past its lease: all three names freed
    await registry.claim("carol", "Carol", "gw2", "tc2")  # carol logged in elsewhere meanwhile
    with pytest.raises(NoLease):
        await registry.reclaim("gw1", [("alice", "Alice", token_hash("ta"))])
    await registry.register_gateway("gw1")
    await registry.claim("bob", "Bob", "gw1", "tb")  # (as if a login re-claimed it already)
    await redis.hdel(keys.session("bob"), "hold")
    await presence.data()
    statuses = await registry.reclaim(
        "gw1", [("alice", "Alice", token_hash("ta")), ("bob", "Bob", token_hash("tb")),
                ("carol", "Carol", token_hash("tc"))],
    )
    assert statuses == [1, 2, 0]
    alice = await redis.hgetall(keys.session("alice"))
    epoch = str(await registry.register_gateway("gw1")).encode()  # the live lease: its epoch unchanged
    assert int(alice.pop(b"since")) > 0
    assert alice == {b"gw": b"gw1", b"epoch": epoch, b"token": token_hash("ta").encode(), b"name": b"Alice",
                     b"hold": b"1"}
    assert await redis.hget(keys.session("bob"), "hold") is None  # still ours: left as it was
    assert await registry.holder("carol") == "gw2"
    assert await _held(redis, "gw1") == {"alice", "bob"}
    assert await registry.online() == ["Alice", "Bob", "Carol"]
    assert await presence.data() == [_online("Alice")]
    assert await registry.reclaim("gw1", []) == []


async def test_an_event_the_index_no_longer_agrees_with_is_corrected(registry: Registry, presence: Listener) -> None:
    """A reaper's ``offline`` can be published after a new login's ``online`` of the same user (two
    processes, two steps each): the publisher reads the index after publishing and says it again."""
    await registry.register_gateway("gw1")
    await registry.claim("alice", "Alice", "gw1", "t1")
    await registry._announce([("alice", "Alice"), ("bob", "Bob")], "offline")  # a late offline for alice
    await registry._announce([("carol", "Carol")], "online")  # a late online of someone already gone
    assert await presence.data() == [_online("Alice"), _offline("Alice"), _offline("Bob"), _online("Alice"),
                                     _online("Carol"), _offline("Carol")]
