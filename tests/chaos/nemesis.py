"""Randomized fault injection in the style of Jepsen: a nemesis, a workload and a checker.

A run starts a real cluster (redis-server with AOF, the presence service with a
short lease, three gateways, each reaching Redis through its own TCP proxy,
and reached by its clients through another, whose port stays while the
gateway behind it restarts on whatever port is free) and users spread over
the gateways.  The **workload** sends DMs, broadcasts
and group messages, every send retried with its ``ref`` until acked, and
changes group membership (join, leave, invite + join, remove, and joins that
must be refused).  Meanwhile the **nemesis** draws faults at random from a
seeded generator: ``kill -9`` and restart of a gateway (same or new node id),
SIGSTOP/SIGCONT shorter and longer than the lease, a Redis restart, a
partition (short or past the lease) or added latency between one gateway and
Redis, clients dropping TCP without a close (their reconnect takes the name
over on another gateway, or the same one), and bursts of membership changes.

When the faults stop, everything is healed and the **checker** judges the
whole history:

* every acked message reaches each intended recipient exactly once (live or
  by resume), in id order per stream; an unacked send at most once; nothing
  arrives that nobody sent;
* nobody receives a group message stored while they were clearly not a
  member (membership windows are bounded by the group's clock read just before
  and after each membership change; a join's own ``position`` makes its start
  exact), and every clear member receives it;
* no name is held by two sessions: each user's name is held by exactly the
  gateway its one client is connected to, and every gateway's count of
  logged-in connections matches;
* within ``CONVERGE`` seconds every gateway is ready, presence agrees
  everywhere (Redis and every client's view), and fresh probes sent through
  every gateway reach everyone (subscriptions are live).

The seed is printed; ``CHINWAG_NEMESIS_SEED=<seed>`` (or
``pytest --nemesis-seed``) replays a run's schedule of faults and workload
choices (timing still varies).  A long run::

    python -m tests.chaos.nemesis --soak 30          # 30 minutes, in rounds of 5
    python -m tests.chaos.nemesis --seed 7 --duration 20

``--redis-cluster`` runs the same workload and checker on a 3+3 Redis Cluster
(common/redis_cluster.py, with AOF) instead, the gateways with ``--durability
replica`` (an ack waits for WAIT 1, so a promoted replica has every acked
message).  The gateways reach the nodes directly (a cluster client follows the
addresses the nodes announce, so no proxy can sit in between): the partition
and latency faults are left out, and ``master_kill`` (``kill -9`` of a random
master, its replica promoted, the old master restarted as a replica) stands in
for ``redis_restart``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as redis_async

from client import ChatClient
from client.errors import ClientError
from common import keys
from common.redis import connect_redis_cluster
from common.redis_cluster import RedisCluster
from protocol import frames as f
from protocol.errors import ChatError, Forbidden, NotFound, NotMember
from protocol.names import group_name, id_tuple
from tests.chaos.checker import Checker, History, Mid, Sent, Transition
from tests.chaos.proxy import Proxy
from tests.helpers import BIND_ATTEMPTS, Proc, Processes, RedisServer, async_wait_until

log = logging.getLogger("nemesis")

LEASE_TTL = 2.0
REAP_INTERVAL = 0.2
CONVERGE = 45.0  # seconds after the faults stop for delivery and convergence
GROUPS = ("g0", "g1")  # g0 is open (owner u0), g1 invite-only (owner u1)
FAULTS = (
    "kill9", "pause_short", "pause_long", "redis_restart", "partition_short", "partition_long", "latency",
    "drop_takeover", "drop_same", "group_churn",
)
# On a Redis Cluster (``Config.redis_cluster``): no proxy between the gateways and the nodes.
PROXY_FAULTS = ("redis_restart", "partition_short", "partition_long", "latency")
CLUSTER_FAULTS = (*(k for k in FAULTS if k not in PROXY_FAULTS), "master_kill")



@dataclass
class Config:
    seed: int
    duration: float = 20.0  # seconds of faults
    users: int = 6
    gateways: int = 3
    rate: float = 3.0  # sends per second per user
    max_concurrent_faults: int = 2
    redis_cluster: bool = False  # a 3+3 Redis Cluster instead of one Redis (see the module docstring)

    @property
    def faults(self) -> tuple[str, ...]:
        return CLUSTER_FAULTS if self.redis_cluster else FAULTS


class Cluster:
    """Redis, presence and the gateways (each behind its proxy); faults act on it."""

    def __init__(self, cfg: Config, procs: Processes, redis: RedisServer | RedisCluster) -> None:
        self.cfg = cfg
        self.procs = procs
        self.redis = redis
        self.env = {"CHINWAG_LEASE_TTL": str(LEASE_TTL), "CHINWAG_REAP_INTERVAL": str(REAP_INTERVAL)}
        # The clients' address of each gateway: a proxy on a port held all run.  Behind it the gateway
        # binds a new free port at each start, retried if that port is taken before it binds (a
        # fixed port is not safe: any bind, or an outgoing connection's local end, can take it
        # while the gateway is down, and the clients would then reach whoever holds it).
        self.fronts: list[Proxy] = []
        self.rebinds = 0  # gateway starts retried because a port was taken
        self.proxies: list[Proxy] = []
        self.gateways: list[Proc | None] = [None] * cfg.gateways
        self.generation = [0] * cfg.gateways
        self.busy: set[Any] = set()  # gateways / "redis" a fault is acting on right now
        self.paused: set[int] = set()
        self.admin: Any = (connect_redis_cluster(redis.url) if isinstance(redis, RedisCluster)
                           else redis_async.Redis.from_url(redis.url, socket_timeout=3, socket_connect_timeout=2))

    @property
    def urls(self) -> list[str]:
        return [front.ws_url for front in self.fronts]

    async def start(self) -> None:
        self.procs.presence(self.redis.url, env=self.env)
        for _ in range(self.cfg.gateways):
            if isinstance(self.redis, RedisServer):
                proxy = Proxy(self.redis.port)
                await proxy.start()
                self.proxies.append(proxy)
            front = Proxy(None)
            await front.start()
            self.fronts.append(front)
        await asyncio.gather(*(self.start_gateway(i) for i in range(self.cfg.gateways)))

    async def start_gateway(self, i: int, new_node: bool = False) -> None:
        if new_node:
            self.generation[i] += 1
        node = f"gw{i}-{self.generation[i]}"
        args = ["--node-id", node, "--ping-interval", "5"]
        url = self.proxies[i].url if isinstance(self.redis, RedisServer) else self.redis.url
        if isinstance(self.redis, RedisCluster):
            args += ["--durability", "replica"]  # acked = on the replica a failover promotes
        for attempt in range(1, BIND_ATTEMPTS + 1):
            proc = self.procs.gateway(url, env=self.env, args=args, start=False)  # new ports
            proc.start(wait_ready=False)
            self.gateways[i] = proc
            if await self._wait_started(i, proc):
                return
            if not proc.bind_failed():
                break
            self.rebinds += 1
            log.warning("gateway %s could not bind its ports (start %d); starting it again on new ones",
                        node, attempt)
        log.warning("gateway %s not ready 30 s after its start (exited: %s)", node, proc.exited())

    async def _wait_started(self, i: int, proc: Proc) -> bool:
        """Point the clients' proxy at ``proc`` once it has bound its ports (its own log says so), then
        wait for it to be ready; False if it exited first or was not ready within 30 s."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not proc.exited():
            if self.fronts[i].upstream is None and await asyncio.to_thread(proc.listening):
                self.fronts[i].retarget(proc.port)  # clients may connect now, as to a gateway just listening
            if await asyncio.to_thread(proc.ready):
                self.fronts[i].retarget(proc.port)
                return True
            await asyncio.sleep(0.1)
        return False

    def kill(self, i: int) -> None:
        """``kill -9`` gateway ``i``; its clients' address leads nowhere until it is started again."""
        self.fronts[i].retarget(None)
        proc = self.gateways[i]
        if proc is not None:
            proc.kill()

    def signal(self, i: int, sig: signal.Signals) -> None:
        proc = self.gateways[i]
        if proc is not None and proc.proc is not None and proc.proc.poll() is None:
            proc.proc.send_signal(sig)

    async def last_id(self, group: str) -> Mid:
        """The group's position now (retried while Redis restarts): its clock, the last id it handed out
        (or its stream's last entry, if later), as the membership scripts read it (gateway/group_scripts.py)."""
        gkey = group_name(group)[1]
        deadline = time.monotonic() + 60
        while True:
            try:
                clock = await self.admin.get(keys.group_clock(gkey))
                last = await self.admin.xrevrange(keys.group_stream(gkey), count=1)
                ids = [id_tuple(clock.decode())] if clock else []
                ids += [id_tuple(last[0][0].decode())] if last else []
                return max(ids, default=(0, 0))
            except (OSError, redis_async.RedisError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def heal(self) -> None:
        """Undo every fault: resume paused gateways, heal links, restart dead gateways and Redis."""
        for i in range(self.cfg.gateways):
            self.signal(i, signal.SIGCONT)
        self.paused.clear()
        for proxy in self.proxies:
            proxy.latency = 0.0
            proxy.heal(reset=False)
        if isinstance(self.redis, RedisCluster):
            for node in self.redis.nodes:
                if not node.alive():
                    await asyncio.to_thread(self.redis.restart, node)
        elif self.redis.proc is None or self.redis.proc.poll() is not None:
            await asyncio.to_thread(self.redis.start)
        for i, proc in enumerate(self.gateways):
            if proc is None or proc.exited():
                self.fronts[i].retarget(None)
                await self.start_gateway(i)

    async def close(self) -> None:
        for i in range(self.cfg.gateways):
            self.signal(i, signal.SIGCONT)
        for proxy in self.proxies + self.fronts:
            await proxy.close()
        await self.admin.aclose()


class User:
    """One user: a reconnecting client, its sends and its membership changes."""

    def __init__(self, name: str, client: ChatClient, history: History, rng: random.Random) -> None:
        self.name = name
        self.client = client
        self.history = history
        self.rng = rng
        self.sent = 0
        self.doing = ""
        self.reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        async for event in self.client.events():
            if isinstance(event, f.Message):
                self.history.received[self.name].append(event)


class Run(Checker):
    def __init__(self, cfg: Config, workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.rng = random.Random(cfg.seed)
        self.history = History()
        self.users: dict[str, User] = {}
        self.locks: dict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self.stop_faults = asyncio.Event()
        self.stop_work = asyncio.Event()
        self.problems: list[str] = []
        self.known: list[str] = []  # the one known limitation (see _known)
        self.stats: dict[str, Any] = {}

    # -- setup --------------------------------------------------------------

    async def _first_login(self, name: str, urls: list[str]) -> ChatClient:
        """A logged-in client for ``name``, the first login retried (bounded) like any send.

        A client reconnects by itself only once logged in; the first login is
        its caller's to retry.  A gateway may close a socket during it (1001 if
        it is stopping, 1013 while Redis is away, 4003 if pub/sub dropped
        meanwhile) or leave it unanswered: try again, on the next gateway.
        """
        deadline = time.monotonic() + 60
        attempt = 0
        while True:
            client = ChatClient(urls[attempt % len(urls):] + urls[: attempt % len(urls)], request_timeout=20,
                                backoff_cap=1.0)
            client.takeover_patience = 120.0
            try:
                await client.connect()
                await client.login(name, "pw")
                return client
            except (ClientError, ChatError) as exc:  # UsernameTaken: an earlier attempt's claim, not yet freed
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 5)
                if time.monotonic() > deadline:
                    raise
                log.warning("first login of %s failed (%r); trying again", name, exc)
                self.stats["first_login_retries"] = self.stats.get("first_login_retries", 0) + 1
                attempt += 1
                await asyncio.sleep(0.5)

    async def _open_users(self, cluster: Cluster) -> None:
        urls = cluster.urls
        for n in range(self.cfg.users):
            name = f"u{n}"
            client = await self._first_login(name, urls[n % len(urls):] + urls[: n % len(urls)])
            user = User(name, client, self.history, random.Random(f"{self.cfg.seed}-{name}"))
            user.reader = asyncio.create_task(user.read())
            self.users[name] = user
        owner0, owner1 = self.users["u0"], self.users["u1"]
        for gname, owner, invite_only in (("g0", owner0, False), ("g1", owner1, True)):
            lo = await cluster.last_id(gname)
            info = await owner.client.group("create", gname, invite_only=invite_only)
            assert info.position is not None
            self.history.membership[(owner.name, gname)].append(Transition(True, lo, id_tuple(info.position)))

    # -- workload -------------------------------------------------------------

    def member_now(self, user: str, group: str) -> bool:
        """What the workload believes (the checker does not rely on it)."""
        if (user, group) in self.history.unknown_after:
            return False
        trans = self.history.membership.get((user, group), [])
        return bool(trans) and trans[-1].joined

    async def send(self, user: User, to: str) -> None:
        user.sent += 1
        body = f"{user.name}:{user.sent}:{to}"
        sent = Sent(user.name, to, body, floor=user.client.positions.get(f.STREAM_DM) if to[:1] == "@" else None)
        self.history.sends[body] = sent
        ref = f"{self.cfg.seed}-{body}"
        user.doing = f"send {body}"
        deadline = time.monotonic() + 60
        while True:
            try:
                ack = await user.client.send(to, body, ref=ref)
                sent.ack = ack.id
                return
            except (NotMember, NotFound):
                sent.refused = True  # removed meanwhile: not stored
                return
            except (ClientError, TimeoutError, ChatError):
                if user.client.state == "closed":
                    self.problems.append(f"{user.name}'s client closed for good: {user.client.closed}")
                    return
                if time.monotonic() > deadline:
                    self.problems.append(f"send {body!r} never acked in 60 s")
                    return
                await asyncio.sleep(0.2)

    async def membership_op(self, cluster: Cluster, user: User) -> None:
        group = user.rng.choice(GROUPS)
        if user.name == ("u0" if group == "g0" else "u1"):
            return  # owners stay
        key = (user.name, group)
        if key in self.history.unknown_after:
            return
        user.doing = f"membership {group}"
        async with self.locks[key]:
            owner = self.users["u0" if group == "g0" else "u1"]
            member = self.member_now(user.name, group)
            self.history.membership_ops += 1
            if group == "g0":
                await self._change(cluster, user, group, "leave" if member else "join", user)
            elif member:
                await self._change(cluster, user, group, "remove", owner)
            elif user.rng.random() < 0.3:
                await self._change(cluster, user, group, "join", user)  # not invited: must be refused
            else:
                await self._request(owner, "invite", group, user.name)
                await self._change(cluster, user, group, "join", user)

    async def _request(self, actor: User, op: str, group: str, target: str | None = None) -> f.GroupInfo | None:
        """A group op, retried while unanswered (join, invite and remove are idempotent; a leave
        retried after its first attempt ran gets not_member); None if it never got an answer."""
        deadline = time.monotonic() + 60
        while True:
            try:
                return await actor.client.group(op, group, user=target)
            except (Forbidden, NotMember):
                raise
            except (ClientError, TimeoutError, ChatError):
                if time.monotonic() > deadline or actor.client.state == "closed":
                    return None
                await asyncio.sleep(0.2)

    async def _change(self, cluster: Cluster, user: User, group: str, op: str, actor: User) -> None:
        key = (user.name, group)
        lo = await cluster.last_id(group)
        try:
            info = await self._request(actor, op, group, user.name if op == "remove" else None)
        except Forbidden:
            self.history.refused_joins += 1  # not a member, before, during and after
            self.history.refused_windows[key].append((lo, await cluster.last_id(group)))
            return
        except NotMember:
            info = None if op != "leave" else f.GroupInfo(op=op, group=group, owner="", invite_only=False, members=[])
            if op == "leave":  # a retried leave whose first attempt ran: left all the same
                self.history.membership[key].append(Transition(False, lo, await cluster.last_id(group)))
                return
        if info is None:  # no answer: it may have happened, now or later
            self.history.unknown_after[key] = lo
            return
        if op == "join":
            assert info.position is not None
            self.history.membership[key].append(Transition(True, lo, id_tuple(info.position)))
        else:
            self.history.membership[key].append(Transition(False, lo, await cluster.last_id(group), op == "remove"))

    async def work(self, cluster: Cluster, user: User) -> None:
        names = sorted(self.users)
        while not self.stop_work.is_set():
            await asyncio.sleep(user.rng.expovariate(self.cfg.rate))
            roll = user.rng.random()
            if roll < 0.5:
                await self.send(user, "@" + user.rng.choice([n for n in names if n != user.name]))
            elif roll < 0.6:
                await self.send(user, "*")
            elif roll < 0.93:
                mine = [g for g in GROUPS if self.member_now(user.name, g)]
                if mine:
                    await self.send(user, "#" + user.rng.choice(mine))
            else:
                await self.membership_op(cluster, user)

    # -- nemesis --------------------------------------------------------------

    async def nemesis(self, cluster: Cluster) -> None:
        kinds = list(self.cfg.faults)
        self.rng.shuffle(kinds)  # every kind at least once first, then at random
        running: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        while time.monotonic() - started < self.cfg.duration:
            await asyncio.sleep(self.rng.uniform(0.3, 1.2))
            running = {t for t in running if not t.done()}
            if len(running) >= self.cfg.max_concurrent_faults:
                continue
            kind = kinds.pop() if kinds else self.rng.choice(self.cfg.faults)
            running.add(asyncio.create_task(self.fault(cluster, kind, random.Random(self.rng.random()))))
        await asyncio.gather(*running, return_exceptions=False)
        self.stop_faults.set()

    async def fault(self, cluster: Cluster, kind: str, rng: random.Random) -> None:
        free = [i for i in range(self.cfg.gateways) if i not in cluster.busy]
        if kind == "master_kill":
            await self._master_kill(cluster, rng)
            return
        if kind == "redis_restart":
            if "redis" in cluster.busy or cluster.paused:  # paused gateways would miss it anyway
                return
            cluster.busy.add("redis")
            try:
                self._log("redis_restart")
                await asyncio.to_thread(cluster.redis.stop)
                await asyncio.sleep(rng.uniform(0.2, 1.5))
                await asyncio.to_thread(cluster.redis.start)
            finally:
                cluster.busy.discard("redis")
            return
        if kind in ("drop_takeover", "drop_same"):
            user = self.users[rng.choice(sorted(self.users))]
            ws = user.client._ws
            if ws is None or ws.transport is None or user.client.state != "connected":
                return
            self._log(f"{kind} {user.name} (on {user.client.url})")
            if kind == "drop_same":
                user.client._url_index -= 1  # the reconnect steps one on: back to the same gateway
            ws.transport.abort()  # no close frame, no FIN handshake: the gateway finds out later
            return
        if kind == "group_churn":
            self._log("group_churn")
            movers = rng.sample(sorted(self.users), k=min(3, len(self.users)))
            await asyncio.gather(*(self.membership_op(cluster, self.users[u]) for u in movers))
            return
        if not free:
            return
        i = rng.choice(free)
        cluster.busy.add(i)
        try:
            await self._gateway_fault(cluster, kind, i, rng)
        finally:
            cluster.busy.discard(i)

    async def _master_kill(self, cluster: Cluster, rng: random.Random) -> None:
        """``kill -9`` a random master of the Redis Cluster, wait for its replica's promotion, restart it
        (it rejoins as the new master's replica).  One at a time, so every master has a replica."""
        if "redis" in cluster.busy or not isinstance(cluster.redis, RedisCluster):
            return
        cluster.busy.add("redis")
        try:
            nodes = cluster.redis
            master = rng.choice(sorted(await asyncio.to_thread(nodes.master_nodes), key=lambda n: n.port))
            self._log(f"master_kill {master.address}")
            failover = await asyncio.to_thread(nodes.kill_master, master)
            log.info("master_kill: %s promoted in %.1fs", failover.promoted.address, failover.seconds)
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            await asyncio.to_thread(nodes.restart, master)
        finally:
            cluster.busy.discard("redis")

    async def _gateway_fault(self, cluster: Cluster, kind: str, i: int, rng: random.Random) -> None:
        proxy = cluster.proxies[i] if cluster.proxies else None  # none on a Redis Cluster
        if kind == "kill9":
            new_node = rng.random() < 0.5
            self._log(f"kill9 gw{i} (restart {'with a new node id' if new_node else 'as the same node'})")
            cluster.kill(i)
            await asyncio.sleep(rng.uniform(0.1, 2.0))
            await cluster.start_gateway(i, new_node=new_node)
        elif kind in ("pause_short", "pause_long"):
            pause = rng.uniform(0.2, 0.6) * LEASE_TTL if kind == "pause_short" else rng.uniform(1.5, 3.0) * LEASE_TTL
            self._log(f"{kind} gw{i} for {pause:.1f}s")
            cluster.signal(i, signal.SIGSTOP)
            cluster.paused.add(i)
            try:
                await asyncio.sleep(pause)
            finally:
                cluster.signal(i, signal.SIGCONT)
                cluster.paused.discard(i)
        elif proxy is None:
            raise AssertionError(f"{kind} needs a proxy between the gateway and Redis")
        elif kind in ("partition_short", "partition_long"):
            span = rng.uniform(0.3, 0.8) * LEASE_TTL if kind == "partition_short" else rng.uniform(1.5, 3.0) * LEASE_TTL
            reset = rng.random() < 0.5
            self._log(f"{kind} gw{i} <-> redis for {span:.1f}s (then {'reset' if reset else 'resume'})")
            proxy.partition()
            try:
                await asyncio.sleep(span)
            finally:
                proxy.heal(reset)
        elif kind == "latency":
            proxy.latency = rng.uniform(0.02, 0.3)
            span = rng.uniform(1.0, 4.0)
            self._log(f"latency gw{i} <-> redis +{proxy.latency * 1000:.0f}ms for {span:.1f}s")
            try:
                await asyncio.sleep(span)
            finally:
                proxy.latency = 0.0

    def _log(self, what: str) -> None:
        kind = what.split(" ", 1)[0]
        self.history.faults[kind] += 1
        line = f"{time.strftime('%H:%M:%S')} fault: {what}"
        self.history.fault_log.append(line)
        log.info(line)

    # -- the run --------------------------------------------------------------

    async def _watch_loop(self) -> None:
        """The harness's own health: its proxies stall if this loop does."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.5)
            lag = loop.time() - before - 0.5
            if lag > 1.0:
                log.warning("harness event loop stalled for %.1fs", lag)
                self.stats["max_loop_stall"] = max(self.stats.get("max_loop_stall", 0.0), round(lag, 1))

    async def run(self, procs: Processes) -> dict[str, Any]:
        redis: RedisServer | RedisCluster
        if self.cfg.redis_cluster:
            redis = await asyncio.to_thread(
                RedisCluster(masters=3, directory=self.workdir / "redis", appendonly=True).start)
        else:
            redis = RedisServer(self.workdir / "redis")
            redis.start()
        cluster = Cluster(self.cfg, procs, redis)
        watch = asyncio.create_task(self._watch_loop())
        try:
            await cluster.start()
            await self._open_users(cluster)
            workers = [asyncio.create_task(self.work(cluster, u)) for u in self.users.values()]
            await self.nemesis(cluster)
            await cluster.heal()
            heal_at = time.monotonic()
            await asyncio.sleep(2)  # a little traffic on the healed cluster, then stop sending
            self.stop_work.set()
            done, stuck = await asyncio.wait(workers, timeout=90)
            if stuck:
                self.problems.append(f"{len(stuck)} workers still sending 90 s after the faults stopped: "
                                     + "; ".join(self._describe(u) for u in self.users.values()))
                for task in stuck:
                    task.cancel()
            for task in done:
                task.result()
            await self._converge(cluster, heal_at)
            self.stats["rebinds"] = cluster.rebinds
            self.check()
            self.stats["converged_in"] = round(time.monotonic() - heal_at, 1)
            return self.stats
        finally:
            watch.cancel()
            for user in self.users.values():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(user.client.close(), 5)
                if user.reader is not None:
                    user.reader.cancel()
            await asyncio.to_thread(procs.stop_all)  # in a thread: the proxies must keep serving meanwhile
            await cluster.close()
            await asyncio.to_thread(redis.stop)

    def _describe(self, user: User) -> str:
        c = user.client
        return (f"{user.name}: {c.state} on {c.url} ({c.node}), {len(c.core.pending)} pending "
                f"{list(c.core.pending)[:3]}, doing {user.doing}")

    async def _converge(self, cluster: Cluster, heal_at: float) -> None:
        deadline = heal_at + CONVERGE

        async def until(what: str, check: Any) -> bool:
            try:
                await async_wait_until(check, max(0.0, deadline - time.monotonic()), what, interval=0.2)
            except AssertionError:
                self.problems.append(f"not converged within {CONVERGE:.0f}s of healing: {what}")
                return False
            return True

        await until("all acked messages delivered", self._all_delivered)
        await until("every client connected", lambda: all(u.client.state == "connected" for u in self.users.values()))
        await until("every gateway ready", lambda: asyncio.to_thread(
            lambda: all(g is not None and _ready(g) for g in cluster.gateways)))
        await until("each name held by its client's gateway, once", lambda: self._names_consistent(cluster))
        await until("presence agrees in Redis and every client", lambda: self._presence_agrees(cluster))
        # Subscriptions: a probe from every user (spread over all gateways) reaches everyone.
        probes: list[Sent] = []
        for user in self.users.values():
            body = f"{user.name}:probe:*"
            sent = Sent(user.name, "*", body)
            self.history.sends[body] = sent
            probes.append(sent)
            try:
                sent.ack = (await user.client.send("*", body, ref=f"{self.cfg.seed}-{body}")).id
            except (ChatError, ClientError, TimeoutError) as exc:
                self.problems.append(f"probe from {user.name} failed after healing: {exc!r}")
        await until("probes delivered (subscriptions live)", self._all_delivered)

    async def _names_consistent(self, cluster: Cluster) -> bool:
        try:
            for user in self.users.values():
                holder = await cluster.admin.hget(keys.session(user.name), "gw")
                if holder is None or holder.decode() != user.client.node:
                    return False
            for i, gw in enumerate(cluster.gateways):
                assert gw is not None
                node = f"gw{i}-{cluster.generation[i]}"
                clients_here = sum(1 for u in self.users.values() if u.client.node == node)
                if await asyncio.to_thread(_metric, gw, "chinwag_connections") != clients_here:
                    return False
        except (OSError, redis_async.RedisError):
            return False
        return True

    async def _presence_agrees(self, cluster: Cluster) -> bool:
        everyone = set(self.users)
        try:
            online = {n.decode() for n in await cluster.admin.zrange(keys.ONLINE, 0, -1)}
        except (OSError, redis_async.RedisError):
            return False
        self.stats["presence_last_seen"] = {"redis": sorted(online), **{
            u.name: sorted(u.client.online) for u in self.users.values() if u.client.online != everyone}}
        return online == everyone and all(u.client.online == everyone for u in self.users.values())

    # -- checker ----------------------------------------------------------------

def _ready(proc: Proc) -> bool:
    try:
        return proc.ready_status() == 200
    except OSError:
        return False


def _metric(proc: Proc, name: str) -> float | None:
    try:
        text = proc.http_get("/metrics")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


async def run_once(cfg: Config, workdir: Path) -> tuple[dict[str, Any], list[str], Run]:
    """One seeded run in ``workdir``; (stats, problems, run)."""
    print(f"nemesis: seed {cfg.seed} (replay: CHINWAG_NEMESIS_SEED={cfg.seed}), {cfg.duration:.0f}s of faults",
          flush=True)
    procs = Processes(workdir)
    run = Run(cfg, workdir)
    try:
        stats = await run.run(procs)
    except BaseException:
        print("\n".join(run.history.fault_log))
        print(procs.dump_logs())
        raise
    if run.known:
        print("nemesis: the known limitation (docs/guarantees.md):\n  " + "\n  ".join(run.known))
    if run.problems:
        print("\n".join(run.history.fault_log))
        print(procs.dump_logs())
    print(f"nemesis: {stats}", flush=True)
    return stats, run.problems, run


def seed_from_env(default: int) -> int:
    value = os.environ.get("CHINWAG_NEMESIS_SEED", "")
    return int(value) if value else default


SOAK_TOTALS = (
    "faults", "sent", "acked", "unacked", "received", "deliveries_checked", "lost", "duplicated", "out_of_order",
    "leaked", "unknown", "wrong_id", "id_clash", "below_floor", "membership_ops", "reconnects", "rebinds",
    "first_login_retries",
)


async def soak(minutes: float, seed: int, round_minutes: float, workdir: Path, redis_cluster: bool = False) -> int:
    """Rounds of random faults until ``minutes`` have passed; non-zero exit on the first failure."""
    end = time.monotonic() + minutes * 60
    totals: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    seeds: list[int] = []
    rounds = 0
    while time.monotonic() < end:
        cfg = Config(seed=seed + rounds, duration=max(10.0, min(round_minutes * 60, end - time.monotonic())),
                     redis_cluster=redis_cluster)
        stats, problems, _ = await run_once(cfg, Path(tempfile.mkdtemp(prefix=f"seed{cfg.seed}-", dir=workdir)))
        rounds += 1
        seeds.append(cfg.seed)
        for key in SOAK_TOTALS:
            totals[key] += int(stats.get(key, 0))
        kinds.update(stats.get("fault_kinds", {}))
        if problems:
            print(f"soak: FAILED at seed {cfg.seed}:\n" + "\n".join(problems), flush=True)
            return 1
        print(f"soak: {rounds} rounds (seeds {seeds}), totals {dict(totals)}, faults by kind {dict(kinds)}",
              flush=True)
    print(f"soak: PASSED {rounds} rounds (seeds {seeds}) in {minutes} minutes: {dict(totals)}; "
          f"faults by kind {dict(kinds)}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.nemesis", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="seed (default: random, printed)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of faults in one run")
    parser.add_argument("--soak", type=float, default=None, metavar="MINUTES", help="run rounds for this long")
    parser.add_argument("--round-minutes", type=float, default=5.0, help="length of one soak round")
    parser.add_argument("--workdir", type=Path, default=None, help="where logs and Redis data go")
    parser.add_argument("--redis-cluster", action="store_true",
                        help="on a 3+3 Redis Cluster, with master kills (see above)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    logging.getLogger("chinwag.client").setLevel(logging.WARNING)
    seed = args.seed if args.seed is not None else seed_from_env(random.randrange(1, 10**6))
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="chinwag-nemesis-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"nemesis: logs and data in {workdir}", flush=True)
    if args.soak is not None:
        raise SystemExit(asyncio.run(soak(args.soak, seed, args.round_minutes, workdir, args.redis_cluster)))
    cfg = Config(seed=seed, duration=args.duration, redis_cluster=args.redis_cluster)
    _, problems, _ = asyncio.run(run_once(cfg, workdir))
    if problems:
        print("FAILED:\n" + "\n".join(problems))
        raise SystemExit(1)
    print("PASSED")


if __name__ == "__main__":
    main()
