"""chinwag-migrate: a Redis of the previous release, migrated, then served by a real gateway to real clients."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from redis.asyncio import Redis

from chinwag import migrate as migration
from common import keys
from common.layout import LAYOUT_EXIT
from protocol import frames as f
from protocol.errors import ChatError
from protocol.names import id_tuple
from tests.helpers import ROOT, Clients, Processes, RedisServer, wait_for_event, wait_until
from tests.integration.old_layout import PASSWORDS, SHA, OldData, frame_body, write_old_layout


@pytest.fixture
async def old_redis(redis_server: RedisServer) -> Any:
    redis = Redis.from_url(redis_server.url)
    data = await write_old_layout(redis)
    yield redis, data
    await redis.aclose()


def run_cli(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chinwag.migrate", "--redis-url", url], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


async def snapshot(redis: Redis) -> dict[bytes, bytes | None]:
    return {k: await redis.dump(k) async for k in redis.scan_iter(match="*")}


def messages(event: object) -> bool:
    return isinstance(event, f.Message)


def after(old_last: str, new_id: str) -> bool:
    return id_tuple(new_id) > id_tuple(old_last)


async def test_gateway_and_presence_refuse_an_unmigrated_redis(
    old_redis: tuple[Redis, OldData], redis_server: RedisServer, processes: Processes
) -> None:
    gateway = processes.gateway(redis_server.url, start=False).start(wait_ready=False)
    presence = processes.presence(redis_server.url)
    for proc in (gateway, presence):
        assert proc.proc is not None
        assert proc.proc.wait(30) == LAYOUT_EXIT, proc.log()
        assert "chinwag-migrate" in proc.log()
    redis, _ = old_redis
    assert await redis.exists("cw:acct:alice")  # refused, and touched nothing


async def test_old_accounts_and_messages_survive_the_upgrade(
    old_redis: tuple[Redis, OldData], redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    redis, old = old_redis
    done = run_cli(redis_server.url)
    assert done.returncode == 0, done.stderr
    assert "accounts: 3" in done.stdout and "DM messages (into recipients' halves): 8" in done.stdout
    assert [k async for k in redis.scan_iter(match="cw:*") if not k.startswith(b"cw:{")] == []
    assert await redis.get(keys.files_used("alice")) == b"5"
    assert await redis.hget(keys.files_owned("alice"), SHA) == b"5"
    assert await redis.hget(keys.upload("alice", "u1"), "sha") == SHA.encode()
    assert await redis.get(keys.stream_origin(keys.dm_half("bob", "alice"))) == old.ids["hi bob"].encode()

    # Twice: the second run finds nothing to do and changes nothing.
    before = await snapshot(redis)
    again = run_cli(redis_server.url)
    assert again.returncode == 0 and "nothing to migrate" in again.stdout, again.stdout + again.stderr
    assert await snapshot(redis) == before

    url = processes.gateway(redis_server.url).url
    alice = await clients.login(url, "alice", PASSWORDS["alice"])
    bob = await clients.login(url, "bob", PASSWORDS["Bob"])
    with pytest.raises(ChatError):
        await clients.login(url, "alice", "not her password")
    conversation = ["hi bob", "hi alice", "how are you", "fine"]
    assert [m.body for m in await alice.history("@bob")] == conversation
    assert [m.body for m in await bob.history("@alice")] == conversation
    assert [m.id for m in await bob.history("@alice")] == [old.ids[b] for b in conversation]
    assert [m.body for m in await alice.history("@bob", before=old.ids["fine"], limit=2)] == conversation[1:3]
    assert [m.body for m in await alice.history("@alice")] == ["note to self"]
    assert [m.body for m in await bob.history("*")] == ["hello all"]
    assert [g.group for g in await bob.groups()] == ["Secret"]
    assert [m.body for m in await bob.history("#secret")] == ["secret 1", "secret 2"]

    # carol was offline: the two DMs after her old `delivered` cursor come once, then her invitation works.
    carol = await clients.login(url, "carol", PASSWORDS["carol"])
    got = [await wait_for_event(carol, messages) for _ in range(2)]
    assert [m.body for m in got] == ["while you were away", "also this"]  # type: ignore[union-attr]
    await carol.send("@carol", "marker")
    assert (await wait_for_event(carol, messages)).body == "marker"  # type: ignore[union-attr]
    assert set((await carol.group("join", "#secret")).members) == {"alice", "Bob", "carol"}

    # New messages number after every old one, in every kind of stream, and join the old history.
    for to in ("@bob", "*", "#secret"):
        ack = await alice.send(to, f"new to {to}")
        assert after(old.last_id, ack.id), (to, ack.id, old.last_id)
    assert after(old.last_id, (await bob.send("@alice", "reply")).id)
    assert [m.body for m in await alice.history("@bob")][-3:] == ["fine", "new to @bob", "reply"]
    assert [m.body for m in await carol.history("#secret")] == ["secret 1", "secret 2", "new to #secret"]


async def test_a_crashed_run_is_finished_by_the_next(
    old_redis: tuple[Redis, OldData], redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis, old = old_redis
    # As if the first run died mid-split: the first DM already copied into bob's half ...
    first: Any = await redis.xrange("cw:s:dm:alice|bob", count=1)
    await redis.xadd(keys.dm_half("bob", "alice"), {"f": first[0][1][b"f"]}, id=first[0][0])

    # ... and then died again before the origins step.
    def crash(*_: object) -> None:
        raise ConnectionError("power cut")

    monkeypatch.setattr(migration, "_move_origins", crash)
    with pytest.raises(ConnectionError):
        await migration.migrate(redis)
    assert await redis.exists("cw:lastid")  # still refused by the gateways: the marker goes last
    monkeypatch.undo()

    lines: list[str] = []
    assert await migration.run(redis_server.url, lines.append) == 0
    half: Any = await redis.xrange(keys.dm_half("bob", "alice"))
    assert [frame_body(fields[b"f"]) for _, fields in half] == ["hi bob", "how are you"]  # no duplicate
    assert await redis.get(keys.stream_origin(keys.inbox_stream("carol"))) is not None
    assert await redis.get(keys.user_clock("carol")) == old.last_id.encode()
    assert await redis.get(keys.group_clock("secret")) == old.last_id.encode()
    assert not await redis.exists("cw:lastid")


async def test_a_taken_new_name_is_a_conflict_not_an_overwrite(
    old_redis: tuple[Redis, OldData], redis_server: RedisServer
) -> None:
    redis, _ = old_redis
    await redis.hset(keys.account("carol"), mapping={"name": "carol", "pw": "new-release"})
    assert run_cli(redis_server.url).returncode == 1
    assert await redis.hget(keys.account("carol"), "pw") == b"new-release"
    assert await redis.exists("cw:acct:carol") and await redis.exists("cw:lastid")


def test_a_cluster_url_is_refused() -> None:
    with pytest.raises(SystemExit) as exc:
        migration.main(["--redis-url", "redis+cluster://127.0.0.1:7000"])
    assert exc.value.code == 2


async def test_embedded_server_migrates_its_own_redis(processes: Processes, clients: Clients, tmp_path: Any) -> None:
    from common.embedded import EmbeddedRedis

    data_dir = tmp_path / "data"
    embedded = EmbeddedRedis(str(data_dir))
    redis = Redis.from_url(embedded.start())
    try:
        old = await write_old_layout(redis)
    finally:
        await redis.aclose()
        embedded.stop()
    server = processes.server(args=["--data-dir", str(data_dir)])
    wait_until(lambda: "new key layout" in server.log(), 10, "the migration's summary in the log")
    bob = await clients.login(server.url, "bob", PASSWORDS["Bob"])
    assert [m.body for m in await bob.history("@alice")] == ["hi bob", "hi alice", "how are you", "fine"]
    assert after(old.last_id, (await bob.send("*", "new")).id)


async def test_a_live_old_gateway_stops_the_migration(
    old_redis: tuple[Redis, OldData], redis_server: RedisServer
) -> None:
    redis, _ = old_redis
    seconds, _micros = await redis.time()
    await redis.zadd("cw:gateways", {"still-up": (seconds + 60) * 1000})
    done = run_cli(redis_server.url)
    assert done.returncode == 1 and "still-up" in done.stderr and "stop them first" in done.stderr
    assert await redis.exists("cw:acct:alice")  # nothing moved
