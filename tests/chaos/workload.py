"""The chaos tests' workload and verdict: numbered DMs and broadcasts at a steady rate, then exactly-once.

Clients, each given every gateway URL (rotated, so they spread), send a fixed
random plan of DMs and broadcasts at ``rate`` messages per second in all;
``fault`` runs alongside (killing gateways, restarting Redis, killing a Redis
Cluster master).  Every send is awaited until acked (ChatClient retries
``unavailable`` with the same ``ref``, so the server stores it once).  The
verdict: every client received every message addressed to it exactly once, by
its acked id, in per-sender (and broadcast) order.  A delivery is known by
stream and id, not id alone: ids are unique per stream (per-owner clocks).  Shared by test_chaos.py
and test_cluster_failover.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from client import ChatClient
from protocol import frames as f
from protocol.errors import Unavailable
from protocol.names import id_tuple
from tests.helpers import async_wait_until


@dataclass(frozen=True)
class Workload:
    """How much is sent, how fast, and how long the whole run may take."""

    clients: int = 20
    dms: int = 10_000
    broadcasts: int = 200
    rate: float = 1500.0  # messages per second offered, all clients together
    deadline: float = 120.0  # seconds for sending (faults included), and again for the faults to finish

    @property
    def total(self) -> int:
        return self.dms + self.broadcasts


@dataclass
class Tally:
    sent: dict[str, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))  # to -> (from, id)
    broadcasts: list[str] = field(default_factory=list)
    received: dict[str, list[f.Message]] = field(default_factory=lambda: defaultdict(list))
    acked = 0


class CountingClient(ChatClient):
    """A ChatClient that counts the sends answered ``unavailable`` (``send`` retries them with the same ref)."""

    unavailable = 0

    async def _request(self, frame: Any, timeout: float | None = None) -> Any:
        try:
            return await super()._request(frame, timeout)
        except Unavailable:
            if isinstance(frame, f.Send):
                self.unavailable += 1
            raise


@dataclass
class Outcome:
    """What the clients got, measured against what was acked (``measure``); ``verdict`` wants it clean.

    ``lost``: acked deliveries a recipient never received.  ``duplicated``: one
    delivery (stream, id) received twice.  ``out_of_order``: (recipient, sender or
    broadcast) sequences not in id order.  ``unexpected``: deliveries of an id
    nobody was acked (a send whose first attempt was delivered live, then lost
    with its master, and stored again under a new id by the retry).
    ``repeated``: a message body received twice by one user (under two ids).
    """

    sent: int
    received: int
    lost: int
    duplicated: int
    out_of_order: int
    unexpected: int
    repeated: int
    reconnects: int
    dropped: int  # deliveries the clients themselves dropped as already seen
    unavailable: int  # sends answered `unavailable` (and retried with their ref)

    def summary(self) -> dict[str, int]:
        return dict(vars(self))


async def wait_acked(tally: Tally, n: int, timeout: float) -> None:
    """Until ``n`` sends have been acked (a fault's cue: "mid-run" is a count, not a time)."""
    await async_wait_until(lambda: tally.acked >= n, timeout, f"{n} acks")


async def run(urls: list[str], fault: Callable[[Tally], Awaitable[None]],
              load: Workload = Workload()) -> tuple[Tally, list[ChatClient]]:
    users = [f"u{i:02d}" for i in range(load.clients)]
    clients = []
    for i, user in enumerate(users):
        rotated = urls[i % len(urls):] + urls[: i % len(urls)]
        clients.append(await CountingClient.open(rotated, user, "pw", request_timeout=60, backoff_cap=1.0))
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
    for n in range(load.dms):
        i = rng.randrange(load.clients)
        j = rng.choice([k for k in range(load.clients) if k != i])
        plan[i].append((f"@{users[j]}", f"dm {n}"))
    for n in range(load.broadcasts):
        i = rng.randrange(load.clients)
        plan[i].insert(rng.randrange(len(plan[i]) + 1), ("*", f"bc {n}"))
    per_client_interval = load.clients / load.rate
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
    await asyncio.wait_for(asyncio.gather(*(sender(i) for i in range(load.clients))), load.deadline)
    await asyncio.wait_for(faults, load.deadline)
    sending_done.set()
    if not complete():
        with contextlib.suppress(TimeoutError):  # the verdict below reports whatever is missing
            await asyncio.wait_for(all_delivered.wait(), 30)
    stop.set()
    for client in clients:
        await client.close()
    await asyncio.gather(*readers, return_exceptions=True)
    return tally, clients


def _delivery(m: f.Message) -> tuple[str, str]:
    """What identifies a message a user received: its stream and id.  Ids are unique per stream only
    (docs/cluster.md: per-owner clocks), so a DM to u and a broadcast can share one."""
    return ("*" if m.to == "*" else "@", m.id)


def measure(tally: Tally, clients: list[ChatClient], load: Workload = Workload()) -> Outcome:
    """Count losses, duplicates, reorderings and the rest (printing the first few of each), asserting nothing
    but that every planned send was acked."""
    sent = sum(len(v) for v in tally.sent.values()) + len(tally.broadcasts) * load.clients
    received = lost = duplicated = out_of_order = unexpected = repeated = 0
    for client in clients:
        user = client.user or ""
        got = tally.received[user]
        expected = {("@", mid) for _, mid in tally.sent[user]} | {("*", mid) for mid in tally.broadcasts}
        received += len(got)
        seen: set[tuple[str, str]] = set()
        bodies: set[tuple[str, str, str]] = set()  # (to, from, body): the workload's bodies are unique
        for m in got:
            if _delivery(m) not in expected:
                unexpected += 1
                if unexpected <= 5:
                    print(f"unexpected: {m.id} ({m.to} from {m.from_}: {m.body!r}) to {user}")
            if (m.to, m.from_, m.body) in bodies and _delivery(m) not in seen:
                repeated += 1
                if repeated <= 5:
                    print(f"repeated: {m.body!r} from {m.from_} to {user}, again as {m.id}")
            bodies.add((m.to, m.from_, m.body))
            if _delivery(m) in seen:
                duplicated += 1
                if duplicated <= 5:
                    print(f"duplicate: {m.id} ({m.to} from {m.from_}) to {user}")
            seen.add(_delivery(m))
        missing = expected - seen
        lost += len(missing)
        for stream, mid in sorted(missing, key=lambda d: id_tuple(d[1]))[:5]:
            print(f"lost: {stream} {mid} to {user} (ms {id_tuple(mid)[0] % 100000})")
        by_sender: dict[str, list[str]] = defaultdict(list)
        for m in got:
            if _delivery(m) in expected:  # the order of the acked ids; the unexpected are counted above
                by_sender["*" if m.to == "*" else m.from_].append(m.id)
        for frm, seq in by_sender.items():
            wanted = [mid for s, mid in tally.sent[user] if s == frm] if frm != "*" else tally.broadcasts
            had = set(seq)
            if seq != [mid for mid in sorted(wanted, key=id_tuple) if mid in had]:
                out_of_order += 1
    outcome = Outcome(sent, received, lost, duplicated, out_of_order, unexpected, repeated,
                      reconnects=sum(c.reconnects for c in clients), dropped=sum(c.duplicates for c in clients),
                      unavailable=sum(getattr(c, "unavailable", 0) for c in clients))
    print(
        f"\nchaos: sent={sent} (dms={sum(len(v) for v in tally.sent.values())}, broadcasts={len(tally.broadcasts)}"
        f"x{load.clients}) received={received} lost={lost} duplicated={duplicated} out_of_order={out_of_order} "
        f"unexpected={unexpected} repeated={repeated} reconnects={outcome.reconnects} "
        f"duplicates_dropped_by_clients={outcome.dropped} sends_unavailable={outcome.unavailable}"
    )
    assert len(tally.broadcasts) == load.broadcasts and sum(len(v) for v in tally.sent.values()) == load.dms
    return outcome


def verdict(tally: Tally, clients: list[ChatClient], load: Workload = Workload()) -> Outcome:
    """Exactly once, in order: every acked message reached each of its recipients once, and nothing else came."""
    outcome = measure(tally, clients, load)
    exactly_once(outcome)
    return outcome


def exactly_once(outcome: Outcome) -> None:
    assert (outcome.lost, outcome.duplicated, outcome.out_of_order) == (0, 0, 0)
    assert outcome.received == outcome.sent
