"""Per-owner id clocks and the DM history merge (gateway/history.py, gateway/store_lua.py NEXT_ID),
and the send's rate step in the sender's slot, on fakeredis with real Lua."""

from __future__ import annotations

import json
import time
from typing import Any

import fakeredis
import msgspec
import pytest

from common import keys
from gateway.history import dm_parity, merge_newest
from gateway.store import Store
from protocol.errors import RateLimited
from protocol.names import id_tuple


def _name(name: str) -> bytes:
    return msgspec.json.encode(name)


@pytest.fixture
async def store(redis: fakeredis.FakeAsyncRedis) -> Store:
    for key, name in (("alice", "Alice"), ("bob", "Bob")):
        await redis.hset(keys.account(key), mapping={"name": name, "pw": "hash"})
    return Store(redis, maxlen=1000)


# -- the merge ---------------------------------------------------------------------------


def test_merge_keeps_the_newest_limit_oldest_first() -> None:
    mine = [((5, 1), b"e"), ((3, 1), b"c"), ((1, 1), b"a")]  # newest first, as XREVRANGE gives them
    theirs = [((4, 0), b"d"), ((2, 0), b"b")]
    assert merge_newest(mine, theirs, 10) == [b"a", b"b", b"c", b"d", b"e"]
    assert merge_newest(mine, theirs, 3) == [b"c", b"d", b"e"]
    assert merge_newest(mine, [], 2) == [b"c", b"e"]
    assert merge_newest([], [], 5) == []


def test_merge_orders_ids_numerically() -> None:
    assert merge_newest([((7, 10), b"late")], [((7, 9), b"early"), ((6, 99), b"first")], 5) == [
        b"first", b"early", b"late"]


def test_the_two_directions_of_a_conversation_have_opposite_parity() -> None:
    assert {dm_parity("alice", "bob"), dm_parity("bob", "alice")} == {"0", "1"}
    assert dm_parity("alice", "bob") == "0"  # sends to the lexically lower name are even
    assert dm_parity("alice", "alice") == ""


# -- the clock ---------------------------------------------------------------------------


async def test_each_stream_owner_has_its_own_clock(store: Store, redis: fakeredis.FakeAsyncRedis) -> None:
    ids = [await store.send_dm(_name("Alice"), "alice", "bob", str(i)) for i in range(20)]
    tuples = [id_tuple(s.id) for s in ids if s is not None]
    assert tuples == sorted(tuples) and len(set(tuples)) == 20
    assert all(seq % 2 == 1 for _, seq in tuples)  # "bob" > "alice": sends to bob are odd
    last = ids[-1]
    assert last is not None and await redis.get(keys.user_clock("bob")) == last.id.encode()
    assert await redis.get(keys.user_clock("alice")) is None  # the sender's clock never moves
    b = await store.send_broadcast(_name("Alice"), "alice", "all")
    assert await redis.get(keys.BROADCAST_CLOCK) == b.id.encode()
    assert await redis.get(keys.LAST_ID) is None


async def test_the_clock_never_goes_back_when_time_does(store: Store, redis: fakeredis.FakeAsyncRedis) -> None:
    ahead = int(time.time() * 1000) + 10_000  # the clock was moved by a floor (or a Redis) ahead of TIME
    await redis.set(keys.user_clock("bob"), f"{ahead}-3")
    got = [await store.send_dm(_name("Alice"), "alice", "bob", str(i)) for i in range(3)]
    assert [s.id for s in got if s is not None] == [f"{ahead}-5", f"{ahead}-7", f"{ahead}-9"]


async def test_a_reply_sorts_after_what_its_sender_had_read(store: Store) -> None:
    """Alice's message was numbered by bob's clock, which runs ahead; bob's reply, numbered by alice's
    clock, still sorts after it because his session passes the last DM it wrote out as the floor."""
    ahead = int(time.time() * 1000) + 5_000
    first = await store.send_dm(_name("Alice"), "alice", "bob", "hi", floor=f"{ahead}-0")
    assert first is not None
    unordered = await store.send_dm(_name("Bob"), "bob", "alice", "no floor")
    reply = await store.send_dm(_name("Bob"), "bob", "alice", "hi back", floor=first.id)
    assert unordered is not None and reply is not None
    assert id_tuple(unordered.id) < id_tuple(first.id) < id_tuple(reply.id)
    page = await store.dm_history("alice", "bob", None, 10)
    assert [json.loads(bytes(raw))["body"] for raw in page] == ["no floor", "hi", "hi back"]


async def test_a_conversation_in_one_millisecond_has_no_shared_id(store: Store) -> None:
    """Both clocks start from the same TIME: the parity keeps the halves apart, so paging is exact."""
    sent: list[str] = []
    for i in range(30):
        sender, to = ("Alice", "bob") if i % 2 else ("Bob", "alice")
        stored = await store.send_dm(_name(sender), sender.casefold(), to, str(i))
        assert stored is not None
        sent.append(stored.id)
    assert len(set(sent)) == 30
    pages: list[str] = []
    before = None
    while page := [json.loads(bytes(r))["id"] for r in await store.dm_history("bob", "alice", before, 4)]:
        pages = page + pages
        before = page[0]
    assert pages == sorted(sent, key=id_tuple)


# -- the rate step -----------------------------------------------------------------------


class _Counting:
    """Counts the scripts a Store runs (the calls a send costs)."""

    def __init__(self, store: Store) -> None:
        self.calls: list[str] = []
        run = store._run

        def counted(script: Any, keys_: list[Any], args: list[Any]) -> Any:
            self.calls.append(keys_[0])
            return run(script, keys_, args)

        store._run = counted  # type: ignore[method-assign]


async def test_a_refused_rate_token_stores_nothing(redis: fakeredis.FakeAsyncRedis) -> None:
    await redis.hset(keys.account("bob"), mapping={"name": "Bob", "pw": "x"})
    store = Store(redis, rate=0.001, burst=1)
    counting = _Counting(store)
    assert await store.send_dm(_name("Alice"), "alice", "bob", "one") is not None
    assert counting.calls == [keys.rate("alice"), keys.dm_dedupe("bob", "alice", "")]  # two steps, two slots
    with pytest.raises(RateLimited):
        await store.send_dm(_name("Alice"), "alice", "bob", "two")
    with pytest.raises(RateLimited):
        await store.send_broadcast(_name("Alice"), "alice", "all")
    with pytest.raises(RateLimited):
        await store.send_group(_name("Alice"), "alice", "g", "x")
    assert await redis.xlen(keys.inbox_stream("bob")) == 1
    assert await redis.exists(keys.BROADCAST_STREAM, keys.BROADCAST_CLOCK, keys.group_clock("g")) == 0


async def test_an_unlimited_send_is_one_call(store: Store) -> None:
    counting = _Counting(store)
    assert await store.send_dm(_name("Alice"), "alice", "bob", "one") is not None
    await store.send_broadcast(_name("Alice"), "alice", "all")
    assert len(counting.calls) == 2
