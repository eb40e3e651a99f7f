"""A small, realistic Redis of the release before issue 15, written key by key with the OLD names and formats.

The names are those of ``git show 3f54622~1:common/keys.py`` (written out here on purpose: common/keys.py
no longer has them); the formats those the old scripts wrote (gateway/store.py, groups.py, files.py,
accounts.py of that release): frames are the protocol's own encoding, as the Lua built them.

Message ids come from one global counter and lie a day in the FUTURE, so a new id that did not come from
a clock raised past ``cw:lastid`` (a plain Redis TIME) would sort before them and the tests would see it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec
from argon2 import PasswordHasher
from redis.asyncio import Redis

from gateway.skeletons import skeleton_keys
from protocol import frames as f

PASSWORDS = {"alice": "alice-secret", "Bob": "bob-secret", "carol": "carol-secret"}
SHA = "ab" * 32


@dataclass
class OldData:
    ids: dict[str, str] = field(default_factory=dict)  # message body -> its old id
    last_id: str = ""


def _old_skeleton(new_name: str) -> str:
    """``cw:{skel:f:X}`` (new) -> ``cw:skel:f:X`` (old)."""
    return "cw:" + new_name[len("cw:{"):-1]


async def write_old_layout(redis: Redis) -> OldData:
    """alice, Bob (key "bob") and carol; DMs both ways; a broadcast; invite-only group "Secret" (alice owner,
    Bob member, carol invited); carol offline with two DMs after her ``delivered`` cursor; a file on
    alice's quota; sessions, leases and other ephemeral keys of a stopped old gateway."""
    data = OldData()
    base = int(time.time() * 1000) + 86_400_000
    seq = 0

    def next_id() -> str:
        nonlocal seq
        seq += 1
        return f"{base}-{seq}"

    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)  # gateway/accounts.py's hasher
    for name, password in PASSWORDS.items():
        key = name.lower()
        await redis.hset(f"cw:acct:{key}", mapping={"name": name, "pw": hasher.hash(password)})
        for new in skeleton_keys(key):
            await redis.set(_old_skeleton(new), key)
    await redis.set("cw:skel:backfilled", "1")
    origins: dict[str, str] = {}

    async def xadd(stream: str, mid: str, frame: bytes) -> None:
        await redis.xadd(stream, {"f": frame}, id=mid)
        origins.setdefault(stream, mid)

    async def dm(sender: str, to: str, body: str) -> str:
        mid = next_id()
        frame = f.encode(f.Message(id=mid, from_=sender, to="@" + to, body=body, ts=int(mid.split("-")[0])))
        lo, hi = sorted((sender.lower(), to.lower()))
        await xadd(f"cw:s:dm:{lo}|{hi}", mid, frame)
        await xadd(f"cw:s:in:{to.lower()}", mid, frame)
        data.ids[body] = mid
        return mid

    async def to_all(sender: str, stream: str, to: str, body: str) -> str:
        mid = next_id()
        frame = f.encode(f.Message(id=mid, from_=sender, to=to, body=body, ts=int(mid.split("-")[0])))
        await xadd(stream, mid, frame)
        data.ids[body] = mid
        return mid

    await dm("alice", "Bob", "hi bob")
    await dm("Bob", "alice", "hi alice")
    await dm("alice", "alice", "note to self")
    seen = await dm("Bob", "carol", "carol, seen already")
    await redis.hset("cw:acct:carol", "delivered", seen)
    bob_delivered = await dm("alice", "Bob", "how are you")
    await to_all("carol", "cw:s:all", "*", "hello all")

    # Group "Secret", created by alice and joined by Bob when the last id was "hello all"'s.
    since = data.ids["hello all"]
    await redis.hset("cw:g:secret", mapping={"name": "Secret", "owner": "alice", "owner_name": "alice",
                                             "invite_only": "1", "seq": "2"})
    await redis.hset("cw:g:secret:m", mapping={"alice": "alice", "bob": "Bob"})
    await redis.zadd("cw:g:secret:o", {"alice": 1, "bob": 2})
    await redis.hset("cw:g:secret:j", mapping={"alice": since, "bob": since})
    for member in ("alice", "bob"):
        await redis.sadd(f"cw:ug:{member}", "secret")
    await to_all("alice", "cw:s:g:secret", "#Secret", "secret 1")
    last_group = await to_all("Bob", "cw:s:g:secret", "#Secret", "secret 2")
    for member in ("alice", "bob"):
        await redis.hset(f"cw:gcur:{member}", "secret", last_group)
    await redis.sadd("cw:g:secret:inv", "carol")
    invited = f.encode(f.GroupEvent(group="Secret", event="invited", user="carol", by="alice"))
    await redis.hset("cw:inv:carol", "secret", invited)

    alice_delivered = await dm("Bob", "alice", "fine")
    await dm("alice", "carol", "while you were away")
    data.last_id = await dm("Bob", "carol", "also this")
    await redis.hset("cw:acct:alice", "delivered", alice_delivered)
    await redis.hset("cw:acct:bob", "delivered", bob_delivered)
    await redis.set("cw:lastid", data.last_id)
    await redis.hset("cw:sorigin", mapping=origins)

    # A stored file charged to alice's quota.
    await redis.hset(f"cw:f:{SHA}", mapping={"name": "notes.txt", "mime": "text/plain", "size": "5"})
    await redis.hset("cw:fo:alice", SHA, "5")
    await redis.set("cw:fu:alice", "5")
    await redis.hset("cw:up:u1", mapping={"user": "alice", "name": "big.bin", "size": "9", "mime": "x/y", "sha": SHA})
    await redis.hset("cw:fr:alice", "u1", "9")

    # Ephemeral state a stopped old gateway left behind (its lease long expired).
    await redis.hset("cw:sess:alice", mapping={"gw": "old1", "token": "t", "name": "alice"})
    await redis.sadd("cw:gw:old1:users", "alice")
    await redis.zadd("cw:gateways", {"old1": 1000})
    await redis.zadd("cw:online:z", {"alice": 0})
    await redis.set("cw:dd:alice:r1", "x", ex=600)
    await redis.hset("cw:rl:alice", mapping={"tokens": "3", "ts": "1"})
    await redis.set("cw:pwb:stranger:alice", "1", ex=600)
    return data


def frame_body(frame: bytes) -> str:
    return str(msgspec.json.decode(frame)["body"])
