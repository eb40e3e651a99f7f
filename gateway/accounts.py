"""Accounts: a name is registered with an argon2id password hash on first login.

Hashing runs in a thread pool (argon2-cffi releases the GIL), so a login never
blocks the event loop.  Every decision is taken in Redis before any hashing:

* **The guess budget** (docs/security.md).  One Lua call takes one unit of the
  account's password-evaluation budget *before* argon2 runs, or refuses with
  ``rate_limited``; concurrent guesses on any number of gateways therefore get
  at most ``max_failures`` evaluations per window between them.  The budget is
  kept per kind of caller, so a stranger's guesses spend only the strangers'
  budget: a login presenting a session token this account was issued (the
  login's ``session``) has its own, and so has a login from the address of the
  account's last successful login.  A right password gives its unit back, so
  only wrong ones use a budget up; it also resets the budget of the token and
  address kinds (the owner's own typos), never the strangers' (that would hand
  a guesser a fresh budget whenever the owner logs in from somewhere new).
* **Creation** is atomic: two first logins racing for one new name create one
  account, and the loser is checked against the winner's password like any
  later login.  The same call claims the name's confusable skeletons
  (protocol/confusables.py), so of two look-alike names registered at once
  only one wins; the other gets ``username_confusable``.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from common import keys
from common.backoff import Backoff
from common.runtime import end_if_cancelled
from protocol.confusables import name_skeletons
from protocol.errors import BadPassword, InvalidUsername, RateLimited, UsernameConfusable
from protocol.names import Username

log = logging.getLogger("chinwag.accounts")

STRANGER, TOKEN, IP = "stranger", "token", "ip"  # the kinds of caller, each with its own budget
MAX_TOKENS = 16  # session tokens remembered per account (the newest)

# KEYS: account, budget stranger, budget token, budget ip, tokens, skeleton fold, skeleton upper
# ARGV: presented token hash or "", caller ip, budget, window s, account key, registrable "1"/"0"
# -> {"ok", kind, name, pw} (name and pw "" when there is no account yet)
#  | {"locked", kind, ms left} | {"invalid"} | {"confusable"}
_BEGIN = """
local acct = redis.call('HMGET', KEYS[1], 'name', 'pw', 'ip')
local kind, budget = 'stranger', KEYS[2]
if acct[2] then
  if ARGV[1] ~= '' then
    local t = redis.call('TIME')
    local expiry = redis.call('ZSCORE', KEYS[5], ARGV[1])
    if expiry and tonumber(expiry) > t[1] * 1000 + math.floor(t[2] / 1000) then
      kind, budget = 'token', KEYS[3]
    end
  end
  if kind == 'stranger' and ARGV[2] ~= '' and acct[3] == ARGV[2] then
    kind, budget = 'ip', KEYS[4]
  end
else
  if ARGV[6] ~= '1' then
    return {'invalid'}
  end
  for i = 6, 7 do
    local owner = redis.call('GET', KEYS[i])
    if owner and owner ~= ARGV[5] then
      return {'confusable'}
    end
  end
end
local used = tonumber(redis.call('GET', budget) or '0')
if used >= tonumber(ARGV[3]) then
  return {'locked', kind, redis.call('PTTL', budget)}
end
if redis.call('INCR', budget) == 1 then
  redis.call('EXPIRE', budget, ARGV[4])
end
return {'ok', kind, acct[1] or '', acct[2] or ''}
"""

# KEYS: account, skeleton fold, skeleton upper ; ARGV: display name, hash, account key
# -> 1 created | 0 exists | -1 a look-alike holds a skeleton
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
for i = 2, 3 do
  local owner = redis.call('GET', KEYS[i])
  if owner and owner ~= ARGV[3] then
    return -1
  end
end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'pw', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
redis.call('SET', KEYS[3], ARGV[3])
return 1
"""

# KEYS: account, budget of the caller's kind, tokens, skeleton fold, skeleton upper
# ARGV: kind, issued token hash, caller ip, token lifetime ms, tokens kept, account key
_SUCCEEDED = """
if ARGV[1] ~= 'stranger' then
  redis.call('DEL', KEYS[2])
elseif redis.call('EXISTS', KEYS[2]) == 1 and redis.call('DECR', KEYS[2]) <= 0 then
  redis.call('DEL', KEYS[2])
end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'ip', ARGV[3])
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(tonumber(ARGV[5]) + 1))
redis.call('PEXPIRE', KEYS[3], ARGV[4])
redis.call('SET', KEYS[4], ARGV[6], 'NX')
redis.call('SET', KEYS[5], ARGV[6], 'NX')
return 1
"""


_M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter number


@functools.cache
def return_hash_buffers_to_the_os() -> bool:
    """Make glibc hand argon2's buffers back to the OS when a hash is done.

    Each hash allocates ``memory_kib`` (19 MiB by default) in a worker thread.
    glibc serves a block that size with mmap only until the first one is freed;
    then it raises its threshold and keeps later ones in the thread's own heap,
    so every worker holds on to a buffer for good: 38 MiB of RSS per gateway
    with the defaults, measured.  A fixed 1 MiB threshold keeps them on mmap.
    Returns False where there is no glibc ``mallopt`` (nothing to tune).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 20))


def _skeleton_keys(key: str) -> list[str]:
    fold, upper = name_skeletons(key)
    return [keys.name_skeleton("f", fold), keys.name_skeleton("u", upper)]


class Accounts:
    def __init__(
        self,
        redis: Redis | RedisCluster,
        *,
        time_cost: int = 2,
        memory_kib: int = 19_456,
        parallelism: int = 1,
        workers: int = 2,
        max_failures: int = 5,
        lockout_seconds: int = 300,
        token_seconds: float = 30 * 86_400,
    ) -> None:
        self.redis = redis
        self.max_failures = max_failures
        self.lockout_seconds = lockout_seconds
        self.token_ms = max(1, int(token_seconds * 1000))
        self.hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        return_hash_buffers_to_the_os()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        self._begin = redis.register_script(_BEGIN)
        self._create = redis.register_script(_CREATE)
        self._succeeded = redis.register_script(_SUCCEEDED)

    async def authenticate(
        self, user: Username, password: str, *, issued: str, presented: str | None = None, ip: str = ""
    ) -> str:
        """Return the account's display name, registering it on first use.

        ``issued`` is the hash of the session token the welcome will carry (it
        proves the owner at later logins); ``presented`` the hash of the
        login's ``session`` token, if any; ``ip`` the caller's address.
        Raises RateLimited (budget spent), BadPassword, UsernameConfusable, or
        InvalidUsername (a name only the older rules accept, with no account).
        """
        key = user.key
        budgets = [keys.login_budget(key, kind) for kind in (STRANGER, TOKEN, IP)]
        skeletons = _skeleton_keys(key)
        answer = await self._begin(
            keys=[keys.account(key), *budgets, keys.login_tokens(key), *skeletons],
            args=[presented or "", ip, self.max_failures, self.lockout_seconds, key, int(user.registrable)],
        )
        status = _text(answer[0])
        if status == "invalid":
            raise InvalidUsername(user.refusal or None)
        if status == "confusable":
            raise UsernameConfusable()
        kind = _text(answer[1])
        if status == "locked":
            # Not even the right password is checked until the window ends.
            raise RateLimited("too many password attempts for this account; try again later",
                              retry_after=max(int(answer[2]), 0) / 1000)
        name, digest = _text(answer[2]), _text(answer[3])
        loop = asyncio.get_running_loop()
        if not digest:
            new_digest = await loop.run_in_executor(self._pool, self.hasher.hash, password)
            created = await self._create(keys=[keys.account(key), *skeletons], args=[user.display, new_digest, key])
            if created == -1:
                raise UsernameConfusable()
            if created == 1:
                name = user.display
            else:  # lost the race to create it: check against the winner's password
                stored = await self.redis.hmget(keys.account(key), "name", "pw")
                assert stored[0] is not None and stored[1] is not None
                name, digest = _text(stored[0]), _text(stored[1])
        if digest and not await loop.run_in_executor(self._pool, self._verify, digest, password):
            raise BadPassword()
        await self._succeeded(
            keys=[keys.account(key), keys.login_budget(key, kind), keys.login_tokens(key), *skeletons],
            args=[kind, issued, ip, self.token_ms, MAX_TOKENS, key],
        )
        return name

    def _verify(self, digest: str, password: str) -> bool:
        try:
            return self.hasher.verify(digest, password)
        except (VerificationError, InvalidHashError):
            return False

    async def backfill_skeletons(self, batch: int = 500) -> int:
        """Claim the skeletons of accounts stored before skeletons existed; once per Redis.

        Each skeleton is claimed with SET NX, so an account registered meanwhile
        keeps its claim, and of two stored look-alikes the first one scanned
        holds it (both keep logging in: only registrations are refused).  Run
        at gateway start; logins claim their own skeleton too.  Retries with
        backoff while Redis is away; returns the number of accounts scanned.
        """
        backoff = Backoff(cap=30.0)
        head, _, tail = keys.account("\x00").partition("\x00")
        while True:
            end_if_cancelled()  # redis-py's wait_for may have swallowed a cancel during the last try
            try:
                if await self.redis.exists(keys.SKELETONS_BACKFILLED):
                    return 0
                scanned = 0
                pending: list[str] = []
                async for raw in self.redis.scan_iter(match=keys.account("*"), count=batch, _type="hash"):
                    end_if_cancelled()  # a scan of every account is many calls in a row
                    pending.append(_text(raw).removeprefix(head).removesuffix(tail))
                    if len(pending) >= batch:
                        scanned += await self._claim_skeletons(pending)
                scanned += await self._claim_skeletons(pending)
                await self.redis.set(keys.SKELETONS_BACKFILLED, "1")
                log.info("claimed the name skeletons of %d stored accounts", scanned)
                return scanned
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                delay = backoff.next_delay()
                log.warning("skeleton backfill: Redis unavailable; retrying in %.1fs", delay)
                await asyncio.sleep(delay)

    async def _claim_skeletons(self, accounts: list[str]) -> int:
        async with self.redis.pipeline(transaction=False) as pipe:
            for account in accounts:
                for skeleton_key in _skeleton_keys(account):
                    pipe.set(skeleton_key, account, nx=True)
            await pipe.execute()
        done = len(accounts)
        accounts.clear()
        return done

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
