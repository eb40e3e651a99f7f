"""Accounts, files and limit buckets on a real Redis Cluster: every script and MULTI runs in one slot.

A script or multi-key command that touched two slots would fail here (the
client refuses it, or Redis answers CROSSSLOT / "non local key").  Names are
random per test and spread over every master; every key made is deleted (the
cluster is the session's, ``redis_cluster`` in tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster as ClusterClient
from websockets.datastructures import Headers
from websockets.http11 import Request

from common import keys
from common.config import Settings
from common.redis import connect_redis_cluster
from common.redis_cluster import RedisCluster
from gateway.accounts import Accounts
from gateway.blobs import DirectoryBlobStore
from gateway.files import FileService
from gateway.limits import SharedIpLimiter
from gateway.request_rate import RequestLimiter
from gateway.skeletons import skeleton_keys
from presence.registry import token_hash
from protocol import frames as f
from protocol.errors import BadHash, QuotaExceeded, RateLimited, UsernameConfusable
from protocol.files import encode_chunk, upload_id
from protocol.names import login_name


@pytest.fixture
async def cluster(redis_cluster: RedisCluster) -> AsyncIterator[ClusterClient]:
    client = connect_redis_cluster(redis_cluster.url)
    await client.initialize()  # the slot map, for spread()
    made: list[str] = []
    client.made = made  # type: ignore[attr-defined]
    yield client
    for key in made:
        await client.delete(key)
    await client.aclose()


def spread(cluster: ClusterClient, count: int, build: Any = keys.account) -> list[str]:
    """``count`` random names per master (by the slot of ``build(name)``)."""
    masters = {n.name for n in cluster.get_primaries()}
    assert len(masters) == 3
    per: dict[str, list[str]] = {m: [] for m in masters}
    while any(len(v) < count for v in per.values()):
        name = "t" + secrets.token_hex(5)
        node = cluster.get_node_from_key(build(name)).name
        if len(per[node]) < count:
            per[node].append(name)
    return [n for names in per.values() for n in names]


def forget_user(cluster: ClusterClient, key: str) -> None:
    made: list[str] = cluster.made  # type: ignore[attr-defined]
    made += [keys.account(key), keys.login_tokens(key), *skeleton_keys(key),
             *(keys.login_budget(key, kind) for kind in ("stranger", "token", "ip")),
             keys.files_owned(key), keys.files_used(key), keys.files_reserved(key), keys.session(key),
             keys.request_rate(key), keys.rate(key)]


async def test_accounts_register_log_in_and_refuse_look_alikes_in_one_slot_per_script(
    cluster: ClusterClient,
) -> None:
    accounts = Accounts(cluster, time_cost=1, memory_kib=64, max_failures=2, lockout_seconds=60)
    try:
        for name in spread(cluster, 1):
            forget_user(cluster, name)
            assert await accounts.authenticate(login_name(name), "pw", issued="tok", ip="10.0.0.1") == name
            assert await accounts.authenticate(login_name(name.upper()), "pw", issued="t2", presented="tok") == name
            with pytest.raises(Exception, match="password"):
                await accounts.authenticate(login_name(name), "wrong", issued="t3", ip="10.9.9.9")
            assert [await cluster.get(sk) for sk in skeleton_keys(name)] == [name.encode()] * 2
        # A look-alike: refused by the read-only check, and by the claims themselves (past that check).
        base = "c" + secrets.token_hex(4).replace("0", "a")
        forget_user(cluster, base)
        await accounts.authenticate(login_name(base), "pw", issued="t")
        look_alike = login_name(base.replace("c", "\u0441", 1))  # Cyrillic es
        forget_user(cluster, look_alike.key)
        with pytest.raises(UsernameConfusable):
            await accounts.authenticate(look_alike, "pw", issued="t")
        with pytest.raises(UsernameConfusable):
            await accounts._register(look_alike, "hash")
        assert not await cluster.exists(keys.account(look_alike.key))
    finally:
        accounts.close()


async def test_a_dead_registration_attempt_frees_its_claims_on_the_cluster(cluster: ClusterClient) -> None:
    accounts = Accounts(cluster, time_cost=1, memory_kib=64)
    try:
        base = "c" + secrets.token_hex(4).replace("0", "a")
        look_alike = login_name(base.replace("c", "\u0441", 1))
        forget_user(cluster, base)
        forget_user(cluster, look_alike.key)
        for sk in skeleton_keys(base):  # claims of an attempt whose lease is over and that made no account
            await cluster.set(sk, f"{base} dead")
        assert await accounts.authenticate(look_alike, "pw", issued="t") == look_alike.display
        assert [await cluster.get(sk) for sk in skeleton_keys(base)] == [look_alike.key.encode()] * 2
    finally:
        accounts.close()


async def test_skeleton_backfill_scans_every_master(cluster: ClusterClient) -> None:
    names = spread(cluster, 2)
    for name in names:
        forget_user(cluster, name)
        await cluster.hset(keys.account(name), mapping={"name": name, "pw": "x"})
    had_marker = await cluster.exists(keys.SKELETONS_BACKFILLED)
    await cluster.delete(keys.SKELETONS_BACKFILLED)
    accounts = Accounts(cluster, time_cost=1, memory_kib=64)
    try:
        assert await accounts.backfill_skeletons(batch=3) >= len(names)
        for name in names:
            assert [await cluster.get(sk) for sk in skeleton_keys(name)] == [name.encode()] * 2
        assert await accounts.backfill_skeletons() == 0
    finally:
        accounts.close()
        if not had_marker:
            await cluster.delete(keys.SKELETONS_BACKFILLED)


async def test_uploads_quota_and_downloads_run_in_the_users_slot(cluster: ClusterClient, tmp_path: Path) -> None:
    settings = Settings(max_file_bytes=1000, user_quota_bytes=100)
    files = FileService(settings, cluster, DirectoryBlobStore(str(tmp_path / "blobs")), chunk_bytes=16)
    alice_key, bob_key = spread(cluster, 1, keys.files_used)[:2]
    alice: Any = SimpleNamespace(key=alice_key, name=alice_key)
    bob: Any = SimpleNamespace(key=bob_key, name=bob_key)
    forget_user(cluster, alice_key)
    forget_user(cluster, bob_key)
    data = secrets.token_bytes(40)
    sha = hashlib.sha256(data).hexdigest()
    cluster.made.append(keys.file_meta(sha))  # type: ignore[attr-defined]

    ready = f.parse_server_frame(await files.start_upload(alice, f.Upload(name="a.bin", size=40, sha256=sha)))
    assert isinstance(ready, f.UploadReady) and ready.offset == 0
    uid = upload_id(alice_key, sha)
    assert await cluster.hget(keys.upload(alice_key, uid), "sha") == sha.encode()
    assert await cluster.hget(keys.files_reserved(alice_key), uid) == b"40"
    # Over the quota while this one is reserved (the other reservation is read in the script).
    other = hashlib.sha256(b"x" * 70).hexdigest()
    with pytest.raises(QuotaExceeded):
        await files.start_upload(alice, f.Upload(name="b.bin", size=70, sha256=other))
    for offset in range(0, 40, 16):
        reply = f.parse_server_frame(await files.on_chunk(alice, encode_chunk(uid, offset, data[offset:offset + 16])))
    assert isinstance(reply, f.Uploaded) and reply.file.id == sha
    assert not await cluster.exists(keys.upload(alice_key, uid))
    assert int(await cluster.get(keys.files_used(alice_key))) == 40

    # Bob sends the same bytes: stored already, charged to him, nothing sent.
    again = f.parse_server_frame(await files.start_upload(bob, f.Upload(name="c.bin", size=40, sha256=sha)))
    assert isinstance(again, f.Uploaded)
    assert int(await cluster.get(keys.files_used(bob_key))) == 40
    await files._refund(bob_key, sha, 40)  # the MULTI of a failed commit: one slot
    assert int(await cluster.get(keys.files_used(bob_key))) == 0

    # A wrong hash drops the upload's state and reservation (a MULTI in the user's slot).
    wrong = hashlib.sha256(b"not these bytes").hexdigest()
    await files.start_upload(bob, f.Upload(name="d.bin", size=4, sha256=wrong))
    bad = f.parse_server_frame(await files.on_chunk(bob, encode_chunk(upload_id(bob_key, wrong), 0, b"abcd")))
    assert isinstance(bad, f.Error) and bad.code == BadHash.code.value
    assert not await cluster.exists(keys.upload(bob_key, upload_id(bob_key, wrong)))
    assert await cluster.hget(keys.files_reserved(bob_key), upload_id(bob_key, wrong)) is None

    # Download with the live session's token.
    await cluster.hset(keys.session(alice_key), mapping={"token": token_hash("secret"), "gw": "g"})
    request = Request(f"/files/{sha}?user={alice_key}", Headers([("Authorization", "Bearer secret")]))
    response = await files.http_download(request)
    assert response is not None and response.status_code == 200 and response.body == data
    assert response.headers["Content-Type"] == "application/octet-stream"


async def test_a_crash_before_the_file_description_is_repaired_by_the_next_upload(
    cluster: ClusterClient, tmp_path: Path
) -> None:
    files = FileService(Settings(), cluster, DirectoryBlobStore(str(tmp_path / "blobs")))
    user_key = spread(cluster, 1)[0]
    user: Any = SimpleNamespace(key=user_key, name=user_key)
    forget_user(cluster, user_key)
    data = secrets.token_bytes(10)
    sha = hashlib.sha256(data).hexdigest()
    cluster.made.append(keys.file_meta(sha))  # type: ignore[attr-defined]
    uid = upload_id(user_key, sha)
    await files.start_upload(user, f.Upload(name="x.txt", size=10, sha256=sha, mime="text/plain"))
    await files.on_chunk(user, encode_chunk(uid, 0, data))
    await cluster.delete(keys.file_meta(sha))  # as if the gateway died between the commit and the description
    await files.start_upload(user, f.Upload(name="x.txt", size=10, sha256=sha, mime="text/plain"))
    assert await cluster.hget(keys.file_meta(sha), "mime") == b"text/plain"


class _DirectPipeline:
    """The limiter's auto-pipeline reduced to its one call, sent by the cluster client to the key's master."""

    async def evalsha(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        return await script(keys=keys, args=args)


async def test_ip_and_request_buckets_are_one_key_scripts(cluster: ClusterClient) -> None:
    limiter = SharedIpLimiter(cluster, _DirectPipeline(), keys.ip_logins, rate=0.001, burst=2)  # type: ignore[arg-type]
    requests = RequestLimiter(cluster, rate=0.001, burst=2)
    made: list[str] = cluster.made  # type: ignore[attr-defined]
    for ip in [f"10.{i}.0.1" for i in range(12)]:  # buckets on every master
        made.append(keys.ip_logins(ip))
        assert await limiter.take(ip) == 0 and await limiter.take(ip) == 0
        assert await limiter.take(ip) > 0
    assert limiter.fallbacks == 0
    for user in spread(cluster, 1, keys.request_rate):
        forget_user(cluster, user)
        await requests.take(user)
        await requests.take(user)
        with pytest.raises(RateLimited):
            await requests.take(user)
