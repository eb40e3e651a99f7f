"""The processes ``benchmarks.compare`` runs: one redis-server, a Chinwag cluster and two
python-socketio servers on it, and the /proc readings of their CPU.  Apart from the load
(benchmarks/compare_load.py) and the report (benchmarks/compare.py): one concern per file.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chinwag.cluster import Cluster

ROOT = Path(__file__).resolve().parent.parent
DELIVERY_TIMEOUT = 10.0
CHINWAG_ENV = {
    "CHINWAG_RATE_MESSAGES": "0",
    "CHINWAG_IP_CONNECTIONS": "0",
    "CHINWAG_IP_LOGINS": "0",
    "CHINWAG_ARGON2_MEMORY_KIB": "1024",
    "CHINWAG_LOG_LEVEL": "WARNING",
}


# -- processes ----------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free_base(offsets: tuple[int, ...]) -> int:
    for _ in range(200):
        base = random.randrange(20000, 50000)
        if all(_port_free(base + o) for o in offsets):
            return base
    raise RuntimeError("no free port range found")


class BenchCluster(Cluster):
    """chinwag.cluster.Cluster with the benchmark's limits passed to every node."""

    def _env(self) -> dict[str, str]:
        env = super()._env()
        env.update(CHINWAG_ENV)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        return env


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def machine_busy() -> float:
    """CPU seconds all cores have spent busy since boot (Linux /proc/stat), 0 where unavailable."""
    try:
        cpu = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(cpu[:8]) - cpu[3] - cpu[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait
    except (OSError, ValueError, IndexError):
        return 0.0


def _wait_until(check: Callable[[], bool], timeout: float, what: str,
                procs: list[subprocess.Popen[bytes]] = ()) -> None:  # type: ignore[assignment]
    deadline = time.monotonic() + timeout
    while not check():
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what} exited with {p.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(0.05)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


def _redis_pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class Stack:
    """Redis, the Chinwag cluster and the socketio servers; stop() ends every one of them."""

    tmp: Path
    redis: subprocess.Popen[bytes] | None = None
    redis_url: str = ""
    cluster: BenchCluster | None = None
    sio: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sio_urls: list[str] = field(default_factory=list)

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        port = _free_port()
        self.redis = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.tmp), "--logfile", str(self.tmp / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait_until(lambda: _redis_pong(port), 10, "redis-server", [self.redis])
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self.cluster = BenchCluster(gateways=2, base_port=_free_base((0, 1, 100, 101)), redis_url=self.redis_url,
                                    data_dir=self.tmp / "chinwag", log_level="WARNING")
        self.cluster.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        for _ in range(2):  # spawned before the cluster's wait, so both start in parallel
            sport = _free_port()
            self.sio.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.socketio_chat.server", "--port", str(sport),
                 "--redis-url", self.redis_url], env=env, cwd=ROOT))
            self.sio_urls.append(f"http://127.0.0.1:{sport}")
        self.cluster.up()
        for url in self.sio_urls:
            _wait_until(lambda u=url: _http_ok(f"{u}/healthz"), 20, f"socketio server {url}", self.sio)

    def pids(self, system: str) -> list[int]:
        if system == "chinwag":
            return [p.pid for _, p in self.cluster.procs] if self.cluster else []
        return [p.pid for p in self.sio]

    def stop(self) -> None:
        for p in self.sio:
            if p.poll() is None:
                p.terminate()
        if self.cluster is not None:
            self.cluster.down(timeout=10)  # gateways, presence (redis_url is external: not stopped there)
        for p in self.sio:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            try:
                self.redis.wait(10)
            except subprocess.TimeoutExpired:
                self.redis.kill()
                self.redis.wait(5)
