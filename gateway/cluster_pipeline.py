"""The auto-pipeline on a Redis Cluster: one :class:`AutoPipeline` per master, one write per master per turn.

A command goes to the master owning its first key's slot (every Chinwag
script is single-slot, docs/cluster.md), looked up in redis-py's slot map
(``RedisCluster.nodes_manager``, the same map the gateway's other commands
use).  Each master has its own :class:`gateway.pipeline.AutoPipeline`: its
own socket, buffer and reply queue, so a loop turn's commands leave as one
write per master, answered in order per master, and everything else
(NOSCRIPT as EVAL, the stall watchdog, ``WAIT`` for ``replicas``) is
per master exactly as on one Redis.

Redirections, where the command did *not* run (Redis checks the slot before
running anything), so sending it again runs it once:

* ``-MOVED slot host:port``: the slot has a new owner (a migration, or a
  failover the map has not seen).  The map learns it (``move_slot``) and the
  command is resent to that node only;
* ``-ASK slot host:port``: the slot is being migrated and this key is already
  on the target: ``ASKING`` plus the command go to the target in one write;
* ``-TRYAGAIN`` (a multi-key command mid-migration) and ``-CLUSTERDOWN``:
  resent after a short pause, at most ``MAX_REDIRECTS`` times in all.

What cannot be redirected becomes a ``ConnectionError`` (``unavailable`` for
the caller), as does a connection lost to one master -- which fails only that
master's commands, like today's one connection; the slot map is then
refreshed in the background, so once a replica is promoted the next command
finds it.  A lost reply is never resent: the script may have run (the
senders' refs and the scripts' dedupe cover the client's retry).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import quote

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.redis import REDIS_ERRORS
from common.runtime import retrieve

from .pipeline import Arg, AutoPipeline, Script

log = logging.getLogger("chinwag.pipeline")

MAX_REDIRECTS = 5  # MOVED/ASK/TRYAGAIN/CLUSTERDOWN answers one command may get before it is unavailable


class ClusterUnavailable(RedisConnectionError):
    """The cluster could not run the command now (no owner for its slot, redirected too often)."""


def _encoded(key: Arg) -> bytes:
    if isinstance(key, bytes):
        return key
    return key.encode() if isinstance(key, str) else repr(key).encode()


class ClusterAutoPipeline:
    """``evalsha``/``call`` as :class:`AutoPipeline` has them, each sent to its slot's master."""

    def __init__(self, cluster: RedisCluster, *, timeout: float = 5.0, connect_timeout: float = 2.0,
                 wait_timeout: float = 1.0) -> None:
        self.cluster = cluster
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.wait_timeout = wait_timeout
        self._nodes: dict[str, AutoPipeline] = {}  # "host:port" -> that node's pipeline
        self._retired_batches = 0  # counts of pipelines closed since (a node that left the map)
        self._retired_commands = 0
        self._refresh: asyncio.Task[None] | None = None
        self._closed = False
        self.redirects = 0  # MOVED/ASK answers followed (metrics, tests)

    @property
    def batches(self) -> int:
        """Writes made, over every node (commands / batches is the batching factor)."""
        return self._retired_batches + sum(p.batches for p in self._nodes.values())

    @property
    def commands(self) -> int:
        return self._retired_commands + sum(p.commands for p in self._nodes.values())

    def node_batches(self) -> dict[str, int]:
        """Writes made per node, by ``host:port``."""
        return {name: p.batches for name, p in self._nodes.items()}

    def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg], replicas: int = 0) -> Awaitable[Any]:
        """Run a script on the master of ``keys[0]``'s slot (see :meth:`AutoPipeline.evalsha`)."""
        if not keys:
            raise ValueError("a script without keys has no slot to run in")
        return self._run(keys[0], lambda pipe, asking: pipe.evalsha(script, keys, args, replicas, body=asking))

    async def call(self, args: Sequence[Arg]) -> Any:
        """One command, routed by its first argument after the name (the key, for every keyed command)."""
        if len(args) < 2:
            raise ValueError("a command without a key has no slot to run in")
        return await self._run(args[1], lambda pipe, _asking: pipe.submit(args))

    async def aclose(self) -> None:
        self._closed = True
        if self._refresh is not None:
            self._refresh.cancel()
        for pipe in list(self._nodes.values()):
            await pipe.aclose()

    # -- routing ------------------------------------------------------------

    async def _run(self, key: Arg, send: Callable[[AutoPipeline, bool], Awaitable[Any]]) -> Any:
        """``send(pipe, asking)`` on the slot's master, following redirections (``asking``: right after
        ``ASKING``, so a script goes as EVAL: a NOSCRIPT's EVAL would come without ASKING, and be MOVED)."""
        slot = key_slot(_encoded(key))
        asking: str | None = None  # the node an -ASK named: ASKING, then the command, there
        for _ in range(MAX_REDIRECTS):
            if self._closed:
                raise RedisConnectionError("the gateway is closing")
            if asking is not None:
                pipe = self._pipe(asking)
                await pipe.connect()  # ASKING and the command in one write, nothing between them
                asyncio.ensure_future(pipe.submit([b"ASKING"])).add_done_callback(retrieve)
            else:
                pipe = await self._owner(slot)
            try:
                return await send(pipe, asking is not None)
            except MovedError as exc:
                asking = None
                self.redirects += 1
                try:
                    await self.cluster.nodes_manager.move_slot(exc)
                except Exception as why:  # a slot the map had no owner for: read the whole map instead
                    log.info("could not apply %s to the slot map (%s); refreshing it", exc, type(why).__name__)
                    await self._reinitialize()
            except AskError as exc:
                self.redirects += 1
                asking = f"{exc.host}:{exc.port}"
            except (TryAgainError, ClusterDownError) as exc:
                asking = None
                log.info("cluster answered %s; trying again", type(exc).__name__)
                self._refresh_map()
                await asyncio.sleep(0.05)
            except (RedisConnectionError, RedisTimeoutError):
                self._refresh_map()  # a failover? the next command should find the new master
                raise
        raise ClusterUnavailable(f"slot {slot}: redirected {MAX_REDIRECTS} times; the cluster is reconfiguring")

    async def _owner(self, slot: int) -> AutoPipeline:
        manager = self.cluster.nodes_manager
        if not manager.slots_cache:
            try:
                await self.cluster.initialize()
            except REDIS_ERRORS as exc:
                raise ClusterUnavailable(f"cannot read the cluster's slot map: {type(exc).__name__}") from None
        try:
            node: ClusterNode = manager.get_node_from_slot(slot)
        except (KeyError, IndexError, LookupError):
            self._refresh_map()
            raise ClusterUnavailable(f"no master owns slot {slot} now") from None
        except Exception as exc:  # SlotNotCoveredError is a RedisClusterException, not a RedisError
            self._refresh_map()
            raise ClusterUnavailable(f"no master owns slot {slot} now ({type(exc).__name__})") from None
        return self._pipe(node.name)

    def _pipe(self, name: str) -> AutoPipeline:
        pipe = self._nodes.get(name)
        if pipe is None:
            host, _, port = name.rpartition(":")
            kwargs = self.cluster.nodes_manager.connection_kwargs
            username, password = kwargs.get("username"), kwargs.get("password")
            auth = ""
            if password:
                auth = (quote(username, safe="") if username else "") + ":" + quote(password, safe="") + "@"
            pipe = AutoPipeline(f"redis://{auth}{host}:{port}/0", timeout=self.timeout,
                                connect_timeout=self.connect_timeout, wait_timeout=self.wait_timeout)
            self._nodes[name] = pipe
        return pipe

    def _refresh_map(self) -> None:
        """Re-read the slot map in the background, once at a time (callers do not wait for it)."""
        if self._closed or (self._refresh is not None and not self._refresh.done()):
            return
        self._refresh = asyncio.get_running_loop().create_task(self._reinitialize(), name="cluster-map-refresh")

    async def _reinitialize(self) -> None:
        try:
            await self.cluster.nodes_manager.initialize()
        except Exception as exc:  # a node down mid-failover: the next failure asks again
            log.info("could not refresh the cluster's slot map (%s: %s)", type(exc).__name__, exc)
            return
        known = {node.name for node in self.cluster.nodes_manager.nodes_cache.values()}
        for name in [n for n in self._nodes if n not in known]:  # a node that left the cluster
            pipe = self._nodes.pop(name)
            self._retired_batches += pipe.batches
            self._retired_commands += pipe.commands
            await pipe.aclose()
