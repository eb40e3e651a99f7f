"""Message store Lua scripts (gateway/store.py) on fakeredis with real Lua (lupa, Lua 5.1).

The scripts use TIME, string.match/format and XADD with explicit ids; fakeredis runs them
unchanged, so no redis-server is needed here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import fakeredis
import msgspec
import pytest

from common import keys
from gateway.store import Store, Stored
from protocol import frames as f
from protocol.names import id_tuple, is_message_id
from tests.unit.pubsub import Listener, listening


@pytest.fixture
async def store(redis: fakeredis.FakeAsyncRedis) -> Store:
    for key, name in (("alice", "Alice"), ("bob", "Bob"), ("carol", "Carol")):
        await redis.hset(keys.account(key), mapping={"name": name, "pw": "hash"})
    return Store(redis, maxlen=1000)


@pytest.fixture
async def listener(server: fakeredis.FakeServer) -> AsyncIterator[Listener]:
    channels = keys.user_channel("bob"), keys.user_channel("alice"), keys.BROADCAST_CHANNEL
    async with listening(server, *channels) as lst:
        yield lst


def _name(name: str) -> bytes:
    return msgspec.json.encode(name)


async def _dm(store: Store, sender: str, to_key: str, body: str) -> Stored | None:
    return await store.send_dm(_name(sender), sender.casefold(), to_key, body)


async def _online(redis: fakeredis.FakeAsyncRedis, key: str) -> None:
    await redis.hset(keys.session(key), mapping={"gw": "gw1", "token": "t", "name": key})


async def _stream(redis: fakeredis.FakeAsyncRedis, name: str) -> list[tuple[str, bytes]]:
    return [(rid.decode(), fields[b"f"]) for rid, fields in await redis.xrange(name)]


# -- send_dm -----------------------------------------------------------------------------


async def test_dm_to_unknown_user_stores_nothing(store: Store, redis: fakeredis.FakeAsyncRedis,
                                                 listener: Listener) -> None:
    assert await _dm(store, "Alice", "nobody", "hi") is None
    assert await redis.keys(f"{keys.PREFIX}{{u:nobody}}*") == []  # no inbox, no history, no id consumed
    assert await listener.messages() == []


async def test_dm_is_stored_in_the_recipients_half_and_inbox_as_one_frame(store: Store,
                                                                   redis: fakeredis.FakeAsyncRedis) -> None:
    before = int(time.time() * 1000)
    stored = await _dm(store, "Alice", "bob", "hi bob")
    after = int(time.time() * 1000)
    assert stored is not None and is_message_id(stored.id)
    assert id_tuple(stored.id)[0] == stored.ts
    assert before - 1000 <= stored.ts <= after + 1000  # the Redis clock, in ms
    conv = await _stream(redis, keys.dm_half("bob", "alice"))
    inbox = await _stream(redis, keys.inbox_stream("bob"))
    assert conv == inbox and [rid for rid, _ in conv] == [stored.id]
    frame = f.parse_server_frame(conv[0][1])
    assert frame == f.Message(id=stored.id, from_="Alice", to="@Bob", body="hi bob", ts=stored.ts)
    assert await redis.get(keys.user_clock("bob")) == stored.id.encode()
    assert await redis.get(keys.LAST_ID) is None  # no global counter
    assert await redis.keys(f"{keys.PREFIX}{{u:alice}}*") == [keys.account("alice").encode()]  # sender: untouched


@pytest.mark.parametrize(
    "body",
    ['quote " backslash \\ slash /', "line\nbreak\ttab\r", "\u00e9\u00e8 \u540d\u524d \U0001f600", "\x00\x01\x1f",
     "</script>", "'single'", "%d %s %%", "]]]}}}", "x" * 8000],
)
async def test_any_body_round_trips_as_json(store: Store, redis: fakeredis.FakeAsyncRedis, body: str) -> None:
    stored = await _dm(store, "Alice", "bob", body)
    assert stored is not None
    raw = (await _stream(redis, keys.dm_half("bob", "alice")))[0][1]
    assert json.loads(raw)["body"] == body
    frame = f.parse_server_frame(raw)
    assert isinstance(frame, f.Message) and frame.body == body


async def test_sender_name_is_json_encoded(store: Store, redis: fakeredis.FakeAsyncRedis) -> None:
    stored = await store.send_dm(_name('we"ird\\'), "weird", "bob", "x")  # never a valid name; still valid JSON
    assert stored is not None
    raw = (await _stream(redis, keys.inbox_stream("bob")))[0][1]
    assert json.loads(raw)["from"] == 'we"ird\\'


async def test_dm_to_online_user_is_published_and_advances_delivered(
    store: Store, redis: fakeredis.FakeAsyncRedis, listener: Listener
) -> None:
    await _online(redis, "bob")
    stored = await _dm(store, "Alice", "bob", "live")
    assert stored is not None
    inbox = await _stream(redis, keys.inbox_stream("bob"))
    assert await listener.messages() == [(keys.user_channel("bob"), inbox[0][1])]  # the stored bytes, as is
    assert await redis.hget(keys.account("bob"), "delivered") == stored.id.encode()


async def test_dm_to_offline_user_is_stored_not_published(
    store: Store, redis: fakeredis.FakeAsyncRedis, listener: Listener
) -> None:
    stored = await _dm(store, "Alice", "bob", "later")
    assert stored is not None
    assert await listener.messages() == []
    assert await redis.hget(keys.account("bob"), "delivered") is None
    inbox = await _stream(redis, keys.inbox_stream("bob"))
    assert await store.stream_after(keys.inbox_stream("bob"), "0-0") == [(stored.id, inbox[0][1])]


async def test_both_directions_make_one_conversation(store: Store, redis: fakeredis.FakeAsyncRedis) -> None:
    a = await _dm(store, "Alice", "bob", "1")
    b = await store.send_dm(_name("Bob"), "bob", "alice", "2", floor=a.id if a else "")  # bob read it
    assert a is not None and b is not None
    assert id_tuple(a.id) < id_tuple(b.id)
    for me, peer in (("alice", "bob"), ("bob", "alice")):
        conv = await store.dm_history(me, peer, None, 10)
        assert _ids(conv) == [a.id, b.id]
        assert [json.loads(bytes(raw))["to"] for raw in conv] == ["@Bob", "@Alice"]
    # Each message is stored once, in its recipient's slot.
    assert [rid for rid, _ in await _stream(redis, keys.dm_half("bob", "alice"))] == [a.id]
    assert [rid for rid, _ in await _stream(redis, keys.dm_half("alice", "bob"))] == [b.id]


async def test_dm_to_self_is_stored(store: Store, redis: fakeredis.FakeAsyncRedis) -> None:
    stored = await _dm(store, "Alice", "alice", "note to self")
    assert stored is not None
    assert len(await _stream(redis, keys.dm_half("alice", "alice"))) == 1
    assert _ids(await store.dm_history("alice", "alice", None, 10)) == [stored.id]


# -- ids ---------------------------------------------------------------------------------


async def test_ids_are_unique_and_increasing_per_stream(store: Store) -> None:
    broadcasts: list[Stored] = []
    inbox: list[Stored] = []
    for i in range(30):
        if i % 3 == 0:
            broadcasts.append(await store.send_broadcast(_name("Carol"), "carol", f"b{i}"))
        else:
            stored = await _dm(store, "Alice" if i % 2 else "Bob", "carol", f"d{i}")
            assert stored is not None
            inbox.append(stored)
    for results in (broadcasts, inbox):
        tuples = [id_tuple(s.id) for s in results]
        assert tuples == sorted(tuples) and len(set(tuples)) == len(tuples)
        assert all(id_tuple(s.id)[0] == s.ts for s in results)


async def test_concurrent_sends_get_distinct_ids(store: Store) -> None:
    results = await asyncio.gather(*(store.send_broadcast(_name("Carol"), "carol", str(i)) for i in range(50)))
    assert len({s.id for s in results}) == 50


async def test_ids_stay_monotonic_when_the_clock_is_ahead_of_time(store: Store,
                                                                  redis: fakeredis.FakeAsyncRedis) -> None:
    future = int(time.time() * 1000) + 3_600_000  # e.g. written by a Redis whose clock ran ahead
    await redis.set(keys.BROADCAST_CLOCK, f"{future}-7")
    await redis.set(keys.user_clock("carol"), f"{future}-7")
    first = await store.send_broadcast(_name("Carol"), "carol", "a")
    second = await store.send_broadcast(_name("Carol"), "carol", "b")
    assert first.id == f"{future}-8" and first.ts == future
    assert second.id == f"{future}-9"
    # A DM's seq has its direction's parity: "carol" < "dave", so sends to carol are even.
    await redis.hset(keys.account("dave"), mapping={"name": "Dave", "pw": "x"})
    dm = await _dm(store, "Dave", "carol", "c")
    assert dm is not None and dm.id == f"{future}-8" and dm.ts == future
    assert await redis.get(keys.user_clock("carol")) == dm.id.encode()


async def test_ids_reset_sequence_on_a_new_millisecond(store: Store, redis: fakeredis.FakeAsyncRedis) -> None:
    await redis.set(keys.BROADCAST_CLOCK, "1000-41")  # long ago
    stored = await store.send_broadcast(_name("Carol"), "carol", "a")
    ms, seq = id_tuple(stored.id)
    assert ms > 1000 and seq == 0
    assert await redis.get(keys.BROADCAST_CLOCK) == stored.id.encode()


async def test_a_floor_ahead_of_the_clock_numbers_the_dm_above_it(store: Store,
                                                                  redis: fakeredis.FakeAsyncRedis) -> None:
    """The reply's sender had read a DM numbered by another shard's clock, ahead of this one's."""
    ahead = int(time.time() * 1000) + 60_000
    reply = await store.send_dm(_name("Bob"), "bob", "alice", "re", floor=f"{ahead}-4")
    assert reply is not None and reply.id == f"{ahead}-6"  # "alice" < "bob": sends to alice are even
    assert reply.ts == ahead
    older = await store.send_dm(_name("Bob"), "bob", "alice", "again", floor="1000-0")  # a floor behind: no effect
    assert older is not None and older.id == f"{ahead}-8"
    to_bob = await store.send_dm(_name("Alice"), "alice", "bob", "x", floor=f"{ahead}-8")
    assert to_bob is not None and to_bob.id == f"{ahead}-9"  # odd: never equal to an id of the other half


# -- broadcast ---------------------------------------------------------------------------


async def test_broadcast_is_stored_and_published(store: Store, redis: fakeredis.FakeAsyncRedis,
                                                 listener: Listener) -> None:
    stored = await store.send_broadcast(_name("Carol"), "carol", "hello all")
    rows = await _stream(redis, keys.BROADCAST_STREAM)
    assert [rid for rid, _ in rows] == [stored.id]
    assert f.parse_server_frame(rows[0][1]) == f.Message(id=stored.id, from_="Carol", to="*", body="hello all",
                                                         ts=stored.ts)
    assert await listener.messages() == [(keys.BROADCAST_CHANNEL, rows[0][1])]


# -- history -----------------------------------------------------------------------------


async def _conversation(store: Store, n: int) -> list[str]:
    """Alice and Bob take turns, each replying to what they read (the floor, as a session gives it)."""
    ids = ["0-0"]
    for i in range(n):
        sender, to = ("Alice", "bob") if i % 2 == 0 else ("Bob", "alice")
        stored = await store.send_dm(_name(sender), sender.casefold(), to, f"m{i}", floor=ids[-1])
        assert stored is not None
        ids.append(stored.id)
    return ids[1:]


def _ids(page: list[msgspec.Raw]) -> list[str]:
    return [json.loads(bytes(raw))["id"] for raw in page]


async def test_history_is_newest_page_oldest_first(store: Store) -> None:
    ids = await _conversation(store, 12)
    for me, peer in (("alice", "bob"), ("bob", "alice")):
        assert _ids(await store.dm_history(me, peer, None, 5)) == ids[-5:]
        assert _ids(await store.dm_history(me, peer, None, 100)) == ids


async def test_history_before_is_exclusive_and_pages_cover_everything(store: Store) -> None:
    ids = await _conversation(store, 12)
    assert _ids(await store.dm_history("alice", "bob", ids[5], 3)) == ids[2:5]
    pages: list[str] = []
    before = None
    while page := _ids(await store.dm_history("bob", "alice", before, 5)):
        pages = page + pages
        before = page[0]
    assert pages == ids
    assert await store.dm_history("alice", "bob", ids[0], 10) == []


async def test_history_frames_are_the_stored_bytes(store: Store, redis: fakeredis.FakeAsyncRedis) -> None:
    await _conversation(store, 3)
    page = await store.dm_history("alice", "bob", None, 10)
    halves = await _stream(redis, keys.dm_half("alice", "bob")) + await _stream(redis, keys.dm_half("bob", "alice"))
    assert sorted(bytes(r) for r in page) == sorted(raw for _, raw in halves)


async def test_history_of_empty_or_missing_stream_is_empty(store: Store) -> None:
    assert await store.dm_history("alice", "carol", None, 50) == []
    assert await store.history(keys.BROADCAST_STREAM, "1-0", 50) == []


async def test_history_before_an_id_from_the_future_returns_the_newest(store: Store) -> None:
    ids = await _conversation(store, 4)
    assert _ids(await store.dm_history("alice", "bob", "18446744073709551615-0", 2)) == ids[-2:]


# -- inbox and delivered cursor ----------------------------------------------------------


async def test_stream_after_is_exclusive_and_ordered(store: Store) -> None:
    ids = [s.id for s in [await _dm(store, "Alice", "carol", str(i)) for i in range(5)] if s is not None]
    got = await store.stream_after(keys.inbox_stream("carol"), "0-0")
    assert [rid for rid, _ in got] == ids
    assert [rid for rid, _ in await store.stream_after(keys.inbox_stream("carol"), ids[1])] == ids[2:]
    assert await store.stream_after(keys.inbox_stream("carol"), ids[-1]) == []
    assert [rid for rid, _ in await store.stream_after(keys.inbox_stream("carol"), "0-0", limit=2)] == ids[:2]
    assert await store.stream_after(keys.inbox_stream("nobody"), "0-0") == []


async def test_advance_delivered_only_moves_forward(store: Store, redis: fakeredis.FakeAsyncRedis) -> None:
    async def delivered() -> bytes | None:
        return await redis.hget(keys.account("bob"), "delivered")  # type: ignore[no-any-return]

    await store.advance_delivered("bob", "5-3")
    assert await delivered() == b"5-3"
    for older in ("5-3", "5-2", "4-9", "0-0"):
        await store.advance_delivered("bob", older)
        assert await delivered() == b"5-3"
    await store.advance_delivered("bob", "5-10")  # numeric, not string, comparison
    assert await delivered() == b"5-10"
    await store.advance_delivered("bob", "10-0")
    assert await delivered() == b"10-0"
    assert await redis.hget(keys.account("bob"), "name") == b"Bob"  # the rest of the account is untouched


# -- idempotent sends and replay ------------------------------------------------------------


async def test_a_retried_dm_is_stored_and_published_once(
    store: Store, redis: fakeredis.FakeAsyncRedis, listener: Listener
) -> None:
    await redis.hset(keys.account("bob"), mapping={"name": "Bob", "pw": "x"})
    await _online(redis, "bob")
    first = await store.send_dm(_name("alice"), "alice", "bob", "once", ref="c1")
    again = await store.send_dm(_name("alice"), "alice", "bob", "once", ref="c1")
    assert first is not None and again is not None
    assert (again.id, again.ts, again.duplicate, first.duplicate) == (first.id, first.ts, True, False)
    assert len(await _stream(redis, keys.inbox_stream("bob"))) == 1
    assert len(await listener.messages()) == 1
    # Another sender's identical ref is a different message; no ref means no dedupe.
    other = await store.send_dm(_name("carol"), "carol", "bob", "once", ref="c1")
    assert other is not None and other.id != first.id and not other.duplicate
    a = await store.send_dm(_name("alice"), "alice", "bob", "x")
    b = await store.send_dm(_name("alice"), "alice", "bob", "x")
    assert a is not None and b is not None and a.id != b.id
    assert 0 < await redis.ttl(keys.dm_dedupe("bob", "alice", "c1")) <= store.dedupe_ttl


async def test_a_retried_broadcast_is_stored_once(store: Store, redis: fakeredis.FakeAsyncRedis) -> None:
    first = await store.send_broadcast(_name("Carol"), "carol", "hi", ref="b1")
    again = await store.send_broadcast(_name("Carol"), "carol", "hi", ref="b1")
    assert again.id == first.id and again.duplicate
    assert len(await _stream(redis, keys.BROADCAST_STREAM)) == 1


async def test_replay_after_a_position_and_the_recovered_flag(redis: fakeredis.FakeAsyncRedis) -> None:
    store = Store(redis, maxlen=5)
    ids = [(await store.send_broadcast(_name("c"), "c", f"m{i}")).id for i in range(3)]
    replay = await store.replay(keys.BROADCAST_STREAM, ids[0])
    assert [i for i, _ in replay.frames] == ids[1:] and replay.recovered  # short stream: never trimmed
    ids += [(await store.send_broadcast(_name("c"), "c", f"m{i}")).id for i in range(3, 400)]
    first_kept = (await redis.xrange(keys.BROADCAST_STREAM, count=1))[0][0].decode()
    assert first_kept != ids[0]  # MAXLEN ~ trimmed the stream
    lost = await store.replay(keys.BROADCAST_STREAM, ids[0])
    assert not lost.recovered  # messages after the resume point may be gone: say so
    assert lost.frames and lost.frames[-1][0] == ids[-1]
    fine = await store.replay(keys.BROADCAST_STREAM, ids[-3])
    assert fine.recovered and [i for i, _ in fine.frames] == ids[-2:]


async def test_recovered_is_false_when_a_gateway_with_a_smaller_maxlen_trimmed_the_stream(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    """Gateways may run with different --stream-maxlen: the big one must not trust XLEN < its maxlen."""
    big, small = Store(redis, maxlen=10_000), Store(redis, maxlen=5)
    ids = [(await small.send_broadcast(_name("c"), "c", f"m{i}")).id for i in range(300)]
    assert await redis.xlen(keys.BROADCAST_STREAM) < big.maxlen  # the old rule's "never trimmed"
    assert (await redis.xrange(keys.BROADCAST_STREAM, count=1))[0][0].decode() != ids[0]
    for store in (big, small):
        assert not (await store.replay(keys.BROADCAST_STREAM, ids[0])).recovered
        assert (await store.replay(keys.BROADCAST_STREAM, ids[-2])).recovered  # nothing trimmed after it
    # Same for a DM inbox and conversation, and a stream the big gateway never trimmed itself.
    await redis.hset(keys.account("bob"), mapping={"name": "Bob", "pw": "x"})
    dm = [await small.send_dm(_name("alice"), "alice", "bob", f"d{i}") for i in range(300)]
    first = dm[0]
    assert first is not None
    assert not (await big.replay(keys.inbox_stream("bob"), first.id)).recovered


async def test_recovered_from_before_the_first_message_of_an_untrimmed_stream(
    redis: fakeredis.FakeAsyncRedis,
) -> None:
    """The oldest entry newer than the resume point is fine when it is the stream's recorded first one."""
    store = Store(redis, maxlen=5)
    ids = [(await store.send_broadcast(_name("c"), "c", f"m{i}")).id for i in range(4)]
    everything = await store.replay(keys.BROADCAST_STREAM, "0-0")
    assert everything.recovered and [i for i, _ in everything.frames] == ids
    assert (await store.replay(keys.group_stream("nothing-here"), "0-0")).recovered  # an empty stream lost nothing
    # A stream stored before origins were recorded cannot prove it was never trimmed.
    await redis.delete(keys.stream_origin(keys.BROADCAST_STREAM))
    assert not (await store.replay(keys.BROADCAST_STREAM, "0-0")).recovered
    assert (await store.replay(keys.BROADCAST_STREAM, ids[0])).recovered  # its oldest entry is not newer
    # A stream deleted and created again (a group of the same name) starts a new origin.
    await redis.delete(keys.BROADCAST_STREAM)
    again = (await store.send_broadcast(_name("c"), "c", "anew")).id
    replay = await store.replay(keys.BROADCAST_STREAM, "0-0")
    assert replay.recovered and [i for i, _ in replay.frames] == [again]


async def test_a_ref_reused_for_a_different_message_is_a_new_send(
    store: Store, redis: fakeredis.FakeAsyncRedis
) -> None:
    await redis.hset(keys.account("bob"), mapping={"name": "Bob", "pw": "x"})
    first = await store.send_dm(_name("alice"), "alice", "bob", "first", ref="1")
    second = await store.send_dm(_name("alice"), "alice", "bob", "second", ref="1")  # e.g. refs restarted
    assert first is not None and second is not None
    assert second.id != first.id and not second.duplicate
    retry = await store.send_dm(_name("alice"), "alice", "bob", "second", ref="1")
    assert retry is not None and retry.duplicate and retry.id == second.id
    assert len(await _stream(redis, keys.inbox_stream("bob"))) == 2


async def test_dm_to_a_session_on_hold_is_published_but_does_not_move_the_cursor(
    store: Store, redis: fakeredis.FakeAsyncRedis, listener: Listener
) -> None:
    # A freshly claimed (or re-claimed) session holds the cursor until its gateway has replayed
    # the inbox: DMs stored while the name was free must not be skipped by a later live one.
    offline = await _dm(store, "Alice", "bob", "while nobody held the name")
    await redis.hset(keys.session("bob"), mapping={"gw": "gw1", "token": "t", "name": "bob", "hold": "1"})
    live = await _dm(store, "Alice", "bob", "after the claim")
    assert offline is not None and live is not None
    assert [channel for channel, _ in await listener.messages()] == [keys.user_channel("bob")]
    assert await redis.hget(keys.account("bob"), "delivered") is None
    await store.settle("bob", "not-its-token", live.id)  # a stale session: cursor yes, hold stays
    assert await redis.hget(keys.account("bob"), "delivered") == live.id.encode()
    assert await redis.hget(keys.session("bob"), "hold") == b"1"
    await store.settle("bob", "t", offline.id)  # never moves the cursor back; lifts the hold
    assert await redis.hget(keys.account("bob"), "delivered") == live.id.encode()
    assert await redis.hget(keys.session("bob"), "hold") is None
    again = await _dm(store, "Alice", "bob", "settled: live DMs move it again")
    assert again is not None
    assert await redis.hget(keys.account("bob"), "delivered") == again.id.encode()
    await store.settle("carol", "t", "0-0")  # nobody: nothing recorded
    assert await redis.hget(keys.account("carol"), "delivered") is None
