"""chinwag-admin's presence monitor (chinwag.admin_node._monitor) on a real Redis Cluster and on one Redis.

No window and no gateway process: the monitor posts to a recording stand-in
for the window, and the tests publish presence themselves, either raw on each
of the 16 partitions (``SPUBLISH`` on the cluster, ``PUBLISH`` on one Redis)
or through the real registry (claims and releases on a registered gateway
lease), as gateways do.  Names and gateway ids are unique per test; every key
a test made is deleted at its end (the cluster is shared by the session).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from chinwag.admin_node import GatewayRow, _monitor, _run_node
from common import keys
from common.config import Settings
from common.redis_cluster import RedisCluster
from common.sharded_pubsub import CLUSTER_ERRORS
from presence.registry import Registry
from protocol import frames as f
from protocol.names import name_key
from tests.backends import connect_where
from tests.helpers import Clients, async_wait_until, free_port


class Window:
    """Records what the monitor shows: log notes, presence lines and the gateway table."""

    def __init__(self) -> None:
        self.notes: list[tuple[str, str]] = []
        self.lines: list[tuple[str, str, str | None]] = []
        self.table: tuple[list[GatewayRow], int | None] = ([], None)
        self.started: Settings | None = None

    def _node_started(self, settings: Settings) -> None:
        self.started = settings

    def _monitor_note(self, level: str, text: str) -> None:
        self.notes.append((level, text))

    def _presence(self, when: str, user: str, status: str, node: str | None) -> None:
        self.lines.append((user, status, node))

    def _show_gateways(self, rows: list[GatewayRow], online: int | None) -> None:
        self.table = (rows, online)

    def noted(self, text: str) -> bool:
        return any(text in note for _, note in self.notes)


class Watch:
    """A running monitor on one kind of Redis, a client of the same Redis, and a unique namespace."""

    def __init__(self, redis: Any, url: str, where: str) -> None:
        self.redis = redis
        self.url = url
        self.where = where
        self.window = Window()
        self.finish = asyncio.Event()
        self.tag = uuid.uuid4().hex[:8]
        self.users: list[str] = []
        self.gws: list[str] = []
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        watching = asyncio.Event()
        post: Callable[[Callable[[], None]], None] = lambda call: call()  # noqa: E731  # no Tk: run it here
        self.task = asyncio.create_task(_monitor(self.url, self.finish, post, self.window, watching))  # type: ignore[arg-type]
        await asyncio.wait_for(watching.wait(), 10)

    async def publish(self, channel: str, user: str, status: str) -> None:
        frame = f.encode(f.Presence(user=user, status=status))
        if self.where == "cluster":
            await self.redis.spublish(channel, frame)
        else:
            await self.redis.publish(channel, frame)

    async def stop(self) -> None:
        if self.task is not None:
            self.finish.set()
            await asyncio.wait_for(self.task, 10)

    async def clean(self) -> None:
        registry = Registry(self.redis)
        for gw in self.gws:
            await registry.release_gateway(gw)
            await self.redis.delete(keys.gateway_users(gw))
            await self.redis.hdel(keys.GATEWAY_EPOCHS, gw)
            await self.redis.hdel(keys.REAPING, gw)
            await self.redis.zrem(keys.GATEWAYS, gw)
        for user in self.users:
            await self.redis.delete(keys.session(name_key(user)))
            await self.redis.delete(keys.account(name_key(user)))
            await self.redis.hdel(keys.ONLINE_OWNERS, name_key(user))
        if self.users:
            await self.redis.zrem(keys.ONLINE, *self.users)


@contextlib.asynccontextmanager
async def watching(where: str, request: pytest.FixtureRequest) -> AsyncIterator[Watch]:
    redis, url = connect_where(where, request)
    w = Watch(redis, url, where)
    try:
        yield w
    finally:
        try:
            await w.stop()
        finally:
            await w.clean()
            await redis.aclose()


@pytest.fixture(params=["cluster", "single"])
async def watch(request: pytest.FixtureRequest) -> AsyncIterator[Watch]:
    async with watching(str(request.param), request) as w:
        yield w


@pytest.fixture
async def cluster_watch(request: pytest.FixtureRequest) -> AsyncIterator[Watch]:
    async with watching("cluster", request) as w:
        yield w


async def test_the_monitor_hears_every_presence_partition(watch: Watch) -> None:
    """One user per partition: on the cluster they are sharded channels on all three masters."""
    if watch.where == "cluster":
        await watch.redis.initialize()
        owners = {watch.redis.get_node_from_key(ch).name for ch in keys.PRESENCE_CHANNELS}
        assert len(owners) == 3  # the partitions are spread: one subscription would not hear them all
    await watch.start()
    assert watch.window.noted(f"Watching {watch.url}")
    users = [f"p{i}{watch.tag}" for i in range(len(keys.PRESENCE_CHANNELS))]
    for channel, user in zip(keys.PRESENCE_CHANNELS, users, strict=True):
        await watch.publish(channel, user, "online")
    await async_wait_until(lambda: len(watch.window.lines) >= len(users), 10, "a line for every partition")
    assert sorted(watch.window.lines) == sorted((user, "online", None) for user in users)
    await watch.publish(keys.PRESENCE_CHANNELS[5], users[5], "offline")
    await watch.stop()  # finishing drains what was already published
    assert watch.window.lines[-1] == (users[5], "offline", None)
    assert not [note for level, note in watch.window.notes if level == "warning"]


async def test_the_monitor_shows_the_registry_s_gateways_names_and_events(watch: Watch) -> None:
    """Claims and releases through the real registry, as gateways make them: log lines name the gateway,
    and the table (leases from ``{reg}``, user sets from each ``{gw:…}``) follows."""
    registry = Registry(watch.redis)
    gw1, gw2 = watch.gws[:] = [f"gw{watch.tag}a", f"gw{watch.tag}b"]
    alice, bob, carol = watch.users[:] = [f"alice{watch.tag}", f"bob{watch.tag}", f"carol{watch.tag}"]
    await registry.register_gateway(gw1)
    await registry.register_gateway(gw2)
    assert await registry.claim(name_key(alice), alice, gw1, "ta") is not None  # online before the monitor
    await watch.start()
    assert watch.window.noted(alice)  # "Watching …: N online (…, alice…, …)"

    def rows() -> dict[str, tuple[int, list[str], float]]:
        return {r.node: (r.users, r.names, r.lease_left) for r in watch.window.table[0] if r.node in watch.gws}

    await async_wait_until(lambda: rows().get(gw1, (0,))[0] == 1, 10, "gw1 with alice")
    assert await registry.claim(name_key(bob), bob, gw2, "tb") is not None
    assert await registry.claim(name_key(carol), carol, gw2, "tc") is not None
    await async_wait_until(lambda: len(watch.window.lines) >= 2, 10, "bob's and carol's connects")
    assert sorted(watch.window.lines) == [(bob, "online", gw2), (carol, "online", gw2)]
    await async_wait_until(lambda: rows().get(gw2, (0,))[0] == 2, 10, "gw2 with bob and carol")
    table = rows()
    assert table[gw1][1] == [name_key(alice)] and table[gw2][1] == sorted([name_key(bob), name_key(carol)])
    assert all(5 < lease <= 10 for _, _, lease in table.values())  # 10 s leases, Redis's clock
    assert watch.window.table[1] is not None and watch.window.table[1] >= 3

    assert await registry.release(name_key(bob), gw2, "tb")
    await async_wait_until(lambda: (bob, "offline", gw2) in watch.window.lines, 10, "bob's disconnect")
    await registry.release_gateway(gw1)  # a gateway's clean shutdown: its users go offline
    await async_wait_until(lambda: (alice, "offline", gw1) in watch.window.lines, 10, "alice's disconnect")
    await async_wait_until(lambda: set(rows()) == {gw2}, 10, "gw1 to leave the table")


async def test_the_monitor_on_a_cluster_reports_a_lost_shard_and_follows_it_again(
    redis_cluster: RedisCluster, cluster_watch: Watch
) -> None:
    """Every master drops its pub/sub clients: the log says the partitions went dark and came back,
    and events published after that are heard again (the subscriber repaired its links by itself)."""
    watch = cluster_watch
    await watch.start()
    for node in redis_cluster.master_nodes():
        node.ask("CLIENT", "KILL", "TYPE", "pubsub")
    await async_wait_until(lambda: _partitions(watch.window, "Lost the presence events of ") == 16, 10,
                           "all 16 partitions noted lost")
    await async_wait_until(lambda: _partitions(watch.window, "Following the presence events of ") == 16, 20,
                           "all 16 partitions followed again")
    assert not watch.window.noted("Lost the Redis connection")  # the table's reads never failed
    user = f"back{watch.tag}"
    for channel in keys.PRESENCE_CHANNELS:
        await watch.publish(channel, user, "online")
    await async_wait_until(lambda: len(watch.window.lines) >= 16, 10, "events from every partition again")


def _partitions(window: Window, prefix: str) -> int:
    """How many partitions the notes starting with ``prefix`` ("… of N of 16 partitions …") name in all."""
    return sum(int(note.removeprefix(prefix).split(" of ")[0]) for _, note in window.notes if note.startswith(prefix))


async def test_run_server_adds_a_node_to_the_cluster_it_watches(
    redis_cluster: RedisCluster, cluster_watch: Watch, clients: Clients, tmp_path: Path
) -> None:
    """Run Server while attached to a Redis Cluster: the node (gateway + reaper, chinwag.server.serve) runs on
    the cluster, and the monitor logs its users with its gateway id.  The monitor shares the node's loop:
    links it opened again while the node ran (after the masters dropped every pub/sub client) are its own,
    and outlive Stop Server, which cancels only what the node left behind."""
    watch = cluster_watch
    await watch.start()
    port = free_port()
    settings = Settings(host="127.0.0.1", port=port, data_dir=str(tmp_path / "data"), http_port=0,
                        argon2_time_cost=1, argon2_memory_kib=1024, shutdown_timeout=5.0, redis_url=watch.url)
    stop = asyncio.Event()
    node = asyncio.create_task(_run_node(settings, stop, lambda call: call(), watch.window,  # type: ignore[arg-type]
                                         with_monitor=False))
    try:
        await async_wait_until(lambda: watch.window.started is not None or node.done(), 30, "the node to run")
        assert not node.done()
        erin = f"erin{watch.tag}"
        watch.users.append(erin)
        await clients.login(f"ws://127.0.0.1:{port}", erin)
        await async_wait_until(lambda: any(line[:2] == (erin, "online") for line in watch.window.lines), 10,
                               "erin's connect line")
        (gateway,) = [line[2] for line in watch.window.lines if line[:2] == (erin, "online")]
        assert gateway and gateway in {row.node for row in watch.window.table[0]} | {gateway}
        watch.gws.append(gateway)
        await async_wait_until(lambda: any(r.node == gateway and r.users == 1 for r in watch.window.table[0]), 10,
                               "the node in the table with erin")
        for master in redis_cluster.master_nodes():
            master.ask("CLIENT", "KILL", "TYPE", "pubsub")
        await async_wait_until(lambda: _partitions(watch.window, "Following the presence events of ") == 16, 20,
                               "the monitor's links opened again while the node runs")
    finally:
        stop.set()
        await asyncio.wait_for(node, 30)
    await async_wait_until(lambda: (erin, "offline", gateway) in watch.window.lines, 10, "erin logged out by the stop")
    assert watch.task is not None and not watch.task.done()
    heard = len(watch.window.lines)
    for channel in keys.PRESENCE_CHANNELS:
        await watch.publish(channel, f"after{watch.tag}", "online")
    await async_wait_until(lambda: len(watch.window.lines) >= heard + 16, 10, "every partition heard after the stop")


@pytest.mark.timeout(180)
async def test_the_monitor_rides_out_a_failover_of_the_reg_master(
    redis_cluster: RedisCluster, cluster_watch: Watch
) -> None:
    """``kill -9`` of the master holding ``{reg}`` (leases, online index) and some partitions: the log says
    what went away and came back, the table is read again from the promoted replica, and every partition
    is heard again; the killed node then rejoins as a replica (the cluster is the session's)."""
    watch = cluster_watch
    registry = Registry(watch.redis)
    gw = f"gw{watch.tag}f"
    watch.gws.append(gw)
    await registry.register_gateway(gw)
    await watch.start()
    await async_wait_until(lambda: any(r.node == gw for r in watch.window.table[0]), 10, "the lease in the table")
    master = redis_cluster.master_for_key(keys.GATEWAYS)
    on_it = {ch for ch in keys.PRESENCE_CHANNELS if redis_cluster.master_for_key(ch) == master}
    assert on_it  # partitions balance over the slot ranges: the {reg} master has some
    try:
        await asyncio.to_thread(redis_cluster.kill_master, master, 20.0)
        await async_wait_until(lambda: _partitions(watch.window, "Lost the presence events of ") == len(on_it), 10,
                               "the dead master's partitions noted lost")
        await async_wait_until(lambda: _partitions(watch.window, "Following the presence events of ") == len(on_it),
                               20, "those partitions followed again")
        await registry.renew_lease(gw)  # a lease renewed after the failover: the table read it from the new master
        seen = len(watch.window.lines)

        async def published() -> bool:
            try:
                for channel in keys.PRESENCE_CHANNELS:
                    await watch.publish(channel, f"f{watch.tag}", "online")
            except CLUSTER_ERRORS:
                return False  # this client's slot map still names the dead master; it refreshes on the error
            return True

        await async_wait_until(published, 20, "publishing on every partition after the failover")
        await async_wait_until(lambda: len(watch.window.lines) >= seen + 16, 10, "every partition heard")
        await async_wait_until(lambda: any(r.node == gw and r.lease_left > 5 for r in watch.window.table[0]), 10,
                               "the table read after the failover")
        lost = [note for _, note in watch.window.notes if note.startswith("Lost the Redis connection")]
        if lost:  # a table read that hit the dead master: said once, and that it came back
            assert len(lost) == 1 and watch.window.noted("Redis connection restored")
    finally:
        await asyncio.to_thread(redis_cluster.restart, master)
