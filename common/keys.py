"""Names of every Redis key and pub/sub channel Chinwag uses, in one place.

Every key carries the Redis Cluster hash tag (``{...}``) of the entity that
decides the operations on it: ``{u:<user key>}`` for everything of one user,
``{g:<group key>}`` for one group, ``{all}`` for broadcasts, ``{reg}`` for the
online index and gateway leases, ``{gw:<id>}`` for one gateway.  A script that
touches keys of one tag runs on one shard of a cluster (docs/cluster.md); a
single Redis ignores the tags.

Lua scripts that find a key in data (a gateway's users while reaping, a member's
session, an invitee's invitations) cannot be handed that key as ``KEYS``: they
build it with a function from :func:`lua_functions`, generated from the Python
definition here, so the name is still written only once.
"""

from __future__ import annotations

from collections.abc import Callable

PREFIX = "cw:"

# Accounts: hash {name, pw, delivered}. ``delivered`` is the last inbox id pushed live.
def account(key: str) -> str:
    return f"{PREFIX}{{u:{key}}}:acct"


# Sorted set of the display names of everyone online, all with score 0: ZRANGEBYLEX pages through it
# in code-point order (UTF-8 byte order), stable under logins and logouts.  (It used to be a
# plain set named cw:online; the new name keeps a Redis with old data from answering WRONGTYPE.)
ONLINE = f"{PREFIX}{{reg}}:online"
GATEWAYS = f"{PREFIX}{{reg}}:gateways"  # zset: gateway id -> lease expiry (ms, Redis clock)
# Hash gateway id -> epoch of its live lease (from LEASE_COUNTER, so a re-registered gateway's epoch is
# higher than any it had before).  A session records the epoch it was claimed under (presence/registry.py).
GATEWAY_EPOCHS = f"{PREFIX}{{reg}}:gw-epoch"
LEASE_COUNTER = f"{PREFIX}{{reg}}:lease-counter"
# Hash gateway id -> epoch: leases taken away whose names are still being freed (a reaper that died
# midway leaves the gateway here, and the next sweep finishes it).
REAPING = f"{PREFIX}{{reg}}:reaping"
# Hash user key -> "<token hash> <lease epoch> <display name>\n<gateway id>": the session that put the name into ONLINE,
# so a late release or reap removes only its own entry, never a newer session's.
ONLINE_OWNERS = f"{PREFIX}{{reg}}:online-owner"
# The old global id counter: no send script moves it any more (ids come from the per-owner clocks
# below); kept so readers not yet moved to a clock still import it.
LAST_ID = f"{PREFIX}lastid"


def session(key: str) -> str:
    """Hash {gw, token, name}: who holds the name ``key`` right now."""
    return f"{PREFIX}{{u:{key}}}:sess"


def gateway_users(node_id: str) -> str:
    """Set of the sessions one gateway holds, "<name key> <token hash> <lease epoch>" (what the reaper frees)."""
    return f"{PREFIX}{{gw:{node_id}}}:users"


# Id clocks (cluster layout, docs/cluster.md): the last id one stream owner handed out, "ms-seq",
# kept in the owner's own slot so a send script never touches another slot for its id.
def user_clock(key: str) -> str:
    return f"{PREFIX}{{u:{key}}}:clock"


def group_clock(gkey: str) -> str:
    return f"{PREFIX}{{g:{gkey}}}:clock"


BROADCAST_CLOCK = f"{PREFIX}{{all}}:clock"


# Streams (message storage).
BROADCAST_STREAM = f"{PREFIX}{{all}}:s"


def dm_half(owner: str, peer: str) -> str:
    """``owner``'s half of the conversation with ``peer``: the DMs ``peer`` sent to ``owner``, stored in
    ``owner``'s slot by the script that stores the DM (history merges the two halves, gateway/history.py)."""
    return f"{PREFIX}{{u:{owner}}}:h:{peer}"


def stream_origin(stream: str) -> str:
    """Id of the first entry of ``stream`` (set when an XADD creates it), in the stream's own slot: a
    stream whose oldest entry is still that one was never trimmed (gateway/store.py Store.replay)."""
    assert "{" in stream, stream  # the origin must share the stream's hash tag
    return f"{stream}:o"


def published(stream: str) -> str:
    """``--durability replica``: the id up to which ``stream`` (an inbox, a group's stream or the broadcast
    stream) has been published, in the stream's own slot (gateway/store.py, store_lua.PUBLISH_UPTO)."""
    assert "{" in stream, stream  # the cursor must share the stream's hash tag
    return f"{stream}:p"


def inbox_stream(key: str) -> str:
    """Every DM addressed to ``key``, for offline delivery and resume."""
    return f"{PREFIX}{{u:{key}}}:in"


# Files (gateway/files.py).  The bytes live in the blob store, named by their SHA-256.
def file_meta(sha256: str) -> str:
    """Hash {name, mime, size} of a stored file, as its first uploader described it (download headers)."""
    return f"{PREFIX}{{f:{sha256}}}"


def upload(ukey: str, upload_id: str) -> str:
    """Hash {user, name, size, mime, sha} of ``ukey``'s upload in progress; expires a day after its last ``upload``.

    In the uploader's slot, next to the quota keys, so declaring an upload and reserving its
    size is one single-slot script (gateway/files.py).  Chunks name only the upload id; the
    gateway knows the session's user, so the key is always found."""
    return f"{PREFIX}{{u:{ukey}}}:up:{upload_id}"


def files_owned(key: str) -> str:
    """Hash sha256 -> size: the files charged to a user's quota (each once)."""
    return f"{PREFIX}{{u:{key}}}:fo"


def files_used(key: str) -> str:
    """Bytes charged to a user's quota: the sum of ``files_owned``."""
    return f"{PREFIX}{{u:{key}}}:fu"


def files_reserved(key: str) -> str:
    """Hash upload id -> size: uploads in progress, counted against the quota before any byte is stored."""
    return f"{PREFIX}{{u:{key}}}:fr"


# Pub/sub channels.
BROADCAST_CHANNEL = f"{PREFIX}{{all}}:c"


def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()
CLUSTER_SLOTS = 16384


def crc16(data: bytes) -> int:
    """CRC16-XMODEM, the checksum Redis Cluster hashes keys with."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[(crc >> 8) ^ byte]
    return crc


def key_slot(key: str) -> int:
    """The Redis Cluster slot of a key or sharded channel (its ``{tag}``, if it has one)."""
    data = key.encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1:end]
    return crc16(data) % CLUSTER_SLOTS


# Presence events go out on PRESENCE_PARTITIONS sharded channels (docs/cluster.md "Presence fan-out"),
# a user's always on the same one.  Their tags are chosen (as Centrifugo does) so that channel k's slot
# lies near the middle of the k-th of PRESENCE_PARTITIONS equal slot ranges: however the slots are split
# over the masters, each master carries its share of presence traffic, not all of it or none.
PRESENCE_PARTITIONS = 16


def _presence_tag(partition: int, partitions: int) -> str:
    width = CLUSTER_SLOTS / partitions
    centre = int((partition + 0.5) * width)
    reach = max(1, int(width / 16))
    n = 0
    while abs(key_slot(f"pres:{partition}:{n}") - centre) > reach:
        n += 1
    return f"pres:{partition}:{n}"


def presence_channels(partitions: int = PRESENCE_PARTITIONS) -> tuple[str, ...]:
    """The presence channels, one per partition, with slot-balanced hash tags (deterministic)."""
    return tuple(f"{PREFIX}{{{_presence_tag(k, partitions)}}}:c" for k in range(partitions))


# Every presence channel a gateway listens to (partitioned across shards in cluster mode): the output of
# presence_channels(), written out so importing costs nothing (tests/unit/test_presence_partitions.py checks).
PRESENCE_CHANNELS: tuple[str, ...] = tuple(f"{PREFIX}{{pres:{tag}}}:c" for tag in (
    "0:13", "1:18", "2:245", "3:218", "4:67", "5:158", "6:226", "7:467",
    "8:168", "9:122", "10:229", "11:263", "12:24", "13:38", "14:441", "15:200",
))


def presence_channel(ukey: str) -> str:
    """The presence channel a user's online/offline events go to (stable: always the same one)."""
    return PRESENCE_CHANNELS[crc16(ukey.encode()) % len(PRESENCE_CHANNELS)]


def user_channel(key: str) -> str:
    return f"{PREFIX}{{u:{key}}}:c"


def gateway_channel(node_id: str) -> str:
    """Control messages for one gateway (protocol/control.py). Lua builds it with ``key_gateway_channel``."""
    return f"{PREFIX}{{gw:{node_id}}}:c"


# Result of a send with this ref, kept a few minutes so a retry is acked, not re-sent; in the slot of
# the stream the send writes (the recipient's, the group's, or {all}), so the store script checks it.
def dm_dedupe(to_key: str, sender_key: str, ref: str) -> str:
    return f"{PREFIX}{{u:{to_key}}}:dd:{sender_key}:{ref}"


def group_dedupe(gkey: str, sender_key: str, ref: str) -> str:
    return f"{PREFIX}{{g:{gkey}}}:dd:{sender_key}:{ref}"


def broadcast_dedupe(sender_key: str, ref: str) -> str:
    return f"{PREFIX}{{all}}:dd:{sender_key}:{ref}"


# Groups: hash {name, owner, owner_name, invite_only}; members hash key -> display name;
# invited set; and per user the set of group keys they belong to.
def group(gkey: str) -> str:
    return f"{PREFIX}{{g:{gkey}}}"


def group_members(gkey: str) -> str:
    return f"{PREFIX}{{g:{gkey}}}:m"


def group_invited(gkey: str) -> str:
    return f"{PREFIX}{{g:{gkey}}}:inv"


def user_groups(ukey: str) -> str:
    return f"{PREFIX}{{u:{ukey}}}:ug"


def group_cursors(ukey: str) -> str:
    """Hash group key -> last group message id written to this user (saved as it advances, and at logout)."""
    return f"{PREFIX}{{u:{ukey}}}:gcur"


def group_parted(ukey: str) -> str:
    """Hash group key -> "since upto": the last membership of this user that ended (a removal by the
    owner, or a leave; the ids current when it began and when it ended).  A gateway that missed the
    end (pub/sub down, catching up, an answer lost) still owes the user what was stored up to
    ``upto``; kept a day (PARTED_TTL)."""
    return f"{PREFIX}{{u:{ukey}}}:gpart"


PARTED_TTL = 86_400  # seconds a removal's record is kept: far longer than any outage a gateway recovers from


def group_order(gkey: str) -> str:
    """Zset member key -> join sequence: who has been in the group longest (the next owner)."""
    return f"{PREFIX}{{g:{gkey}}}:o"


def group_since(gkey: str) -> str:
    """Hash member key -> the message id current when they joined: nothing at or before it reaches them."""
    return f"{PREFIX}{{g:{gkey}}}:j"


def group_ended(gkey: str) -> str:
    """Hash member key -> "since upto": the last membership of each user that ended (leave or removal),
    kept in the group's slot so the user's side (``group_parted``, written in a second step) can be
    repaired at login if a crash fell between the two steps (gateway/groups.py).  Expires PARTED_TTL
    after the last write."""
    return f"{PREFIX}{{g:{gkey}}}:e"


def invitations(ukey: str) -> str:
    """Hash group key -> the ``invited`` group_event frame: invitations still pending, sent at login."""
    return f"{PREFIX}{{u:{ukey}}}:inv"


def group_stream(gkey: str) -> str:
    return f"{PREFIX}{{g:{gkey}}}:s"


def group_channel(gkey: str) -> str:
    return f"{PREFIX}{{g:{gkey}}}:c"


def rate(ukey: str) -> str:
    """A user's send token bucket (shared by every gateway)."""
    return f"{PREFIX}{{u:{ukey}}}:rl"


def request_rate(ukey: str) -> str:
    """A user's token bucket for every request that is not a send (shared by every gateway)."""
    return f"{PREFIX}{{u:{ukey}}}:rq"


# Login guard (gateway/accounts.py): password evaluations are budgeted per account and per
# kind of caller, so a stranger's guesses cannot lock out the owner (docs/security.md).
def login_budget(ukey: str, kind: str) -> str:
    """Password evaluations taken in the current window by ``kind`` ("stranger", "token", "ip") callers."""
    return f"{PREFIX}{{u:{ukey}}}:pwb:{kind}"


def login_tokens(ukey: str) -> str:
    """Zset: SHA-256 of session tokens issued to this account -> expiry (ms, Redis clock)."""
    return f"{PREFIX}{{u:{ukey}}}:ltok"


def name_skeleton(side: str, skeleton: str) -> str:
    """Who holds a UTS #39 skeleton (``side`` "f" fold or "u" upper, protocol/confusables.py).

    The value is the holder's account key, followed by `` <attempt>`` while it was claimed by a
    registration attempt (gateway/skeletons.py: a claim whose account and attempt are both gone
    is free)."""
    return f"{PREFIX}{{skel:{side}:{skeleton}}}"


def registration(ukey: str, attempt: str) -> str:
    """A registration attempt of ``ukey`` in progress (a lease): its skeleton claims count until it ends."""
    return f"{PREFIX}{{u:{ukey}}}:reg:{attempt}"


SKELETONS_BACKFILLED = f"{PREFIX}{{reg}}:skel-backfilled"  # set once every account stored before has its skeletons


def ip_connections(ip: str) -> str:
    """Connection-attempt token bucket of one address (an IPv6 /64), shared by every gateway."""
    return f"{PREFIX}{{ip:{ip}}}:c"


def ip_logins(ip: str) -> str:
    """Login-attempt token bucket of one address (an IPv6 /64), shared by every gateway."""
    return f"{PREFIX}{{ip:{ip}}}:l"


_HOLE = "\x00"


def lua_functions(*builders: Callable[[str], str]) -> str:
    """Lua ``local function key_<name>(prefix, x)`` for each one-argument key builder given.

    Each is generated from the Python function (called with a placeholder), with the
    prefix left to the script's ``prefix`` argument as before: ``key_session(prefix, ukey)``
    is ``prefix .. '{u:' .. ukey .. '}:sess'``.
    """
    out = []
    for build in builders:
        name = build(_HOLE)
        assert name.startswith(PREFIX) and name.count(_HOLE) == 1, build.__name__
        head, tail = name[len(PREFIX):].split(_HOLE)
        body = " .. ".join(["p", *([_lua_string(head)] if head else []), "x", *([_lua_string(tail)] if tail else [])])
        out.append(f"local function key_{build.__name__}(p, x) return {body} end\n")
    return "".join(out)


def _lua_string(text: str) -> str:
    assert "'" not in text and "\\" not in text and "\n" not in text, text
    return f"'{text}'"
