"""Accounts: a name is registered with an argon2id password hash on first login.

Hashing runs in a thread pool (argon2-cffi releases the GIL), so a login never
blocks the event loop.  Creation is atomic in Redis: two first logins racing
for one new name create one account, and the loser is checked against the
winner's password like any later login.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
from concurrent.futures import ThreadPoolExecutor

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from redis.asyncio import Redis

from chinwag import keys
from protocol.errors import BadPassword, RateLimited

# KEYS: failures ; ARGV: window seconds -> failures so far (the window starts at the first one)
_FAILED = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return n
"""

# KEYS: account ; ARGV: display name, hash -> 1 created | 0 exists
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'pw', ARGV[2])
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


class Accounts:
    def __init__(
        self,
        redis: Redis,
        *,
        time_cost: int = 2,
        memory_kib: int = 19_456,
        parallelism: int = 1,
        workers: int = 2,
        max_failures: int = 5,
        lockout_seconds: int = 300,
    ) -> None:
        self.redis = redis
        self.max_failures = max_failures
        self.lockout_seconds = lockout_seconds
        self._failed = redis.register_script(_FAILED)
        self.hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)
        return_hash_buffers_to_the_os()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        self._create = redis.register_script(_CREATE)

    async def authenticate(self, key: str, display: str, password: str) -> str:
        """Return the account's display name; registers it on first use; raises BadPassword."""
        loop = asyncio.get_running_loop()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.account(key), "name", "pw")
            pipe.get(keys.password_failures(key))
            pipe.pttl(keys.password_failures(key))
            stored, failures, ttl_ms = await pipe.execute()
        if failures is not None and int(failures) >= self.max_failures:
            # Locked: not even the right password is checked until the window ends.
            raise RateLimited("too many wrong passwords for this account; try again later",
                              retry_after=max(int(ttl_ms), 0) / 1000)
        if stored[1] is None:
            digest = await loop.run_in_executor(self._pool, self.hasher.hash, password)
            if await self._create(keys=[keys.account(key)], args=[display, digest]):
                return display
            stored = await self.redis.hmget(keys.account(key), "name", "pw")
        name, digest_b = stored
        assert name is not None and digest_b is not None
        ok = await loop.run_in_executor(self._pool, self._verify, digest_b.decode(), password)
        if not ok:
            await self._failed(keys=[keys.password_failures(key)], args=[self.lockout_seconds])
            raise BadPassword()
        if failures is not None:
            await self.redis.delete(keys.password_failures(key))
        return str(name.decode())

    def _verify(self, digest: str, password: str) -> bool:
        try:
            return self.hasher.verify(digest, password)
        except (VerificationError, InvalidHashError):
            return False

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
