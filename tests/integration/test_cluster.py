"""chinwag-cluster: the compose topology as processes, and what operators see of it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from chinwag.cluster import free_base_port
from protocol import frames as f
from tests.helpers import (
    FAST_ENV,
    ROOT,
    Clients,
    RedisServer,
    async_wait_until,
    wait_for_event,
    wait_for_presence,
    wait_until,
)

SHARED_REDIS_PORT = 6300 + 79  # the machine's own Redis, which no test may touch


class ClusterProc:
    """``python -m chinwag.cluster up`` with its stdout collected line by line."""

    def __init__(self, args: list[str], tmp: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHINWAG_") and k != "REDIS_URL"}
        env.update(FAST_ENV)
        env["PYTHONPATH"] = str(ROOT)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chinwag.cluster", "up", *args, "--data-dir", str(tmp / "cluster")],
            stdout=subprocess.PIPE, stderr=open(tmp / "cluster.err", "wb"), env=env, cwd=ROOT,
        )
        self.err_path = tmp / "cluster.err"
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            self.lines.append(raw.decode().rstrip())

    def wait_ready(self) -> None:
        wait_until(lambda: "cluster ready (Ctrl-C stops everything)" in self.lines or self.proc.poll() is not None,
                   60, "cluster ready")
        assert self.proc.poll() is None, "\n".join(self.lines) + self.err_path.read_text()

    def gateways(self) -> list[tuple[str, str]]:
        """(ws URL, metrics URL) per gateway, from what the launcher printed."""
        found = [re.search(r"gateway \d+\s+(ws://\S+)\s+(http://\S+)", line) for line in self.lines]
        return [(m.group(1), m.group(2)) for m in found if m]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(30)
        finally:
            self._reader.join(5)


@pytest.fixture(name="cluster_factory")
def started_clusters(tmp_path: Path) -> Iterator[list[ClusterProc]]:
    """The launchers a test starts (it appends them); any still running afterwards is stopped."""
    started: list[ClusterProc] = []
    yield started
    for c in started:
        if c.proc.poll() is None:
            c.stop()


def _get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), ""
    except OSError:
        return 0, ""


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_three_gateway_cluster_chats_reports_metrics_and_readiness(
    tmp_path: Path, redis_server: RedisServer, clients: Clients, cluster_factory: list[ClusterProc]
) -> None:
    base = free_base_port("127.0.0.1", 3)  # below the ephemeral range: nothing else is handed these ports
    cluster = ClusterProc(["--gateways", "3", "--base-port", str(base), "--redis-url", redis_server.url], tmp_path)
    cluster_factory.append(cluster)
    cluster.wait_ready()
    gws = cluster.gateways()
    assert len(gws) == 3 and len({u for u, _ in gws}) == 3
    (url1, m1), (url2, m2), (url3, m3) = gws

    alice = await clients.login(url1, "alice")
    bob = await clients.login(url2, "bob")
    carol = await clients.login(url3, "carol")
    assert set(await alice.who()) == {"alice", "bob", "carol"}
    before = _metric(_get(m3)[1], 'chinwag_messages_in_total{kind="dm"}')

    await carol.send("@alice", "from gateway 3")
    got = await wait_for_event(alice, lambda e: isinstance(e, f.Message))
    assert got.body == "from gateway 3"  # type: ignore[union-attr]
    await alice.send("*", "to everyone on every gateway")
    for who in (bob, carol):
        await wait_for_event(who, lambda e: isinstance(e, f.Message) and e.to == "*")
    await bob.close()
    assert await wait_for_presence(carol, status="offline") == [("bob", "offline")]

    status, text = _get(m3)
    assert status == 200 and "# TYPE chinwag_messages_in_total counter" in text
    assert _metric(text, 'chinwag_messages_in_total{kind="dm"}') == before + 1
    assert _metric(text, "chinwag_redis_publish_seconds_count") >= 1
    assert _metric(_get(m1)[1], 'chinwag_messages_out_total{kind="dm"}') >= 1
    assert _metric(_get(m1)[1], 'chinwag_logins_total{result="ok"}') == 1
    presence_line = next(line for line in cluster.lines if line.strip().startswith("presence"))
    presence_metrics = presence_line.split()[-1]
    assert "chinwag_presence_sweeps_total" in _get(presence_metrics)[1]

    ready = [m.replace("/metrics", "/readyz") for _, m in gws]
    assert all(_get(r)[0] == 200 for r in ready)
    redis_server.stop()
    await async_wait_until(lambda: _all(ready, 503), 15, "every gateway unready without Redis")
    assert all(_get(m.replace("/metrics", "/healthz"))[0] == 200 for _, m in gws)  # alive all the same
    redis_server.start()
    await async_wait_until(lambda: _all(ready, 200), 15, "every gateway ready again")
    assert _metric(_get(m2)[1], "chinwag_redis_reconnects_total") >= 1

    assert cluster.stop() == 0
    assert "cluster stopped" in cluster.lines
    assert all(_get(r)[0] == 0 for r in ready)  # every node is gone


async def _all(urls: list[str], status: int) -> bool:
    return all(_get(u)[0] == status for u in urls)


async def test_cluster_starts_its_own_redis_when_given_none(
    tmp_path: Path, clients: Clients, cluster_factory: list[ClusterProc]
) -> None:
    base = free_base_port("127.0.0.1", 2)  # below the ephemeral range: nothing else is handed these ports
    cluster = ClusterProc(["--gateways", "2", "--base-port", str(base)], tmp_path)
    cluster_factory.append(cluster)
    cluster.wait_ready()
    redis_line = next(line for line in cluster.lines if line.strip().startswith("redis"))
    assert "redis-server" in redis_line or "embedded" in redis_line
    started = re.search(r"redis://[^:/]+:(\d+)", redis_line)
    assert started is None or int(started.group(1)) != SHARED_REDIS_PORT  # a Redis of its own
    (url1, _), (url2, _) = cluster.gateways()
    alice = await clients.login(url1, "alice")
    bob = await clients.login(url2, "bob")
    await alice.send("@bob", "hello")
    assert (await wait_for_event(bob, lambda e: isinstance(e, f.Message))).body == "hello"  # type: ignore[union-attr]
    await clients.close_all()
    assert cluster.stop() == 0
