"""``chinwag-migrate``: convert a Redis from the previous release's key layout to the issue 15 one.

    chinwag-migrate --redis-url redis://10.0.0.5:6379/0

Issue 15 gave every key the hash tag of its owner (common/keys.py, docs/cluster.md);
the new gateways refuse to start on a Redis still in the old layout (common/layout.py).
Stop every gateway and presence service, run this once, start the new release.

What it does, family by family (the summary printed at the end counts each):

* **renamed** (``RENAMENX``, atomic per key, TTLs kept): accounts (``cw:acct:<k>`` ->
  ``cw:{u:<k>}:acct``, with their password hashes and ``delivered`` cursors), inboxes,
  the broadcast stream, group hashes, members, invitations, join order, ``since`` and
  streams, each user's groups, group cursors, partings and pending invitations, file
  metadata, quota records (owned, used, reserved), login tokens, name skeleton claims
  and the skeleton backfill flag; uploads in progress move under their uploader;
* **split**: each DM conversation stream into its two recipients' halves
  (chinwag/migrate_dm.py: old ids kept, why that is safe);
* **origins**: the ``cw:sorigin`` hash becomes one origin key per stream;
* **dropped** (ephemeral, rebuilt by the new release as people log in): sessions,
  gateway user sets and leases, the online index, send dedupe records, rate buckets,
  login-guard windows and per-address buckets;
* **clocks**: every user's, group's and the broadcast clock is raised to at least the
  old ``cw:lastid``, so every new id sorts after every old one; ``cw:lastid`` is
  deleted last.

Idempotent and resumable: each step finds its own work by scanning for old names, so a
second run finds nothing to do, and a run after a crash finishes what the first began.
``cw:lastid`` is set (to ``0-0`` when no message was ever sent) before anything moves and
deleted after everything did, so a half-migrated Redis is still refused by the gateways.
A key whose new name is already taken is left alone and reported: the run exits 1 and
keeps ``cw:lastid`` until an operator settles it.

Exit status: 0 done (or nothing to do), 1 a conflict or an error (message on stderr),
2 bad arguments (a Redis Cluster URL: the old layout never ran on one).
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from common import keys
from common.config import Settings
from common.layout import OLD_LAST_ID, old_layout_sign
from common.logs import setup_logging
from common.redis import REDIS_ERRORS, connect_redis, is_cluster_url, redacted_url

from .migrate_dm import OLD_DM_PREFIX, OLD_ORIGINS, MigrationError, split_conversation

_GROUP_PARTS: dict[str, Callable[[str], str]] = {
    "": keys.group, "m": keys.group_members, "inv": keys.group_invited, "o": keys.group_order, "j": keys.group_since,
}


def _group(rest: str) -> str | None:
    gkey, _, part = rest.partition(":")  # group keys have no ':' (protocol/names.py)
    build = _GROUP_PARTS.get(part)
    return build(gkey) if build and gkey else None


def _skeleton(rest: str) -> str | None:
    if rest == "backfilled":
        return keys.SKELETONS_BACKFILLED
    side, sep, skeleton = rest.partition(":")
    return keys.name_skeleton(side, skeleton) if sep and side in ("f", "u") else None


def _fixed(new: str) -> Callable[[str], str | None]:
    return lambda rest: new if rest == "" else None


# (family, old name prefix, new name from what follows the prefix).  The old names are those of the
# release before issue 15 (git show 3f54622~1:common/keys.py); none of them starts with "cw:{".
RENAMES: tuple[tuple[str, str, Callable[[str], str | None]], ...] = (
    ("accounts", "cw:acct:", keys.account),
    ("inboxes", "cw:s:in:", keys.inbox_stream),
    ("broadcast stream", "cw:s:all", _fixed(keys.BROADCAST_STREAM)),
    ("group streams", "cw:s:g:", keys.group_stream),
    ("groups (hash, members, invited, order, since)", "cw:g:", _group),
    ("user groups", "cw:ug:", keys.user_groups),
    ("group cursors", "cw:gcur:", keys.group_cursors),
    ("group partings", "cw:gpart:", keys.group_parted),
    ("pending invitations", "cw:inv:", keys.invitations),
    ("file metadata", "cw:f:", keys.file_meta),
    ("quota: files owned", "cw:fo:", keys.files_owned),
    ("quota: bytes used", "cw:fu:", keys.files_used),
    ("quota: reservations", "cw:fr:", keys.files_reserved),
    ("login tokens", "cw:ltok:", keys.login_tokens),
    ("name skeletons", "cw:skel:", _skeleton),
)

# Ephemeral state: sessions, gateway user sets and leases, the online index (and its older set form),
# send dedupe records, send and request rate buckets, login-guard windows, per-address buckets.
DROPPED = ("cw:sess:*", "cw:gw:*", "cw:gateways", "cw:online:z", "cw:online", "cw:dd:*", "cw:rl:*", "cw:rq:*",
           "cw:pwb:*", "cw:ipc:*", "cw:ipl:*")
OLD_UPLOADS = "cw:up:"

# KEYS: a clock; ARGV: an id.  Moves the clock up to the id, never down.
_RAISE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local cms, cseq = string.match(cur, '^(%d+)-(%d+)$')
  local nms, nseq = string.match(ARGV[1], '^(%d+)-(%d+)$')
  cms, cseq, nms, nseq = tonumber(cms), tonumber(cseq), tonumber(nms), tonumber(nseq)
  if cms > nms or (cms == nms and cseq >= nseq) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


@dataclass
class Summary:
    moved: Counter[str] = field(default_factory=Counter)
    conflicts: list[str] = field(default_factory=list)  # old keys left alone: their new name was taken
    unknown: list[str] = field(default_factory=list)  # old-looking keys this migration does not know

    def lines(self) -> list[str]:
        out = [f"  {family}: {count}" for family, count in self.moved.items() if count]
        if not out:
            out = ["  nothing to migrate: the Redis is already in the new layout"]
        out += [f"  CONFLICT, left as is (the new name is taken): {key}" for key in self.conflicts[:20]]
        if self.unknown:
            out.append(f"  unknown old-looking keys left as is ({len(self.unknown)}): {', '.join(self.unknown[:10])}")
        return out


async def _scan(redis: Redis, match: str) -> list[bytes]:
    """Every key matching ``match`` (collected first: the loop that follows renames them away)."""
    return [k async for k in redis.scan_iter(match=match, count=1000)]


async def _rename_all(redis: Redis, summary: Summary) -> None:
    for family, prefix, build in RENAMES:
        pattern = prefix + ("*" if prefix.endswith(":") else "")
        pairs = []
        for old in await _scan(redis, pattern):
            new = build(old.decode()[len(prefix):])
            if new is None:
                summary.unknown.append(old.decode(errors="replace"))
            else:
                pairs.append((old, new))
        await _rename_pairs(redis, family, pairs, summary)


async def _rename_pairs(redis: Redis, family: str, pairs: list[tuple[bytes, str]], summary: Summary) -> None:
    for start in range(0, len(pairs), 500):
        chunk = pairs[start:start + 500]
        pipe = redis.pipeline(transaction=False)
        for old, new in chunk:
            pipe.renamenx(old, new)
        results = await pipe.execute(raise_on_error=False)
        for (old, _), result in zip(chunk, results, strict=True):
            if result is True or result == 1:
                summary.moved[family] += 1
            elif result is False or result == 0:
                summary.conflicts.append(old.decode(errors="replace"))
            elif isinstance(result, Exception) and "no such key" not in str(result).lower():
                raise result  # "no such key": gone since the scan (a concurrent run moved it)


async def _move_uploads(redis: Redis, summary: Summary) -> None:
    """Uploads in progress move under their uploader (the ``user`` field); one without it is dropped."""
    pairs = []
    for old in await _scan(redis, OLD_UPLOADS + "*"):
        user: Any = await redis.hget(old, "user")
        if user is None:
            summary.moved["uploads dropped (no uploader)"] += await redis.delete(old)
        else:
            pairs.append((old, keys.upload(user.decode(), old.decode()[len(OLD_UPLOADS):])))
    await _rename_pairs(redis, "uploads in progress", pairs, summary)


async def _split_conversations(redis: Redis, summary: Summary) -> None:
    for old in await _scan(redis, OLD_DM_PREFIX + "*"):
        summary.moved["DM messages (into recipients' halves)"] += await split_conversation(redis, old)
        summary.moved["DM conversations split"] += 1


def _new_stream(old: str) -> str | None:
    if old == "cw:s:all":
        return keys.BROADCAST_STREAM
    for prefix, build in (("cw:s:in:", keys.inbox_stream), ("cw:s:g:", keys.group_stream)):
        if old.startswith(prefix):
            return build(old[len(prefix):])
    return None


async def _move_origins(redis: Redis, summary: Summary) -> None:
    """``cw:sorigin`` (stream -> first id) becomes ``keys.stream_origin(stream)`` per migrated stream.  A field
    whose stream is gone (or a DM conversation's: the split recorded the halves' origins) is dropped."""
    origins: Any = await redis.hgetall(OLD_ORIGINS)
    for field_, origin in origins.items():
        new = _new_stream(field_.decode())
        if new is not None and await redis.exists(new):
            await redis.set(keys.stream_origin(new), origin, nx=True)
            summary.moved["stream origins"] += 1
        await redis.hdel(OLD_ORIGINS, field_)


async def _drop_ephemeral(redis: Redis, summary: Summary) -> None:
    for pattern in DROPPED:
        found = await _scan(redis, pattern) if "*" in pattern else [pattern.encode()]
        for start in range(0, len(found), 500):
            summary.moved["ephemeral keys dropped"] += await redis.unlink(*found[start:start + 500])


async def _raise_clocks(redis: Redis, last: str, summary: Summary) -> None:
    """Every owner's clock to at least the old global ``last`` id: new ids sort after every old one."""
    if last == "0-0":
        return  # no message was ever sent: nothing to sort after
    raise_clock = redis.register_script(_RAISE)
    clocks = {keys.BROADCAST_CLOCK}
    head, tail = keys.account("\x00").split("\x00")
    clocks |= {keys.user_clock(k.decode()[len(head):-len(tail)]) for k in await _scan(redis, keys.account("*"))}
    head, tail = keys.group("\x00").split("\x00")
    clocks |= {keys.group_clock(k.decode()[len(head):-len(tail)]) for k in await _scan(redis, keys.group("*"))}
    for clock in sorted(clocks):
        summary.moved["clocks raised to the old last id"] += int(await raise_clock(keys=[clock], args=[last]))


async def _any_old_key(redis: Redis) -> bool:
    """Whether any key in the old layout is left (every new name starts with "cw:{")."""
    if await old_layout_sign(redis) is not None:
        return True
    async for key in redis.scan_iter(match="cw:*", count=1000):
        if not key.startswith(b"cw:{"):
            return True
    return False


async def migrate(redis: Redis) -> Summary:
    """Migrate ``redis`` (one Redis, every old gateway stopped) in place; see the module docstring."""
    summary = Summary()
    seconds, micros = await redis.time()  # lease expiries are on the Redis clock
    leases: Any = await redis.zrangebyscore("cw:gateways", f"({seconds * 1000 + micros // 1000}", "+inf")
    if leases:
        names = ", ".join(g.decode(errors="replace") for g in leases)
        raise MigrationError(f"gateways of the previous release still hold live leases ({names}): stop them first")
    if await _any_old_key(redis):
        await redis.set(OLD_LAST_ID, "0-0", nx=True)  # the in-progress marker: gateways refuse until the end
    raw: Any = await redis.get(OLD_LAST_ID)
    await _rename_all(redis, summary)
    await _move_uploads(redis, summary)
    await _split_conversations(redis, summary)
    await _move_origins(redis, summary)
    await _drop_ephemeral(redis, summary)
    if raw is not None:
        await _raise_clocks(redis, raw.decode(), summary)
    summary.unknown += [k.decode(errors="replace") for k in await _scan(redis, "cw:*")
                        if not k.startswith(b"cw:{") and k != OLD_LAST_ID.encode()]
    if summary.conflicts:
        raise Conflicts(summary)
    if raw is not None:
        await redis.delete(OLD_LAST_ID)
        summary.moved["old id counter removed"] += 1
    return summary


class Conflicts(MigrationError):
    """Some old keys could not move: their new names are taken (data written by the new release)."""

    def __init__(self, summary: Summary) -> None:
        super().__init__(f"{len(summary.conflicts)} old keys not moved because their new name already exists "
                         "(the new release wrote there); settle them by hand and run chinwag-migrate again")
        self.summary = summary


async def run(url: str, out: Callable[[str], None], *, only_if_old: bool = False) -> int:
    """Migrate the Redis at ``url``, printing the summary; the exit status.

    ``only_if_old`` (the embedded chinwag-server, at every start): do nothing unless the cheap start check
    (common/layout.py) sees the old layout, so a Redis already migrated is not scanned again each time."""
    redis = connect_redis(url, max_connections=4)
    try:
        if only_if_old and await old_layout_sign(redis) is None:
            return 0
        summary = await migrate(redis)
    except Conflicts as exc:
        out("chinwag-migrate: partly done:")
        for line in exc.summary.lines():
            out(line)
        print(f"chinwag-migrate: {exc}", file=sys.stderr)
        return 1
    except (MigrationError, *REDIS_ERRORS) as exc:
        print(f"chinwag-migrate: {redacted_url(url)}: failed: {exc} (nothing is lost: fix it and run it again, "
              "it carries on where it stopped)", file=sys.stderr)
        return 1
    finally:
        await redis.aclose()
    out(f"chinwag-migrate: {redacted_url(url)} is in the new key layout:")
    for line in summary.lines():
        out(line)
    return 0


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_args(
        "migrate", argv, prog="chinwag-migrate",
        description="Convert a Redis from the previous Chinwag release's key layout to the current one "
                    "(stop every gateway first; safe to run again).",
    )
    setup_logging(settings.log_level, settings.log_json)
    if not settings.redis_url:
        print("chinwag-migrate needs --redis-url (or REDIS_URL)", file=sys.stderr)
        raise SystemExit(2)
    if is_cluster_url(settings.redis_url):
        print("chinwag-migrate: the previous layout only ever ran on one Redis: give that Redis's URL "
              "(migrate it, then move the data to a cluster if you want one)", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(asyncio.run(run(settings.redis_url, print)))


if __name__ == "__main__":
    main()
