"""A steady chat load through the load balancer, and the "nothing lost, nothing doubled" verdict.

The same checker style as tests/chaos/test_chaos.py: every acknowledged DM
must reach its recipient exactly once, in per-sender order, whatever happened
to the containers meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from client import ChatClient
from protocol import frames as f
from tests.helpers import async_wait_until

_runs = itertools.count(1)


@dataclass
class Verdict:
    sent: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    reconnects: int = 0
    lost_examples: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"sent={self.sent} received={self.received} lost={self.lost} duplicated={self.duplicated} "
                f"out_of_order={self.out_of_order} reconnects={self.reconnects} {self.lost_examples[:5]}")

    def check(self) -> None:
        """Every acknowledged DM arrived exactly once, in per-sender order (the guarantee under test)."""
        assert (self.lost, self.duplicated, self.out_of_order) == (0, 0, 0), self
        assert self.received == self.sent, self


class ChatLoad:
    """``clients`` users sending DMs round-robin at ``rate`` messages/s in total, until stopped."""

    def __init__(self, urls: str | list[str], clients: int = 6, rate: float = 40.0, prefix: str = "load",
                 ca_file: str | None = None) -> None:
        self.urls = urls
        self.users = [f"{prefix}{next(_runs)}u{i}" for i in range(clients)]
        self.rate = rate
        self.ca_file = ca_file
        self.clients: list[ChatClient] = []
        self.sent: dict[str, list[tuple[str, str]]] = defaultdict(list)  # to -> [(from, id)]
        self.received: dict[str, list[f.Message]] = defaultdict(list)
        self.acked = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._readers: list[asyncio.Task[None]] = []

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ChatLoad]:
        """The load, started, for the block to disturb the cluster under it and end with :meth:`stop`;
        if anything in it (or the start) fails, every task and client is cleaned up instead."""
        try:
            await self.start()
            yield self
        except BaseException:
            await self.abort()
            raise

    async def start(self) -> None:
        for user in self.users:
            self.clients.append(await ChatClient.open(
                self.urls, user, "pw-" + user, request_timeout=90, backoff_cap=1.0, ca_file=self.ca_file))
        self._readers = [asyncio.create_task(self._receive(c)) for c in self.clients]
        start = time.monotonic()
        interval = len(self.clients) / self.rate
        self._tasks = [asyncio.create_task(self._send(i, start, interval)) for i in range(len(self.clients))]

    async def _receive(self, client: ChatClient) -> None:
        async for event in client.events():
            if isinstance(event, f.Message):
                self.received[client.user or ""].append(event)

    async def _send(self, index: int, start: float, interval: float) -> None:
        client = self.clients[index]
        for k in itertools.count():
            if self._stop.is_set():
                return
            due = start + k * interval  # steady offered rate (pacing, not synchronisation)
            if (delay := due - time.monotonic()) > 0:
                await asyncio.sleep(delay)  # the offered rate: pacing, not synchronisation
            to = self.users[(index + 1 + k % (len(self.users) - 1)) % len(self.users)]
            ack = await client.send(f"@{to}", f"{client.user} {k}")
            self.sent[to].append((client.user or "", ack.id))
            self.acked += 1

    async def wait_acked(self, n: int, timeout: float = 120.0) -> None:
        await async_wait_until(lambda: self.acked >= n or any(t.done() for t in self._tasks), timeout,
                               f"{n} acknowledged sends")
        for task in self._tasks:
            if task.done():
                task.result()  # a sender that failed: its error, not a timeout

    def _complete(self) -> bool:
        return all(len(self.received[u]) >= len(self.sent[u]) for u in self.users)

    async def stop(self, timeout: float = 120.0) -> Verdict:
        """Stop sending, wait (bounded) for every acked DM to arrive, close, count."""
        self._stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks), timeout)
        with contextlib.suppress(AssertionError):  # the verdict reports whatever is missing
            await async_wait_until(self._complete, timeout, "every acked DM delivered", interval=0.2)
        for client in self.clients:
            await client.close()
        await asyncio.gather(*self._readers, return_exceptions=True)
        return self.verdict()

    def verdict(self) -> Verdict:
        v = Verdict(sent=sum(len(s) for s in self.sent.values()),
                    reconnects=sum(c.reconnects for c in self.clients))
        for user in self.users:
            ids = [m.id for m in self.received[user]]
            v.received += len(ids)
            v.duplicated += len(ids) - len(set(ids))
            missing = {mid for _, mid in self.sent[user]} - set(ids)
            v.lost += len(missing)
            v.lost_examples += [f"{mid}->{user}" for mid in sorted(missing)[:2]]
            by_sender: dict[str, list[str]] = defaultdict(list)
            for m in self.received[user]:
                by_sender[m.from_].append(m.id)
            for frm, got in by_sender.items():
                wanted = [mid for s, mid in self.sent[user] if s == frm and mid in set(got)]
                if got != wanted:
                    v.out_of_order += 1
        return v

    async def abort(self) -> None:
        """Cleanup after a failed test: cancel everything, close every client."""
        self._stop.set()
        for task in [*self._tasks, *self._readers]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._readers, return_exceptions=True)
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.close()
