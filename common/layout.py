"""Is this Redis still in the key layout of the release before issue 15?  (Then nothing may start on it.)

Issue 15 renamed every key (each carries a hash tag now, common/keys.py).  New code
reading a Redis written by the previous release would find no accounts and no
messages and, worse, start writing new-layout data next to the old: every user would
seem to have lost everything, and a later migration would have two versions to
reconcile.  So the gateway, the presence service and ``chinwag-server`` (with an
external Redis) check at start and refuse, pointing the operator at
``chinwag-migrate`` (chinwag/migrate.py), which converts the data in place.

The check is cheap and, for any Redis an old gateway ever finished starting on,
certain: two ``EXISTS`` and one bounded ``SCAN`` page.

* ``cw:lastid``: the old global id counter, created by the first message ever sent
  (no new code writes it; ``chinwag-migrate`` also sets it while it runs and deletes
  it last, so a half-migrated Redis is refused too);
* ``cw:skel:backfilled``: set by every old gateway at start once it had scanned the
  accounts (even zero of them);
* one ``SCAN`` page for ``cw:acct:*`` (an old account), as a last resort on a
  single Redis.

A Redis Cluster never ran the old layout (it needs the hash tags), so there only the
two ``EXISTS`` run.
"""

from __future__ import annotations

from typing import Any

OLD_LAST_ID = "cw:lastid"
OLD_BACKFILLED = "cw:skel:backfilled"
OLD_ACCOUNTS = "cw:acct:*"
MIGRATE_HINT = ("this Redis holds data in the key layout of the previous Chinwag release; stop every gateway and "
                "presence service and run `chinwag-migrate --redis-url <url>` once (docs/cluster.md, \"Upgrading\")")
LAYOUT_EXIT = 2  # the exit status of a program that refuses an unmigrated Redis (run_service)


class OldLayout(RuntimeError):
    """The Redis still holds the previous release's layout: run chinwag-migrate first."""


async def old_layout_sign(redis: Any) -> str | None:
    """The name of an old-layout key found in ``redis``, or None (a Redis in the new layout, or empty)."""
    from redis.asyncio.cluster import RedisCluster

    for key in (OLD_LAST_ID, OLD_BACKFILLED):
        if await redis.exists(key):
            return key
    if isinstance(redis, RedisCluster):
        return None
    _, found = await redis.scan(0, match=OLD_ACCOUNTS, count=1000)
    if found:
        key = found[0]
        return key.decode(errors="replace") if isinstance(key, bytes) else str(key)
    return None


async def require_new_layout(redis: Any) -> None:
    """Raise OldLayout if ``redis`` still holds the previous release's layout."""
    sign = await old_layout_sign(redis)
    if sign is not None:
        raise OldLayout(f"{MIGRATE_HINT} (found {sign!r})")
