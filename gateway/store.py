"""Message storage in Redis Streams: store-and-publish in one Lua call, history, replay.

A message is appended to its stream and published in the same atomic script
(with ``--durability replica``: published by a second script once a replica
has it, see below), so nothing is ever delivered live without being stored.  Every script touches
the keys of one hash slot (gateway/store_lua.py), so the store runs on a Redis
Cluster as on one Redis: a DM in the recipient's slot, a group message in the
group's, a broadcast in ``{all}``.

Message ids ("<ms>-<seq>" on the Redis clock) come from the clock of the
stream's owner (the recipient, the group, or ``{all}``), not from one global
counter: they strictly increase in every stream and are unique within every
stream and every DM conversation, and the same id names a message in the ack,
live delivery, replay and history.  A DM is numbered above the ``floor`` its
sender's session gives (the last DM it wrote to its socket), so a reply sorts
after what its sender had read, though the two directions of a conversation
are numbered by two clocks (two shards).  The frame JSON is built once, inside
the script, and stored as is: history, replay and live delivery all send
those same bytes.

A DM is stored once, in the recipient's slot: their inbox stream (offline
delivery, resume) and their half of the conversation (history, a merge of the
two halves: gateway/history.py); if the recipient is online it is published to
their channel, advancing their ``delivered`` cursor unless the session is
still on ``hold`` (claimed, inbox replay not yet written: see ``settle``), so
the cursor never passes a DM no session was sent.  A DM to an offline user is
stored and acked; the gateway replays the inbox after the cursor at their next
login.

The sender's rate token is taken first, by a script in the sender's slot; a
refused token means nothing is stored.  Sends are idempotent per (sender,
ref): the store script records its id (and a digest of recipient and body)
under a dedupe key in the stream's slot that lives ``dedupe_ttl`` seconds, and
a retry with the same ref and content (after a reconnect, or an
``unavailable`` whose script did run) gets that id back without storing or
publishing again (it does cost a rate token).  A ref reused for different
content is simply a new send.

**``--durability replica``** (a send is acked only once ``WAIT 1`` says a
replica has it): publishing in the store script would let subscribers see a
message that the master then loses with its replica never having it; the
sender's retry on the promoted replica (no dedupe key there) would store it
again under a new id, and its recipients would see it twice.  So in this mode
the send script stores without publishing, and once ``WAIT`` has confirmed it a
second script in the same slot (``store_lua.PUBLISH_UPTO``) publishes, in id
order, every entry of that stream after its "published up to" cursor
(``keys.published``) up to this id, and moves the cursor; for a DM it reads the
recipient's inbox and does what publishing did (the ``delivered`` cursor,
``hold``).  Then the gateway acks.  Why this publishes only what a replica
has: the earlier entries it publishes have lower ids, so they were appended
to this stream, on this master, before this one (ids strictly increase per
stream; a promoted replica holds what it inherited); a master replicates its
writes in order, and ``WAIT`` returned only once a replica had reached the
offset of this send's write, so it has those entries too.  Steps of two
gateways (whose ``WAIT``s may answer out of id order) run in either order; the
cursor makes the first publish everything up to its id, in order, and the
later one skip what is at or below it, so each entry goes out once, in id
order (publishing straight from the gateway after ``WAIT`` would not: the
client drops an id below its position).  A gateway that dies between the
steps leaves the message to the sender's retry (a dedupe hit runs the same
step) or to the next send to that stream.  The cursor's own move is not waited
for: after a failover it may be behind, and the next step publishes those
entries again with their same ids, which every receiver drops by id.  The cost
is one more round trip per send (after ``WAIT``), on the same pipelined
connection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, cast

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from common import keys
from common.redis import publish_command
from protocol.errors import NotFound, NotMember, RateLimited
from protocol.names import id_tuple

from . import store_lua as lua
from .history import dm_parity, merge_newest, rows
from .pipeline import Pipeline

_RATE = lua.RATE_BUCKET  # gateway/request_rate.py builds its request bucket from it

_json = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Stored:
    id: str
    ts: int
    duplicate: bool = False  # a retry: nothing new was stored


@dataclass(frozen=True, slots=True)
class Replay:
    frames: list[tuple[str, bytes]]  # (id, frame) after the resume point, oldest first
    recovered: bool  # False when trimming may have removed messages after the resume point


def _stored(result: list[Any]) -> Stored:
    return Stored(_text(result[1]), int(result[2]), duplicate=int(result[0]) == 2)


def _digest(ref: str | None, to: str, body: str, file_json: bytes = b"") -> str:
    """What a retry must match to count as the same send ('' = no ref, no dedupe)."""
    if not ref:
        return ""
    return hashlib.blake2b(f"{to}\0{body}\0".encode() + file_json, digest_size=8).hexdigest()


def _recovered(first: list[Any] | None, origin: bytes | None, after: str) -> bool:
    """No entry after ``after`` was trimmed: the stream is empty, its oldest entry is not newer than
    ``after``, or its oldest entry is its recorded first one (never trimmed).  A stream with no recorded
    origin (stored before origins were recorded) counts as possibly trimmed."""
    if not first:
        return True
    oldest = _text(first[0][0])
    return id_tuple(oldest) <= id_tuple(after) or (origin is not None and _text(origin) == oldest)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Store:
    """Appends, reads and replays messages; each script in one hash slot (see the module docstring)."""

    def __init__(
        self, redis: Redis | RedisCluster, maxlen: int = 10_000, dedupe_ttl: int = 300, rate: float = 0.0,
        burst: int = 1, pipeline: Pipeline | None = None, replicas: int = 0,
    ) -> None:
        self.redis = redis
        self.pipeline = pipeline  # sends go through it when given (the gateway), else through ``redis``
        self.replicas = replicas  # --durability replica: sends ack only once this many replicas have them
        self.maxlen = maxlen
        self.dedupe_ttl = dedupe_ttl
        self.rate = rate  # sends per second per user (0: unlimited)
        self.burst = burst
        self.publish = publish_command(redis)  # SPUBLISH on a cluster: the channel shares the script's slot
        # --durability replica: store, WAIT, then publish (a second script); else store-and-publish in one.
        self.deferred = bool(replicas) and pipeline is not None
        self._rate = redis.register_script(lua.RATE)
        self._send_dm = redis.register_script(lua.SEND_DM)
        self._send_broadcast = redis.register_script(lua.SEND_BROADCAST)
        self._send_group = redis.register_script(lua.SEND_GROUP)
        self._publish_upto = redis.register_script(lua.PUBLISH_UPTO)
        self._advance = redis.register_script(lua.ADVANCE)
        self._settle = redis.register_script(lua.SETTLE)

    def _run(self, script: Any, keys: list[Any], args: list[Any]) -> Awaitable[Any]:
        """The script's reply, to await: through the auto-pipeline (its future, no extra frame) or redis-py."""
        if self.pipeline is not None:
            return self.pipeline.evalsha(script, keys, args)
        return cast(Awaitable[Any], script(keys=keys, args=args))

    def _send(self, script: Any, keys: list[Any], args: list[Any]) -> Awaitable[Any]:
        """A store step of a send, acked only once ``replicas`` replicas have it (``WAIT``, in the
        pipeline's same write).  The rate step does not wait: a token lost in a failover costs nothing.
        Through redis-py (no pipeline: tools and tests) ``replicas`` is not applied."""
        if self.pipeline is not None:
            return self.pipeline.evalsha(script, keys, args, self.replicas)
        return self._run(script, keys, args)

    async def _take_token(self, sender_key: str) -> None:
        """Step 1 of a send, in the sender's slot: one token from their bucket, or RateLimited (and
        nothing is stored).  No call at all when sends are unlimited."""
        if self.rate > 0:
            result = await self._run(self._rate, [keys.rate(sender_key)], [self.rate, self.burst])
            if int(result[0]) == -9:
                raise RateLimited("sending too fast", retry_after=int(result[1]) / 1000)

    def _args(self, digest: str, sender_json: bytes, body: str, channel: str, file_json: bytes,
              floor: str = "", parity: str = "") -> list[Any]:
        """ARGV[1..10] of a send script, in the layout gateway/store_lua.py documents."""
        return [digest, self.dedupe_ttl, sender_json, _json.encode(body), self.maxlen, channel, file_json,
                "" if self.deferred else self.publish, floor, parity]

    async def _published(self, result: list[Any], stream: str, channel: str, *dm: str) -> Stored:
        """Step 2 of a send in ``--durability replica`` (step 1 stored it and ``WAIT`` confirmed): publish
        the stream up to this id, a retry's too (its first try may have died before this step); ``dm``:
        the recipient's account and session.  Nothing to do when the script published itself."""
        stored = _stored(result)
        if self.deferred:
            await self._run(self._publish_upto, [keys.published(stream), stream, *dm],
                            [stored.id, self.publish, channel])
        return stored

    async def send_dm(
        self, sender_json: bytes, sender_key: str, to_key: str, body: str, ref: str | None = None,
        file_json: bytes = b"", floor: str = "",
    ) -> Stored | None:
        """Store and deliver a DM once per (sender, ref); None if the recipient has no account.

        ``floor``: the highest DM id the sender's session has written to its socket; the new id is
        above it, so a reply sorts after the message it answers (ids of the two directions come from
        two clocks).  Two calls at most: the rate token (sender's slot), then one script in the
        recipient's slot that dedupes, checks the account, stores, publishes and moves ``delivered``."""
        await self._take_token(sender_key)
        inbox, channel = keys.inbox_stream(to_key), keys.user_channel(to_key)
        result = await self._send(
            self._send_dm,
            [keys.dm_dedupe(to_key, sender_key, ref or ""), keys.user_clock(to_key), inbox, keys.stream_origin(inbox),
             keys.dm_half(to_key, sender_key), keys.account(to_key), keys.session(to_key), keys.published(inbox)],
            self._args(_digest(ref, to_key, body, file_json), sender_json, body, channel, file_json,
                       floor, dm_parity(to_key, sender_key)),
        )
        if int(result[0]) == 0:
            return None
        return await self._published(result, inbox, channel, keys.account(to_key), keys.session(to_key))

    async def send_broadcast(
        self, sender_json: bytes, sender_key: str, body: str, ref: str | None = None, file_json: bytes = b""
    ) -> Stored:
        """Store and publish a broadcast once per (sender, ref), in ``{all}`` with its own clock."""
        await self._take_token(sender_key)
        stream = keys.BROADCAST_STREAM
        result = await self._send(
            self._send_broadcast,
            [keys.broadcast_dedupe(sender_key, ref or ""), keys.BROADCAST_CLOCK, stream, keys.stream_origin(stream),
             keys.published(stream)],
            self._args(_digest(ref, "*", body, file_json), sender_json, body, keys.BROADCAST_CHANNEL, file_json),
        )
        return await self._published(result, stream, keys.BROADCAST_CHANNEL)

    async def send_group(
        self, sender_json: bytes, sender_key: str, gkey: str, body: str, ref: str | None = None,
        file_json: bytes = b"",
    ) -> Stored:
        """Store and publish to a group's members once per (sender, ref), in the group's slot with the
        group's clock; NotFound / NotMember otherwise (checked in the same script)."""
        await self._take_token(sender_key)
        stream = keys.group_stream(gkey)
        result = await self._send(
            self._send_group,
            [keys.group_dedupe(gkey, sender_key, ref or ""), keys.group_clock(gkey), stream,
             keys.stream_origin(stream), keys.group(gkey), keys.group_members(gkey), keys.published(stream)],
            [*self._args(_digest(ref, "#" + gkey, body, file_json), sender_json, body, keys.group_channel(gkey),
                         file_json), sender_key],
        )
        status = int(result[0])
        if status == -1:
            raise NotFound("no such group")
        if status == 0:
            raise NotMember()
        return await self._published(result, stream, keys.group_channel(gkey))

    async def history(self, stream: str, before: str | None, limit: int) -> list[msgspec.Raw]:
        """Up to ``limit`` frames of a group or the broadcast stream before ``before`` (exclusive),
        oldest first."""
        start = f"({before}" if before else "+"
        found: list[Any] = await self.redis.xrevrange(stream, start, "-", count=limit) or []
        found.reverse()
        return [msgspec.Raw(fields[b"f"]) for _, fields in found]

    async def dm_history(self, key: str, peer: str, before: str | None, limit: int) -> list[msgspec.Raw]:
        """Up to ``limit`` frames of ``key``'s conversation with ``peer`` before ``before`` (exclusive),
        oldest first: the newest of its two halves, read in one pipeline (one per slot on a cluster)."""
        start = f"({before}" if before else "+"
        if key == peer:  # notes to self: one half
            return await self.history(keys.dm_half(key, key), before, limit)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrevrange(keys.dm_half(key, peer), start, "-", count=limit)
            pipe.xrevrange(keys.dm_half(peer, key), start, "-", count=limit)
            mine, theirs = await pipe.execute()
        return [msgspec.Raw(frame) for frame in merge_newest(rows(mine), rows(theirs), limit)]

    async def stream_after(self, stream: str, after: str, limit: int = 10_000) -> list[tuple[str, bytes]]:
        """Stream entries strictly after ``after``, oldest first: (id, frame)."""
        found: list[Any] = await self.redis.xrange(stream, f"({after}", "+", count=limit) or []
        return [(_text(rid), fields[b"f"]) for rid, fields in found]

    async def replay(self, stream: str, after: str) -> Replay:
        """Everything after ``after``, and whether that is provably everything.

        Trimming (``MAXLEN ~``, by whichever gateway adds to the stream, each
        with its own ``--stream-maxlen``) only ever removes the oldest entries.
        So nothing after ``after`` is missing if the oldest surviving entry is
        not newer than ``after``, or if it is still the stream's first entry
        (recorded in the stream's origin key, ``keys.stream_origin``, in its own
        slot, by the send scripts when they create the stream: it was never
        trimmed).  Otherwise we cannot prove it and say False.  Neither test
        depends on any gateway's maxlen.  (Redis 7's ``XINFO STREAM``
        ``max-deleted-entry-id`` would be exact, but Redis 7.0 moves it only on
        ``XDEL``, not when ``MAXLEN`` trims, and the embedded Redis is 6.2.)
        """
        page = 1000
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrange(stream, f"({after}", "+", count=page)
            pipe.xrange(stream, "-", "+", count=1)
            pipe.get(keys.stream_origin(stream))
            found, first, origin = await pipe.execute()
        frames = [(_text(rid), fields[b"f"]) for rid, fields in found or []]
        while len(found or ()) == page:  # a long absence: read on, one page per round trip
            found = await self.stream_after(stream, frames[-1][0], page)
            frames.extend(found)
        return Replay(frames, _recovered(first, origin, after))

    async def advance_delivered(self, key: str, message_id: str) -> None:
        """Move a user's delivered cursor forward (never back)."""
        await self._advance(keys=[keys.account(key)], args=[message_id])

    async def settle(self, key: str, token_hash: str, written_upto: str) -> None:
        """A session has written every inbox DM up to ``written_upto`` (its replay is done): record it,
        and let DMs published to it from now on move the cursor (see ``store_lua.SETTLE``)."""
        await self._run(self._settle, [keys.account(key), keys.session(key)], [written_upto, token_hash])
