"""Chaos: nothing lost, nothing doubled, across gateway crashes and a Redis restart.

20 clients on 3 gateways send 10,000 DMs and 200 broadcasts at a steady rate.
Mid-run the harness kills gateways with SIGKILL (and starts a replacement), or
restarts Redis (AOF on).  At the end every client must have received every
message addressed to it exactly once, by id, in per-conversation order.  The
counts are printed either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from client import ChatClient
from protocol import frames as f
from protocol.names import id_tuple
from tests.helpers import Proc, Processes, RedisServer, async_wait_until, free_port

CLIENTS = 20
DMS = 10_000
BROADCASTS = 200
RATE = 1500.0  # messages per second offered, all clients together
DEADLINE = 120.0  # seconds for the whole run, faults and delivery included


@dataclass
class Tally:
    sent: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))  # to -> (from, id)
    broadcasts: list[str] = field(default_factory=list)
    received: dict[str, list[f.Message]] = field(default_factory=lambda: defaultdict(list))
    acked = 0


async def _run(urls: list[str], fault: Callable[[Tally], Awaitable[None]]) -> tuple[Tally, list[ChatClient]]:
    users = [f"u{i:02d}" for i in range(CLIENTS)]
    clients = []
    for i, user in enumerate(users):
        rotated = urls[i % len(urls):] + urls[: i % len(urls)]
        clients.append(await ChatClient.open(rotated, user, "pw", request_timeout=60, backoff_cap=1.0))
    tally = Tally()
    stop = asyncio.Event()
    sending_done = asyncio.Event()
    all_delivered = asyncio.Event()

    def complete() -> bool:
        return all(len(tally.received[u]) >= len(tally.sent[u]) + len(tally.broadcasts) for u in users)

    async def receive(client: ChatClient) -> None:
        async for event in client.events():
            if isinstance(event, f.Message):
                tally.received[client.user or ""].append(event)
                if sending_done.is_set() and complete():
                    all_delivered.set()
            if stop.is_set():
                return

    readers = [asyncio.create_task(receive(c)) for c in clients]
    rng = random.Random(4)
    plan: list[list[tuple[str, str]]] = [[] for _ in clients]  # per client: (to, body)
    for n in range(DMS):
        i = rng.randrange(CLIENTS)
        j = rng.choice([k for k in range(CLIENTS) if k != i])
        plan[i].append((f"@{users[j]}", f"dm {n}"))
    for n in range(BROADCASTS):
        i = rng.randrange(CLIENTS)
        plan[i].insert(rng.randrange(len(plan[i]) + 1), ("*", f"bc {n}"))
    per_client_interval = CLIENTS / RATE
    start = time.monotonic()

    async def sender(index: int) -> None:
        client = clients[index]
        for k, (to, body) in enumerate(plan[index]):
            due = start + k * per_client_interval  # steady offered rate (pacing, not synchronisation)
            if (delay := due - time.monotonic()) > 0:
                await asyncio.sleep(delay)  # the offered rate: pacing, not synchronisation
            ack = await client.send(to, body)
            tally.acked += 1
            if to == "*":
                tally.broadcasts.append(ack.id)
            else:
                tally.sent[to[1:]].append((users[index], ack.id))

    faults = asyncio.create_task(fault(tally))
    await asyncio.wait_for(asyncio.gather(*(sender(i) for i in range(CLIENTS))), DEADLINE)
    await asyncio.wait_for(faults, DEADLINE)
    sending_done.set()
    if not complete():
        with contextlib.suppress(TimeoutError):  # the verdict below reports whatever is missing
            await asyncio.wait_for(all_delivered.wait(), 30)
    stop.set()
    for client in clients:
        await client.close()
    await asyncio.gather(*readers, return_exceptions=True)
    return tally, clients


def _verdict(tally: Tally, clients: list[ChatClient]) -> None:
    sent = sum(len(v) for v in tally.sent.values()) + len(tally.broadcasts) * CLIENTS
    received = lost = duplicated = out_of_order = 0
    for client in clients:
        user = client.user or ""
        got = tally.received[user]
        # Ids are per stream (protocol §7.1): a DM (the user's inbox clock) and a broadcast (the broadcast
        # clock) can share an id, so a message is named by (stream, id), never by its id alone.
        ids = [("*" if m.to == "*" else "dm", m.id) for m in got]
        expected = {("dm", mid) for _, mid in tally.sent[user]} | {("*", mid) for mid in tally.broadcasts}
        received += len(ids)
        duplicated += len(ids) - len(set(ids))
        missing = expected - set(ids)
        lost += len(missing)
        for stream, mid in sorted(missing, key=lambda sm: (sm[0], id_tuple(sm[1])))[:5]:
            print(f"lost: {stream} {mid} to {user} (ms {id_tuple(mid)[0] % 100000})")
        by_sender: dict[str, list[str]] = defaultdict(list)
        for m in got:
            by_sender["*" if m.to == "*" else m.from_].append(m.id)
        for frm, seq in by_sender.items():
            wanted = [mid for s, mid in tally.sent[user] if s == frm] if frm != "*" else tally.broadcasts
            if seq != [mid for mid in sorted(wanted, key=id_tuple) if mid in set(seq)]:
                out_of_order += 1
    reconnects = sum(c.reconnects for c in clients)
    dropped = sum(c.duplicates for c in clients)
    print(
        f"\nchaos: sent={sent} (dms={sum(len(v) for v in tally.sent.values())}, broadcasts={len(tally.broadcasts)}"
        f"x{CLIENTS}) received={received} lost={lost} duplicated={duplicated} out_of_order={out_of_order} "
        f"reconnects={reconnects} duplicates_dropped_by_clients={dropped}"
    )
    assert len(tally.broadcasts) == BROADCASTS and sum(len(v) for v in tally.sent.values()) == DMS
    assert (lost, duplicated, out_of_order) == (0, 0, 0)
    assert received == sent


async def _wait_acked(tally: Tally, n: int) -> None:
    await async_wait_until(lambda: tally.acked >= n, DEADLINE, f"{n} acks")


@pytest.mark.timeout(240)
async def test_gateways_killed_mid_run_lose_and_duplicate_nothing(
    redis_server: RedisServer, processes: Processes
) -> None:
    processes.presence(redis_server.url)
    gateways = [processes.gateway(redis_server.url) for _ in range(3)]
    replacement_port = free_port()
    urls = [g.url for g in gateways] + [f"ws://127.0.0.1:{replacement_port}"]
    replacement: list[Proc] = []

    async def fault(tally: Tally) -> None:
        total = DMS + BROADCASTS
        await _wait_acked(tally, total // 4)
        gateways[0].kill()
        replacement.append(await asyncio.to_thread(processes.gateway, redis_server.url, port=replacement_port))
        await _wait_acked(tally, total * 6 // 10)
        gateways[1].kill()

    tally, clients = await _run(urls, fault)
    _verdict(tally, clients)
    assert sum(c.reconnects for c in clients) >= 2  # the kills really hit connected clients


@pytest.mark.timeout(240)
async def test_redis_restart_mid_run_loses_and_duplicates_nothing(
    redis_server: RedisServer, processes: Processes
) -> None:
    processes.presence(redis_server.url)
    gateways = [processes.gateway(redis_server.url) for _ in range(3)]

    async def fault(tally: Tally) -> None:
        await _wait_acked(tally, (DMS + BROADCASTS) * 4 // 10)
        await asyncio.to_thread(redis_server.stop)  # SIGTERM: Redis flushes its AOF and exits
        await asyncio.to_thread(redis_server.start)

    tally, clients = await _run([g.url for g in gateways], fault)
    _verdict(tally, clients)
    assert all("reconnected to Redis pub/sub" in g.log() for g in gateways)
