"""Who is online: name claims, releases, gateway leases and reaping, one hash slot per step.

The data (common.keys), by hash tag:

* ``{u:<key>}`` ``session(key)``: who holds the name: ``gw``, ``epoch`` (of that
  gateway's lease when it was claimed), ``token`` (hash), ``name``, ``hold``.
  **This is the authority**: a claim is decided here, in one script, so two
  gateways racing for a name see exactly one winner.
* ``{reg}`` ``GATEWAYS`` (lease expiry per gateway), ``GATEWAY_EPOCHS`` (the
  epoch of each live lease; a new lease gets a higher one), ``REAPING`` (leases
  taken away whose names are still being freed), ``ONLINE`` (the online
  display names, paged with ZRANGEBYLEX) and ``ONLINE_OWNERS`` (which session
  put each name there).
* ``{gw:<id>}`` ``gateway_users(id)``: one member per session the gateway
  holds, ``"<key> <token hash> <epoch>"``: where the reaper looks.
* ``{pres:…}`` ``presence_channel(key)``: the user's presence partition.

A Redis Cluster runs a script only if all its keys share one slot, and a
sharded channel only on its own slot, so every operation is a sequence of
single-slot steps (presence/registry_lua.py), each idempotent, in this order:

**Claim** (a login): (1) ``{gw}`` add the member; (2) ``{u}`` decide: take the
name if it is free, ours (a retry), or the takeover token matches; (3) on a
takeover, ``{gw:<old>}`` drop the old member and publish the kick on the old
gateway's control channel; (4) ``{reg}`` check the lease epoch is still live,
record the owner, add the name to ONLINE, read a page of it; (5)
``{pres}`` publish ``online`` if step 4 added the name.  A refused claim drops
its member again.  The epoch comes from the gateway's last registration or
renewal (or is read first: a gateway without a lease gets NoLease with nothing
written); if the lease was lost since, step 4 answers NoLease.

**Release** (a logout): (1) ``{u}`` free the session if it is this gateway's
and token's; (2) ``{reg}`` take the name off ONLINE if this session put it
there; (3) ``{pres}`` publish ``offline`` if step 2 took it off; (4) ``{gw}``
drop the member.

**Reap** (the presence service; a gateway's own clean shutdown): (1) ``{reg}``
take the lease away (its epoch E moves to REAPING); (2) ``{gw}`` read the
members; (3) each ``{u}``: free the session if it still names this gateway and
token under an epoch ≤ E; (4) ``{reg}`` drop those sessions' names from ONLINE
(owner check); (5) ``{pres}`` publish ``offline``; (6) ``{gw}`` drop the
members (≤ E); (7) ``{reg}`` clear REAPING.

**Re-claim** after a lost lease (gateway/lease.py): the gateway registers a new
lease (epoch E2), adds its members under E2, takes back each session in its
slot (free: taken again; still its own: moved to E2; someone else's: lost), then
step 4 and 5 of a claim for all of them at once.

Why a crash (or a Redis error) between two steps is safe, and what repairs it:

* **The gateway's member is written before the session, and dropped after
  it.**  So every session naming a gateway is in that gateway's set, and the
  reaper, walking the set, finds it.  A member without a session (a claim that
  stopped after step 1, a release after step 1) is harmless: the reaper checks
  the session before freeing, and drops the member.  Members carry the token
  and epoch, so a late removal never drops a newer session's member.
* **The lease is checked after the session is written** (claim step 4, in the
  same script that touches ONLINE), and the reaper takes the lease away before
  it reads the set.  So a claim whose step 4 ran is in the set the reaper
  reads; one whose step 4 comes later fails with NoLease, and the gateway
  either claims again under a new lease (same token: step 2 takes its own
  session back) or releases it (gateway/login.py).  A gateway that crashed
  after step 2 of a claim leaves a session with no ONLINE entry: the reaper
  frees it when the lease expires.
* **A session under a dead lease never blocks its user.**  If a claim is
  refused by a session whose gateway's lease epoch is no longer live (its
  gateway crashed mid-claim after the reaper had read the set, say), the
  claim frees that session as the reaper would (steps 3-6) and tries once
  more: the next claim repairs it.
* **ONLINE follows the sessions, owner-checked.**  A name is added (with its
  session as owner) only while the lease is live, and removed only by the
  session that added it (or the reaper of its lease).  A release that stopped
  after step 1 leaves the name listed: the lease loop retries the release
  (``Logins.retry_releases``; every step is idempotent, step 2 still finds its
  owner entry), or, if the gateway died, the reaper (step 4 for its members),
  or the user's next claim rewrites the entry.
* **A login that failed midway** (issue 15): its claim wrote the session (step
  2) and a later step, or the login's replay, failed; the gateway answers
  ``unavailable`` and releases it, but that release may fail too (queued for
  the lease loop), or, after a timeout, reach Redis before the claim's own
  delayed step 2.  The client retries at once, and must not find that dead
  attempt holding the name (``username_taken`` is final to clients).  Such a
  session is still on ``hold`` (only a completed login settles it), and
  ``since`` says when it was claimed.  So a gateway's claim
  (``abandoned_after``: its login timeout): (1) refuses a holder on hold with
  NamePending (the gateway answers ``unavailable``, "try again"), not as
  taken: it may be a failed login; (2) takes over a holder still on hold
  ``abandoned_after`` after its claim, as with its token (the kick reaches
  nobody, or the socket of a login that slow); a live, completed (settled)
  session is refused as ever.  And a gateway finishes a queued release of a
  name before it claims that name again (gateway/login.py), so a retry on the
  same gateway gets in as soon as Redis answers.  Retrying the release inline
  before answering was not chosen: Redis is what failed, and a bounded retry
  only delays the answer; it also cannot help the release that ran before a
  delayed step 2.
* **The reaper is resumable**: a reaper that dies after step 1 leaves the
  gateway in REAPING, and the next sweep (any presence service) redoes every
  step; a session already freed is not freed twice, a name already taken off
  is not published twice.  Sessions re-claimed meanwhile under a newer epoch
  are left alone (steps 3, 4 and 6 compare epochs).
* **A takeover** moves the session in step 2; the kick (step 3) is published on
  the old gateway's control channel, in that gateway's slot.  If it is lost,
  the old socket stays open (as when a kick is lost to a pub/sub outage) but
  no longer holds the name: its release does nothing, and its member goes with
  its release or its gateway's reap.

Presence events are published in their own step, after the index changed, on
the user's partition, and each publisher then reads the index and publishes a
correction if it no longer agrees (two processes' events for one user may be
published in the opposite order of their changes; the last one published is
then still right).  A crash between an index change and its event loses the
event: the index (``online_page``, re-read by gateways after any outage) is
the truth.

Scripts take the time from Redis (``TIME``), so gateways with skewed clocks
agree on lease expiry.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from common import keys
from common.redis import publish_command
from protocol import control
from protocol import frames as f

from . import registry_lua as lua

_BATCH = 100  # per-session steps sent at once while reaping or re-claiming


@dataclass(frozen=True, slots=True)
class OnlinePage:
    """A page of the online names, in code-point order.

    ``next`` (the last name of this page) continues after it, None when nothing follows;
    ``total`` counts everyone online, None when ``names`` is everyone.
    """

    names: list[str]
    total: int | None = None
    next: str | None = None


def _page(names: list[str], total: int, limit: int, after: str | None) -> OnlinePage:
    """``names`` is up to ``limit + 1`` names after ``after``: the extra one says more follow."""
    more = len(names) > limit
    names = names[:limit]
    whole = not more and after is None
    return OnlinePage(names, None if whole else total, names[-1] if more else None)


@dataclass(frozen=True, slots=True)
class Claim:
    """Result of a successful claim: where offline delivery resumes, and (a page of) who is online."""

    delivered: str
    online: OnlinePage
    took_over: bool = False  # the name was moved from another (presumed dead) connection


class NoLease(Exception):
    """The gateway's lease is gone (reaped or Redis restarted empty): register again."""


class NamePending(Exception):
    """The name is held by a session whose login has not completed (still on ``hold``): it may yet
    fail and be released, or be taken over once abandoned, so the answer is "try again", not "taken"."""


def token_hash(token: str) -> str:
    """What Redis keeps of a session token: a leaked Redis dump cannot take a name over."""
    return hashlib.sha256(token.encode()).hexdigest()


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _member(key: str, token: str, epoch: int | str) -> str:
    """A gateway's set member for one session (common.keys.gateway_users)."""
    return f"{key} {token} {epoch}"


def _parse_member(member: str) -> tuple[str, str, int]:
    """(key, token hash, epoch); a bare key (older data) stands for any token under epoch 0."""
    parts = member.rsplit(" ", 2)
    if len(parts) == 3 and parts[2].isdigit():
        return parts[0], parts[1], int(parts[2])
    return member, "", 0


def held_key(member: str | bytes) -> str:
    """The name key in a member of ``keys.gateway_users`` (for displays of who a gateway holds)."""
    return _parse_member(_s(member))[0]


async def _in_batches(calls: Iterable[Awaitable[Any]]) -> list[Any]:
    """Await ``calls`` ``_BATCH`` at a time (a big gateway's sessions must not take every connection).

    ``calls`` is consumed lazily (a generator): after a failure no call is left created and never awaited."""
    it = iter(calls)
    out: list[Any] = []
    while batch := list(itertools.islice(it, _BATCH)):
        out.extend(await asyncio.gather(*batch))
    return out


class Registry:
    """The operations on presence state; gateway and presence service share it."""

    def __init__(self, redis: Redis | RedisCluster, lease_ttl: float = 10.0) -> None:
        self.redis = redis
        self.lease_ttl_ms = int(lease_ttl * 1000)
        self._publish = publish_command(redis)
        self._lease = redis.register_script(lua.LEASE)
        self._take = redis.register_script(lua.TAKE)
        self._free = redis.register_script(lua.FREE)
        self._online_add = redis.register_script(lua.ONLINE_ADD)
        self._online_drop = redis.register_script(lua.ONLINE_DROP)
        self._reap_start = redis.register_script(lua.REAP_START)
        self._reap_done = redis.register_script(lua.REAP_DONE)
        self._kick = redis.register_script(lua.KICK)
        # The lease epoch each gateway registered through this registry last had (saves a round trip per
        # claim).  A stale one is harmless: claim step 4 checks the epoch and answers NoLease.
        self._epochs: dict[str, int] = {}

    # -- leases ------------------------------------------------------------------------

    async def register_gateway(self, node_id: str) -> int:
        """Take a lease (or extend the live one); returns its epoch."""
        self._epochs.pop(node_id, None)
        epoch = int(await self._lease(keys=self._lease_keys, args=[node_id, self.lease_ttl_ms, "register"]))
        self._epochs[node_id] = epoch
        return epoch

    async def renew_lease(self, node_id: str) -> bool:
        """Extend the lease; False means it was reaped and must be registered again."""
        epoch = int(await self._lease(keys=self._lease_keys, args=[node_id, self.lease_ttl_ms, "renew"]))
        if epoch:
            self._epochs[node_id] = epoch
        else:
            self._epochs.pop(node_id, None)
        return bool(epoch)

    @property
    def _lease_keys(self) -> list[str]:
        return [keys.GATEWAYS, keys.GATEWAY_EPOCHS, keys.LEASE_COUNTER]

    async def _epoch(self, node_id: str) -> int | None:
        """The epoch of the gateway's live lease, None if it has none."""
        epoch = await self.redis.hget(keys.GATEWAY_EPOCHS, node_id)
        return None if epoch is None else int(epoch)

    # -- claim ---------------------------------------------------------------------------

    async def claim(
        self, key: str, name: str, node_id: str, token: str, takeover_token: str | None = None,
        online_limit: int = 1000, abandoned_after: float = 0.0,
    ) -> Claim | None:
        """Take ``name`` for a session on ``node_id``; None if a completed session holds it.

        With ``takeover_token`` (the holder's session token) the name is taken over
        instead of refused.  Only hashes of tokens are stored and compared.  With
        ``abandoned_after`` > 0 (a gateway's login passes its login timeout), a holder
        still on ``hold`` (its login has not completed) raises NamePending, and once
        that many seconds have passed since its claim it is taken over as with its
        token: a login that failed midway and whose release has not reached Redis
        must not lock its user out (see "A login that failed midway").  With 0 such a
        holder is refused like any other.
        ``Claim.online`` is the first ``online_limit`` online names (0: none, for
        clients that do not follow presence).  NoLease: the gateway has no lease; if
        it was lost during the claim, the session may hold the name under the dead
        lease, and the caller claims again with the same token (after registering)
        or releases it.  Claiming again with the same token is always safe.
        """
        epoch = self._epochs.get(node_id) or await self._epoch(node_id)
        if epoch is None:
            raise NoLease(node_id)
        t = token_hash(token)
        member = _member(key, t, epoch)
        users = keys.gateway_users(node_id)
        await self.redis.sadd(users, member)  # 1: before the session names this gateway
        takeover = token_hash(takeover_token) if takeover_token else ""
        take_args: list[str | int] = [node_id, epoch, t, name, takeover, "claim", int(abandoned_after * 1000)]
        result = await self._take(keys=[keys.session(key), keys.account(key)], args=take_args)  # 2
        if int(result[0]) == 0 and await self._free_if_dead(key, result):
            result = await self._take(keys=[keys.session(key), keys.account(key)], args=take_args)
        status = int(result[0])
        if status == 0:
            await self.redis.srem(users, member)
            if abandoned_after > 0 and _s(result[4]) == "1":
                raise NamePending(key)
            return None
        if status == 2:  # 3: the old gateway forgets the session and closes its socket
            old_gw, old_token, old_epoch = _s(result[2]), _s(result[3]), _s(result[4])
            kick = control.encode(control.Kick(user=key, token=old_token))
            await self._kick(keys=[keys.gateway_users(old_gw)],
                             args=[_member(key, old_token, old_epoch), keys.gateway_channel(old_gw), self._publish,
                                   kick])
        added, names, total = await self._add_online(node_id, epoch, [(key, t, name)], max(0, online_limit))  # 4
        await self._announce(added, "online")  # 5
        online = _page(names, total, online_limit, None) if online_limit > 0 else OnlinePage([])
        return Claim(delivered=_s(result[1]), online=online, took_over=status == 2)

    async def _free_if_dead(self, key: str, refused: list[Any]) -> bool:
        """The session holding ``key`` (a refused claim's answer): if its lease epoch is no longer live,
        free it as the reaper would and say True (its gateway died after the reaper had passed)."""
        node, token, epoch = _s(refused[1]), _s(refused[2]), int(refused[3])
        if await self._epoch(node) == epoch:
            return False
        await self._free_sessions(node, epoch, [(key, token, epoch)])
        return True

    async def _add_online(
        self, node_id: str, epoch: int, sessions: list[tuple[str, str, str]], limit: int
    ) -> tuple[list[tuple[str, str]], list[str], int]:
        """Claim step 4: (key, name) newly online, the first ``limit`` + 1 names, the count; NoLease if the
        lease epoch is no longer live (the sessions stay written: claim again, or release)."""
        by_name = {name: key for key, _, name in sessions}
        args: list[Any] = [node_id, epoch, limit]
        for session in sessions:
            args.extend(session)
        result = await self._online_add(keys=[keys.ONLINE, keys.ONLINE_OWNERS, keys.GATEWAY_EPOCHS], args=args)
        if int(result[0]) == -1:
            if self._epochs.get(node_id) == epoch:
                del self._epochs[node_id]
            raise NoLease(node_id)
        added = [(by_name[_s(n)], _s(n)) for n in result[1]]
        return added, [_s(n) for n in result[2]], int(result[3])

    async def _announce(self, users: list[tuple[str, str]], status: str) -> None:
        """Publish presence events, each on its user's partition (a step of its own: its own slot), then
        confirm them against the index and publish the correction for any the index no longer agrees with.

        Two processes can change one user's entry and publish in the opposite order (a reaper's
        ``offline`` after a new login's ``online``).  Every publisher reads the index after its publish,
        so the last event published for a user always says what the index says once changes stop.
        """
        if not users:
            return
        publish = self.redis.spublish if self._publish == "SPUBLISH" else self.redis.publish

        async def send(batch: list[tuple[str, str]], what: str) -> None:
            await _in_batches(
                publish(keys.presence_channel(key), f.encode(f.Presence(user=name, status=what))) for key, name in batch
            )

        await send(users, status)
        scores = await self.redis.zmscore(keys.ONLINE, [name for _, name in users])
        wrong = [user for user, score in zip(users, scores, strict=True) if (score is not None) != (status == "online")]
        if wrong:
            await send(wrong, "offline" if status == "online" else "online")

    # -- re-claim ------------------------------------------------------------------------

    async def reclaim(self, node_id: str, sessions: list[tuple[str, str, str]]) -> list[int]:
        """Take back the names of ``(key, name, token hash)`` after a lost lease: one status each
        (1 re-claimed, 2 still ours, 0 someone else's); NoLease if the lease is not registered."""
        if not sessions:
            return []
        epoch = await self._epoch(node_id)
        if epoch is None:
            raise NoLease(node_id)
        users = keys.gateway_users(node_id)
        await self.redis.sadd(users, *(_member(key, t, epoch) for key, _, t in sessions))
        results = await _in_batches(
            self._take(keys=[keys.session(key), keys.account(key)], args=[node_id, epoch, t, name, "", "reclaim", 0])
            for key, name, t in sessions
        )
        statuses = [int(r[0]) for r in results]
        ours = [(key, t, name) for (key, name, t), status in zip(sessions, statuses, strict=True) if status]
        if ours:
            added, _, _ = await self._add_online(node_id, epoch, ours, 0)
            await self._announce(added, "online")
        lost = [_member(key, t, epoch) for (key, _, t), status in zip(sessions, statuses, strict=True) if not status]
        if lost:
            await self.redis.srem(users, *lost)
        return statuses

    # -- release and reaping -------------------------------------------------------------

    async def release(self, key: str, node_id: str, token: str) -> bool:
        """Free a name if this session still holds it; publishes ``offline``.  Idempotent: a release
        retried after an error finishes what the first attempt left."""
        t = token_hash(token)
        freed = await self._free(keys=[keys.session(key)], args=[node_id, t, ""])  # 1
        removed = await self._drop_online(node_id, "", [(key, t)])  # 2
        await self._announce(removed, "offline")  # 3
        epoch = _s(freed[1]) if freed else self._epochs.get(node_id) or await self._epoch(node_id)
        if epoch is not None:
            await self.redis.srem(keys.gateway_users(node_id), _member(key, t, epoch))  # 4
        return bool(freed) or bool(removed)

    async def _drop_online(
        self, node_id: str, max_epoch: int | str, sessions: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """Take these sessions' names off ONLINE (each only if that session put it there): (key, name)s."""
        args: list[Any] = [node_id, max_epoch]
        for session in sessions:
            args.extend(session)
        out = [_s(x) for x in await self._online_drop(keys=[keys.ONLINE, keys.ONLINE_OWNERS], args=args)]
        return list(zip(out[::2], out[1::2], strict=True))

    async def _free_sessions(self, node_id: str, max_epoch: int, sessions: list[tuple[str, str, int]]) -> list[str]:
        """Reap steps 3-6 for ``(key, token hash, member epoch)`` of one gateway: the names freed."""
        results = await _in_batches(
            self._free(keys=[keys.session(key)], args=[node_id, t, max_epoch]) for key, t, _ in sessions
        )
        removed = await self._drop_online(node_id, max_epoch, [(key, t) for key, t, _ in sessions])
        await self._announce(removed, "offline")
        members = [_member(key, t, e) if t else key for key, t, e in sessions]
        for start in range(0, len(members), 1000):
            await self.redis.srem(keys.gateway_users(node_id), *members[start:start + 1000])
        return [_s(r[0]) for r in results if r]

    async def release_gateway(self, node_id: str) -> list[str]:
        """Free every name a gateway holds and drop its lease (clean shutdown)."""
        self._epochs.pop(node_id, None)
        _, freed = await self._run_reap(node_id)
        return freed

    async def reap_expired(self, batch: int = 16) -> tuple[list[str], list[str]]:
        """Free the names of gateways whose lease expired, and finish reaps a reaper left unfinished:
        (gateway ids, names freed)."""
        return await self._run_reap("", batch)

    async def _run_reap(self, node_id: str, batch: int = 16) -> tuple[list[str], list[str]]:
        started = [_s(x) for x in await self._reap_start(
            keys=[keys.GATEWAYS, keys.GATEWAY_EPOCHS, keys.REAPING], args=[batch, node_id])]
        ids: list[str] = []
        freed: list[str] = []
        for node, epoch_text in zip(started[::2], started[1::2], strict=True):
            epoch = int(epoch_text)
            members = [_parse_member(_s(m)) for m in await self.redis.smembers(keys.gateway_users(node))]
            freed += await self._free_sessions(node, epoch, [m for m in members if m[2] <= epoch])
            await self._reap_done(keys=[keys.REAPING], args=[node, epoch])
            ids.append(node)
        return ids, freed

    # -- reading -------------------------------------------------------------------------

    async def online(self) -> list[str]:
        """Everyone online, in code-point order (for the admin window; clients get pages)."""
        names: list[Any] = await self.redis.zrange(keys.ONLINE, 0, -1)
        return [_s(n) for n in names]

    async def online_page(self, after: str | None, limit: int) -> OnlinePage:
        """Up to ``limit`` online names after ``after`` (None: from the first), in one round trip.

        Paging by name is stable: a name online during the whole walk is on exactly
        one page; one that comes or goes meanwhile may or may not be.
        """
        start = "-" if after is None else b"(" + after.encode()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrangebylex(keys.ONLINE, start, "+", start=0, num=limit + 1)
            pipe.zcard(keys.ONLINE)
            names, total = await pipe.execute()
        return _page([_s(n) for n in names], int(total), limit, after)

    async def gateways(self) -> dict[str, int]:
        """Every live gateway with its lease expiry (ms since the epoch, Redis clock)."""
        rows: list[Any] = await self.redis.zrange(keys.GATEWAYS, 0, -1, withscores=True)
        return {_s(node): int(score) for node, score in rows}

    async def holder(self, key: str) -> str | None:
        """The gateway holding a name, if any."""
        gw = await self.redis.hget(keys.session(key), "gw")
        return None if gw is None else _s(gw)
