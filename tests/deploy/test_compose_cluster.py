"""The real docker-compose.yml, run under Podman (tests/deploy/harness.py says how and what differs).

One cluster is shared by this module's tests, in file order: chat through
HAProxy, healthchecks, metrics, a gateway crash, a Redis restart, a rolling
restart and an upgrade under load, scaling to five, a Redis backup and
restore, and last `down` + `up`.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from client import ChatClient
from protocol import frames as f
from protocol.errors import ChatError, Unavailable
from tests.deploy.chat import chat_across_three_gateways, open_client
from tests.deploy.harness import ROOT, Cluster, run
from tests.deploy.load import ChatLoad
from tests.helpers import wait_until
from tests.web.steps import dm_round_trip, log_in

# Generous: the first test also waits for the session's image builds (cold: minutes).
pytestmark = pytest.mark.timeout(1200)


def test_every_container_passes_its_healthcheck(cluster: Cluster) -> None:
    # up() already waited for this; here it is stated, with what the image promises.
    for service in ("redis", "presence", "gateway", "lb"):
        for container in cluster.containers(service):
            assert cluster.healthy(container), container
    assert len(cluster.containers("gateway")) == 3  # deploy.replicas
    gateway = cluster.inspect(cluster.containers("gateway")[0])
    assert gateway["Config"]["User"] == "10001:10001"
    assert gateway["Config"]["Healthcheck"]["Test"][0] == "CMD"  # the compose file's, over the image's


def test_the_gateway_image_holds_this_tree(cluster: Cluster) -> None:
    # A builder that reuses a stale layer would test yesterday's code (Buildah did, with the
    # wheels bind-mounted from the builder stage; the Dockerfile says how that was fixed).
    files = [ROOT / p for p in ("gateway/server.py", "gateway/web/app.js", "protocol/frames.py", "client/chat.py")]
    script = ("import hashlib, importlib.util, pathlib, sys\n"
              "site = pathlib.Path(importlib.util.find_spec('gateway').origin).parent.parent\n"
              "for rel in sys.argv[1:]: print(hashlib.sha256((site / rel).read_bytes()).hexdigest())\n")
    gateway = cluster.containers("gateway")[0]
    out = cluster.podman("exec", gateway, "python", "-c", script,
                         *[str(p.relative_to(ROOT)) for p in files]).stdout.split()
    assert out == [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]


def test_containers_resolve_names_only_inside_the_project_network(cluster: Cluster) -> None:
    # Podman lists the host's nameservers after aardvark-dns unless told
    # otherwise, and HAProxy queries every listed server: DNS would leave the
    # test's network (harness.Cluster.create_network).
    assert cluster.foreign_nameservers() == {}


async def test_clients_through_haproxy_chat_across_gateways(cluster: Cluster) -> None:
    await chat_across_three_gateways(cluster, "chat", "hello across gateways")


async def test_the_web_client_through_haproxy_chats_with_a_python_client(cluster: Cluster, pages: Any) -> None:
    # GET / through the load balancer serves the page; its WebSocket goes back through HAProxy
    # (same origin) to whichever gateway leastconn picks.
    home = cluster.url.replace("ws://", "http://", 1) + "/"
    status, content_type, body = await asyncio.to_thread(_get, home)
    assert status == 200 and content_type.startswith("text/html") and b'id="login-user"' in body
    page = await pages(home)
    await log_in(page, "webdeploy", "web-pw")
    python = await open_client(cluster, "pydeploy")
    try:
        await dm_round_trip(page, "webdeploy", python, "from python through haproxy",
                            "from the browser through haproxy")
        assert page.errors == []
    finally:
        await python.close()


async def test_metrics_scraped_from_every_gateway_and_presence(cluster: Cluster) -> None:
    client = await open_client(cluster, "metrics0")
    try:
        # As Prometheus on the compose network would: each gateway's HTTP port, by address.
        gateways = cluster.containers("gateway")
        scraped = {c: cluster.metrics(c).splitlines() for c in gateways}
        for container, lines in scraped.items():
            assert "chinwag_ready 1" in lines, (container, lines[:20])
        with_client = [c for c, lines in scraped.items() if "chinwag_connections 1" in lines]
        assert len(with_client) == 1  # the one gateway HAProxy gave our client
        assert "chinwag_presence_redis_up 1" in cluster.metrics(cluster.containers("presence")[0]).splitlines()
        # deploy/metrics.sh, the operator's quick look: every gateway and presence, by name.
        out = run(["sh", str(ROOT / "deploy" / "metrics.sh")], env=cluster.script_env(), cwd=ROOT, timeout=120).stdout
        for container in [*gateways, *cluster.containers("presence")]:
            assert f"{container} chinwag_" in out
        assert f"{with_client[0]} chinwag_connections 1" in out.splitlines()
    finally:
        await client.close()


async def test_gateway_crash_is_restarted_and_loses_nothing(cluster: Cluster) -> None:
    load = ChatLoad(cluster.url, prefix="crash")
    async with load.running():
        await load.wait_acked(100)
        victim = cluster.containers("gateway")[0]
        restarts, old_pid = cluster.restart_count(victim), cluster.kill_process(victim)
        # restart: unless-stopped brings the same container back with a new process
        await asyncio.to_thread(wait_until, lambda: cluster.restart_count(victim) > restarts
                                and cluster.running(victim)
                                and int(cluster.inspect(victim)["State"]["Pid"]) != old_pid, 120, "restart")
        await asyncio.to_thread(wait_until, cluster.lb_sees_all_gateways, 120, "HAProxy sees it again", 0.5)
        await load.wait_acked(load.acked + 100)
        verdict = await load.stop()
    print(f"\ngateway crash: {verdict}")
    verdict.check()
    assert verdict.reconnects >= 1  # the crash really cut connected clients


async def test_redis_restart_loses_no_acknowledged_message(cluster: Cluster) -> None:
    load = ChatLoad(cluster.url, prefix="redis")
    async with load.running():
        await load.wait_acked(100)
        early = len(load.sent[load.users[1]])  # DMs to users[1] acknowledged before the restart
        redis = cluster.containers("redis")[0]
        started = cluster.inspect(redis)["State"]["StartedAt"]
        # `docker compose restart redis`: SIGTERM, Redis writes its AOF and exits; the volume keeps it.
        await asyncio.to_thread(cluster.podman, "restart", "-t", "30", redis, timeout=120)
        assert cluster.inspect(redis)["State"]["StartedAt"] != started  # really a new redis-server
        await load.wait_acked(load.acked + 100)
        verdict = await load.stop()
    print(f"\nredis restart: {verdict}")
    verdict.check()
    # What was acknowledged before the restart is still in Redis after it (the AOF
    # volume): the history of one conversation holds every message sent in it.
    first, second = load.users[0], load.users[1]
    client = await open_client(cluster, first, "pw-" + first)
    try:
        history = {m.id for m in await client.history(f"@{second}", limit=100)}
    finally:
        await client.close()
    before_restart = {mid for frm, mid in load.sent[second][:early] if frm == first}
    assert before_restart and before_restart <= history


def _rolling_restart(cluster: Cluster, mode: str) -> str:
    script = str(ROOT / "deploy" / "rolling-restart.sh")
    return run(["sh", script, mode], env=cluster.script_env(), cwd=ROOT, timeout=900).stdout


@pytest.mark.parametrize("mode", ["restart", "replace"])
async def test_rolling_restart_under_load_loses_and_duplicates_nothing(cluster: Cluster, mode: str) -> None:
    before = {c: cluster.inspect(c)["Id"] for c in cluster.containers("gateway")}
    load = ChatLoad(cluster.url, clients=8, rate=60, prefix=f"roll{mode[:3]}")
    async with load.running():
        await load.wait_acked(100)
        output = await asyncio.to_thread(_rolling_restart, cluster, mode)
        await load.wait_acked(load.acked + 100)
        verdict = await load.stop()
    print(f"\nrolling {mode}: {verdict}\n{output}")
    verdict.check()
    assert verdict.reconnects >= len(before)  # every gateway really went away under the clients
    after = {c: cluster.inspect(c)["Id"] for c in cluster.containers("gateway")}
    assert len(after) == len(before)
    if mode == "replace":
        assert not set(after.values()) & set(before.values())  # every container is new (new image)


async def test_scale_to_five_and_haproxy_spreads_new_connections(cluster: Cluster) -> None:
    await asyncio.to_thread(cluster.up, "--scale", "gateway=5")  # waits until HAProxy has all five UP
    assert len(cluster.containers("gateway")) == 5
    # Sessions of earlier tests that are still closing would skew leastconn's counts.
    await asyncio.to_thread(wait_until, cluster.lb_idle, 60, "HAProxy: no session open", 0.5)
    clients: list[ChatClient] = []
    try:
        # leastconn: each new client goes to a gateway holding the fewest, so clients held open
        # reach all five gateways, the two new ones included, within a few rounds.  More than the
        # ten of a perfect spread are allowed: a handshake that fails (and is retried) or a check
        # in flight can make one round uneven, but a gateway HAProxy never uses fails this.
        while len({c.node for c in clients}) < 5 and len(clients) < 20:
            clients.append(await open_client(cluster, f"scale{len(clients)}"))
        nodes = [c.node for c in clients]
        assert len(set(nodes)) == 5, (nodes, [(r["addr"], r["status"], r["scur"], r["stot"])
                                              for r in await asyncio.to_thread(cluster.lb_table)])
    finally:
        for client in clients:
            await client.close()


async def test_redis_backup_and_restore(cluster: Cluster, tmp_path: Path) -> None:
    alice = await open_client(cluster, "backup0")
    try:
        kept = await alice.send("@backup0", "in the backup")
    finally:
        await alice.close()
    backup = tmp_path / "redis-backup.tar"
    await asyncio.to_thread(_backup_script, cluster, "backup", backup)
    assert backup.stat().st_size > 0
    later = await open_client(cluster, "backup1")  # an account that is not in the backup
    await later.close()
    await asyncio.to_thread(_backup_script, cluster, "restore", backup)
    await asyncio.to_thread(cluster.wait_healthy)
    alice = await open_client(cluster, "backup0")
    try:
        assert kept.id in {m.id for m in await _history(cluster, alice, "@backup0")}
    finally:
        await alice.close()
    # backup1 registered after the backup, so the restored Redis has never heard of
    # it: another password registers the name afresh instead of being refused.
    again = await open_client(cluster, "backup1", "another-password")
    await again.close()
    with pytest.raises(ChatError):  # while backup0's account came back with its password
        bad = await open_client(cluster, "backup0", "not-the-password")
        await bad.close()


def _get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.headers["Content-Type"], response.read()


async def _history(cluster: Cluster, client: ChatClient, conv: str, within: float = 60) -> list[f.Message]:
    """History as a user asks for it right after a restore: ``unavailable`` means "retry shortly"
    (protocol.md), so it is retried until ``within`` runs out; the gateways' logs explain a failure."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await client.history(conv)
        except Unavailable:
            if time.monotonic() > deadline:
                print(cluster.logs()[-20000:])
                raise
            await asyncio.sleep(0.5)  # pacing between bounded attempts, not synchronisation


def _backup_script(cluster: Cluster, action: str, path: Path) -> None:
    env = cluster.script_env()
    script = str(ROOT / "deploy" / "redis-backup.sh")
    with open(path, "wb" if action == "backup" else "rb") as stream:
        kwargs = {"stdout": stream} if action == "backup" else {"stdin": stream, "stdout": subprocess.PIPE}
        proc = subprocess.run(["sh", script, action], env=env, cwd=ROOT, timeout=600,
                              stderr=subprocess.PIPE, check=False, **kwargs)  # type: ignore[call-overload]
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]


async def test_down_then_up_keeps_accounts_and_history(cluster: Cluster) -> None:
    alice = await open_client(cluster, "keep0", "alice-pw")
    bob = await open_client(cluster, "keep1", "bob-pw")
    try:
        ack = await alice.send("@keep1", "still here after down/up")
    finally:
        await alice.close()
        await bob.close()
    await asyncio.to_thread(cluster.down)  # no -v: the named volumes stay
    assert not cluster.containers("gateway")
    await asyncio.to_thread(cluster.up)
    bob = await open_client(cluster, "keep1", "bob-pw")
    try:
        assert ack.id in {m.id for m in await bob.history("@keep0")}
    finally:
        await bob.close()
    with pytest.raises(ChatError):  # the account, with its password, survived
        wrong = await open_client(cluster, "keep0", "not-alice-pw")
        await wrong.close()
