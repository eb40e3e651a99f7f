"""SIGTERM stops a loaded gateway within its drain timeout, every time.

A background loop that keeps running after ``cancel()`` (redis-py's
``wait_for`` can swallow one, see tests/integration/test_swallowed_cancel.py)
turns SIGTERM into a hang: ``cancel_and_wait`` gives up on it after a few
seconds and logs ``ignored cancellation``, and then ``asyncio.Runner``'s own
clean-up waits for it without a bound.  So: a real gateway process on a real
redis-server, clients sending group messages and DMs through it, every
background loop turning often (lease, group cursors, keepalive, pub/sub
PINGs), then SIGTERM, ``RUNS`` times.  Each must exit 0 within the drain
timeout plus a margin, having logged that it stopped and no abandoned task.
A swallowed cancel is a race, so a pass here is evidence over many stops,
not proof; test_swallowed_cancel.py reproduces it deterministically per loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

from redis.asyncio import Redis

from client.chat import ChatClient
from client.errors import ClientError
from common import keys
from protocol.errors import ChatError
from protocol.names import name_key
from tests.helpers import Clients, Processes, RedisServer, async_wait_until

RUNS = 8
USERS = 4
SHUTDOWN_TIMEOUT = 3.0  # the gateway's drain bound (CHINWAG_SHUTDOWN_TIMEOUT)
MARGIN = 6.0  # process exit, the bounded cancels after the drain, a loaded CI machine
ENV = {
    "CHINWAG_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
    "CHINWAG_LEASE_TTL": "0.6",  # the lease loop calls Redis every 0.2 s
    "CHINWAG_GROUP_CURSOR_INTERVAL": "0.05",  # the cursor flusher writes every 50 ms under load
    "CHINWAG_PING_INTERVAL": "0.2",
    "CHINWAG_REDIS_PING_INTERVAL": "0.1",
}


async def _send_until_cut(client: ChatClient, me: int, acks: list[int]) -> None:
    """Group messages and DMs as fast as they are acked, until the gateway goes away."""
    peer = f"@user{(me + 1) % USERS}"
    turn = 0
    while turn < 100_000:  # bounded; the gateway's SIGTERM ends it long before
        turn += 1
        try:
            await client.send("#load" if turn % 2 else peer, f"m{me}-{turn}")
        except (ClientError, ChatError):
            return
        acks[0] += 1


async def test_sigterm_under_load_exits_within_the_drain_timeout_every_time(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    took: list[float] = []
    redis = Redis(host="127.0.0.1", port=redis_server.port)
    cursors = keys.group_cursors(name_key("user1"))
    for run in range(RUNS):
        gateway = processes.gateway(redis_server.url, env=ENV)
        users = [await clients.login(gateway.url, f"user{i}") for i in range(USERS)]
        if run == 0:
            await users[0].group("create", "#load")
            for user in users[1:]:
                await user.group("join", "#load")
        saved = await redis.hgetall(cursors)
        acks = [0]
        senders = [asyncio.create_task(_send_until_cut(u, i, acks)) for i, u in enumerate(users)]

        async def busy(acks: list[int] = acks, saved: object = saved, want: int = 150 * (run + 1)) -> bool:
            """Load for a while (longer each run, so SIGTERM lands at other points of the loops' turns),
            and the cursor flusher has written under it."""
            return acks[0] >= want and await redis.hgetall(cursors) != saved

        await async_wait_until(busy, 30, "messages flowing and group positions saved")
        assert gateway.proc is not None
        started = time.monotonic()
        gateway.proc.send_signal(signal.SIGTERM)
        await async_wait_until(gateway.exited, SHUTDOWN_TIMEOUT + MARGIN, f"run {run}: the gateway to exit")
        took.append(time.monotonic() - started)
        assert gateway.proc.returncode == 0, gateway.log()[-3000:]
        done, _ = await asyncio.wait(senders, timeout=10)
        assert len(done) == len(senders), "a client kept sending to a stopped gateway"
        for user in users:
            with contextlib.suppress(ClientError, TimeoutError):
                await asyncio.wait_for(user.close(), 5)
        log = gateway.log()
        assert "stopped" in log and "ignored cancellation" not in log and "failed while stopping" not in log, log
    await redis.aclose()
    print(f"SIGTERM to exit under load, {RUNS} runs: " + ", ".join(f"{t:.2f}s" for t in took))
