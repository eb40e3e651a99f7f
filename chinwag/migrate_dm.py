"""Splitting an old DM conversation stream into the two per-recipient halves (chinwag-migrate).

The previous release kept each pair's DMs in one stream, ``cw:s:dm:<lo>|<hi>`` (the
two name keys, sorted), numbered by the global counter ``cw:lastid``.  The new layout
stores a DM once, in the recipient's slot: ``keys.dm_half(recipient, sender)``, and
history merges the two halves by id (gateway/history.py).

Each entry goes to its recipient's half under its **old id, unchanged**: the same id
names it in the recipient's inbox, in the clients' resume positions and in their
``before`` paging, so it must not move.  The old ids break the halves' parity rule
(new DMs to the lexically lower name get an even seq, the other direction odd), but
the rule exists only so that the two halves never share an id, and old ids cannot
collide: they came from one global counter, unique across every stream.  New ids come
from per-user clocks that chinwag-migrate raises to at least the old ``cw:lastid``,
so every new id sorts after every old one and the parity rule holds from there on.

Resumable: entries are appended in id order, each only if it is above the half's
newest id (a re-run after a crash skips what was copied), and the old stream (with
its origin field) is deleted in one MULTI only after both halves are complete.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from common import keys
from protocol.names import id_tuple, name_key

OLD_DM_PREFIX = "cw:s:dm:"
OLD_ORIGINS = "cw:sorigin"
BATCH = 1000


class MigrationError(RuntimeError):
    """Something the migration cannot decide alone; the message says what and where."""


def recipient_of(frame: bytes, lo: str, hi: str, where: str) -> str:
    """The name key of the DM's recipient: ``to`` ("@Name") when it names one of the pair, else the other
    one than the sender (``from``)."""
    if lo == hi:
        return lo
    try:
        msg: Any = json.loads(frame)
        to, sender = str(msg.get("to", "")), str(msg.get("from", ""))
    except (ValueError, AttributeError):
        raise MigrationError(f"{where}: an entry is not a message frame") from None
    if to.startswith("@") and (key := name_key(to[1:])) in (lo, hi):
        return key
    if (key := name_key(sender)) in (lo, hi):
        return hi if key == lo else lo
    raise MigrationError(f"{where}: an entry from {sender!r} to {to!r} belongs to neither {lo!r} nor {hi!r}")


async def _newest(redis: Redis, stream: str) -> tuple[int, int]:
    last: Any = await redis.xrevrange(stream, count=1)
    return id_tuple(_text(last[0][0])) if last else (0, 0)


async def split_conversation(redis: Redis, old: bytes) -> int:
    """Copy every entry of the old conversation stream ``old`` into its recipient's half, record the
    halves' origins, then delete it; returns the entries copied now (0 on a re-run that finds it done)."""
    where = old.decode(errors="replace")
    lo, sep, hi = where[len(OLD_DM_PREFIX):].partition("|")
    if not sep or not lo or not hi:
        raise MigrationError(f"{where}: not a conversation stream name (cw:s:dm:<lo>|<hi>)")
    halves = {lo: keys.dm_half(lo, hi), hi: keys.dm_half(hi, lo)}
    newest = {owner: await _newest(redis, half) for owner, half in halves.items()}
    first: dict[str, str] = {}
    copied = 0
    start, oldest = "-", None
    while True:
        batch: Any = await redis.xrange(old, min=start, max="+", count=BATCH)
        if not batch:
            break
        pipe = redis.pipeline(transaction=False)
        for rid, fields in batch:
            mid = _text(rid)
            oldest = oldest or mid
            owner = recipient_of(fields[b"f"], lo, hi, where)
            first.setdefault(owner, mid)
            if id_tuple(mid) > newest[owner]:
                pipe.xadd(halves[owner], {"f": fields[b"f"]}, id=mid)
                newest[owner] = id_tuple(mid)
                copied += 1
        await pipe.execute()
        start = "(" + _text(batch[-1][0])
    origin: Any = await redis.hget(OLD_ORIGINS, old)
    tx = redis.pipeline(transaction=True)
    if origin is not None and oldest is not None and _text(origin) == oldest:
        # The conversation was never trimmed, so neither half lost anything: each half's origin is its first entry.
        for owner, mid in first.items():
            tx.set(keys.stream_origin(halves[owner]), mid)
    tx.delete(old)
    tx.hdel(OLD_ORIGINS, old)
    await tx.execute()
    return copied


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
