"""Claims on name skeletons, each in its own slot, separate from the account (issue 15, docs/cluster.md).

A name's two UTS #39 skeletons (protocol/confusables.py) live in ``{skel:…}``
slots and its account in ``{u:<key>}``: no script may touch both on a Redis
Cluster.  A registration is therefore ordered steps (gateway/accounts.py
``Accounts._register``):

1. ``SET`` the attempt key ``{u:<key>}:reg:<attempt>`` with a lease
   (:data:`REGISTRATION_LEASE_MS`);
2. claim each skeleton (:meth:`Skeletons.claim`, one script in the skeleton's
   slot), writing ``"<key> <attempt>"``;
3. create the account in its own slot, only if the attempt key is still there
   (the script deletes it: the attempt ends as the account starts).

**What holds a skeleton.**  A skeleton's value names its holder's account key
and, when a registration wrote it, the attempt.  It is *held* while that
account exists or that attempt key does; otherwise it is **free**, and the
next claim takes it over (compare-and-set on the exact value seen, so two
claimers cannot both take one stale value).  That is the repair for every
crash between the steps:

* a crash after step 1 or 2 leaves claims naming an attempt that never
  became an account; its lease expires and the claims are free again (the
  same name's own retry takes them at once: a holder always re-claims its
  own skeleton);
* a registration that fails after step 2 (a look-alike holds the other
  skeleton, the lease ran out, or the account step failed or timed out)
  deletes its attempt key first, so a step 3 still on its way can no longer
  create the account, and then its claims (those still its own value), but
  only if the account does not exist: if it does, step 3 ran after all or
  another login of the same name created it, and the claims are that
  account's.  Should the clean-up fail, the lease frees the claims.  (One
  narrow race remains: a second attempt of the same name that re-claimed
  after this one and creates the account just after that check.  Its own
  login re-claims both skeletons at once, in the step after the account,
  which leaves a look-alike a window of two round trips.)

**Why two look-alikes still cannot both register.**  A claimer takes over a
claim only after reading that its attempt key and account are both missing.
Step 3 needs the attempt key, and an attempt key, once gone, never comes back
(every attempt has a new random id, so a retry's claim is a new value and the
compare-and-set on the old one fails).  So when a takeover happens, the old
attempt can no longer create its account.  An account whose claims were
stolen cannot exist.  The one cost: a look-alike of a name whose registrant
crashed mid-registration is refused until the lease ends.

**Operators** who delete an impostor's account free its skeletons too: a
skeleton naming a missing account is free.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from common import keys
from protocol.confusables import name_skeletons

REGISTRATION_LEASE_MS = 60_000  # an attempt's claims count this long at most without an account
CLAIM_TRIES = 4  # takeovers of stale claims raced by other claimers before we call the skeleton taken

# KEYS: skeleton ; ARGV: new value, claimer's account key, the stale value to take over ("" none)
# -> {1} claimed | {0, current value} held by someone else (as far as this slot knows)
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur and not (ARGV[3] ~= '' and cur == ARGV[3]) and string.match(cur, '^[^ ]*') ~= ARGV[2] then
  return {0, cur}
end
redis.call('SET', KEYS[1], ARGV[1])
return {1}
"""

# KEYS: skeleton ; ARGV: value -> 1 deleted (it was still this value) | 0
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def skeleton_keys(key: str) -> list[str]:
    """The keys of the two skeletons of the account key ``key`` (fold, upper)."""
    fold, upper = name_skeletons(key)
    return [keys.name_skeleton("f", fold), keys.name_skeleton("u", upper)]


def holder(value: str) -> tuple[str, str]:
    """``(account key, attempt or "")`` of a skeleton's value."""
    owner, _, attempt = value.partition(" ")
    return owner, attempt


class Skeletons:
    """Reads and claims skeletons; every script touches one key, so it runs on any one shard."""

    def __init__(self, redis: Redis | RedisCluster) -> None:
        self.redis = redis
        self._claim: Any = redis.register_script(_CLAIM)
        self._release: Any = redis.register_script(_RELEASE)

    async def held(self, value: str) -> bool:
        """Does the claim ``value`` still count: its account exists, or its registration attempt is on?"""
        owner, attempt = holder(value)
        names = [keys.account(owner)] + ([keys.registration(owner, attempt)] if attempt else [])
        return int(await self.redis.exists(*names)) > 0  # one slot, {u:<owner>}

    async def taken(self, key: str) -> bool:
        """Is a skeleton of ``key`` held by another name?  A read only: the claim decides."""
        for skeleton in skeleton_keys(key):
            raw = await self.redis.get(skeleton)
            if raw is not None:
                value = _text(raw)
                if holder(value)[0] != key and await self.held(value):
                    return True
        return False

    async def claim(self, skeleton: str, key: str, value: str) -> bool:
        """Make ``value`` (``key``'s claim) the holder of ``skeleton``; False if another name holds it.

        Free, or already ``key``'s: set.  Held by a claim that no longer counts
        (:meth:`held`): taken over, only if it is still the value we read.
        """
        stale = ""
        for _ in range(CLAIM_TRIES):
            answer = await self._claim(keys=[skeleton], args=[value, key, stale])
            if int(answer[0]) == 1:
                return True
            current = _text(answer[1])
            if await self.held(current):
                return False
            stale = current
        return False

    async def release(self, skeleton: str, value: str) -> None:
        """Drop the claim ``value`` on ``skeleton`` if it is still that claim."""
        await self._release(keys=[skeleton], args=[value])


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
