"""The clients of one load-generator process: log in a slice of the users, read, send at a rate.

One process (``chinwag-loadtest`` without ``--workers``) owns every user; with
``--workers N`` each worker process owns a contiguous slice (chinwag/loadtest_workers.py).
Users are numbered globally, so a user's name, its gateway (round-robin over the URLs by
number) and the sender number in its message bodies are the same whichever process owns it.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

from chinwag.loadtest_idle import IdleClient
from chinwag.loadtest_measure import Progress, Recorder
from client.chat import ChatClient
from protocol import frames as f
from protocol.errors import Unavailable

PASSWORD = "loadtest-pw"

# (client, destination, sender number): one entry of the round-robin a rate is offered over.
Sender = tuple[ChatClient, str, int]


class Fleet:
    """Users ``first .. first+count-1`` of run ``run``, and what it takes to load them."""

    def __init__(self, args: argparse.Namespace, urls: list[str], run: str, first: int = 0,
                 count: int | None = None) -> None:
        self.args = args
        self.urls = urls
        self.run = run
        self.first = first
        self.count = args.clients if count is None else count
        self.rec = Recorder(run)
        self.clients: list[ChatClient] = []
        self.idlers: list[IdleClient] = []  # the idle scenario's clients (chinwag/loadtest_idle.py), not ChatClients
        self.ids: list[int] = []  # the global number of each client in self.clients
        self.readers: list[asyncio.Task[None]] = []
        self.login_errors = 0
        self.error_kinds: dict[str, int] = {}  # every failed login attempt, by exception
        self.login_retries = 0
        self.deadline = time.monotonic() + args.timeout

    def user(self, i: int) -> str:
        return f"lt{self.run}u{i}"

    @property
    def held(self) -> int:
        """Connections logged in and held."""
        return len(self.clients) + len(self.idlers)

    async def connect(self, read: bool = True) -> float:
        """Log in this fleet's users over the URLs (bounded concurrency); returns seconds taken."""
        sem = asyncio.Semaphore(self.args.concurrency)
        slots: list[ChatClient | IdleClient | None] = [None] * self.count
        idle = self.args.scenario == "idle"

        async def one(k: int) -> None:
            i = self.first + k
            async with sem:
                url = self.urls[i % len(self.urls)]
                for attempt in range(self.args.login_attempts):
                    try:
                        if idle:
                            slots[k] = await IdleClient.open(url, self.user(i), PASSWORD, self.args.presence, 60)
                        else:
                            slots[k] = await ChatClient.open([url], self.user(i), PASSWORD, reconnect=False,
                                                             open_timeout=30, request_timeout=60,
                                                             presence=self.args.presence)
                        return
                    except Exception as exc:
                        kind = f"{type(exc).__name__}: {exc}"[:120]
                        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1
                        if not isinstance(exc, Unavailable) or attempt + 1 == self.args.login_attempts:
                            self.login_errors += 1
                            return
                        self.login_retries += 1  # the server said "try again later" (close 1013): a client would
                        await asyncio.sleep(0.05 * 2**attempt)

        started = time.perf_counter()
        tasks = [asyncio.create_task(one(k)) for k in range(self.count)]
        with Progress("login", lambda: f"logged in {sum(c is not None for c in slots)}/{self.count} "
                      f"errors {self.login_errors}", self.args.progress):
            await asyncio.wait_for(asyncio.gather(*tasks), max(1.0, self.deadline - time.monotonic()))
        elapsed = time.perf_counter() - started
        self.idlers = [c for c in slots if isinstance(c, IdleClient)]
        held = [(self.first + k, c) for k, c in enumerate(slots) if isinstance(c, ChatClient)]
        self.ids = [i for i, _ in held]
        self.clients = [c for _, c in held]
        if read:
            self.readers = [asyncio.create_task(self._read(i, c)) for i, c in held]
        return elapsed

    async def _read(self, index: int, client: ChatClient) -> None:
        me = client.user
        on_message = self.rec.on_message
        async for event in client.events():
            if isinstance(event, f.Message) and event.from_ != me:
                on_message(index, event.body)

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        sem = asyncio.Semaphore(200)

        async def one(c: ChatClient | IdleClient) -> None:
            async with sem:
                try:
                    await asyncio.wait_for(c.close(), 5)
                except Exception:
                    pass

        everyone: list[ChatClient | IdleClient] = [*self.clients, *self.idlers]
        await asyncio.gather(*(one(c) for c in everyone))

    # -- who sends to whom ------------------------------------------------------

    def dm_pairs(self) -> list[Sender]:
        """Clients 2k and 2k+1 (different gateways when there are several URLs) message each other."""
        pairs: list[Sender] = []
        for a in range(0, len(self.clients) - 1, 2):
            ca, cb = self.clients[a], self.clients[a + 1]
            pairs += [(ca, f"@{cb.user}", self.ids[a]), (cb, f"@{ca.user}", self.ids[a + 1])]
        return pairs

    def broadcasters(self) -> list[Sender]:
        """The users numbered below ``--senders`` (globally) broadcast."""
        return [(c, "*", i) for c, i in zip(self.clients, self.ids, strict=True) if i < max(1, self.args.senders)]

    async def make_groups(self) -> list[Sender]:
        """Groups of ``--group-size`` consecutive clients (so every group spans the gateways); the
        first member of each creates it and sends to it."""
        size = max(2, self.args.group_size)
        senders: list[Sender] = []
        for a in range(0, len(self.clients) - size + 1, size):
            members = self.clients[a:a + size]
            name = f"lt{self.run}g{self.ids[a]}"
            await members[0].group("create", name)
            await asyncio.gather(*(member.group("join", name) for member in members[1:]))
            senders.append((members[0], f"#{name}", self.ids[a]))
        return senders

    # -- sending -----------------------------------------------------------------

    async def _send(self, client: ChatClient, to: str, sender: int) -> None:
        rec = self.rec
        rec.in_flight += 1
        try:
            await client.send(to, rec.body(sender))
            rec.sent += 1
        except Exception:
            rec.send_errors += 1
        finally:
            rec.in_flight -= 1

    async def offer(self, rate: float, duration: float, senders: list[Sender]) -> int:
        """Send at ``rate`` msgs/s for ``duration`` s, round-robin over ``senders``; returns the number offered."""
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        offered = 0
        k = 0
        while senders and (elapsed := time.perf_counter() - start) < duration and time.monotonic() < self.deadline:
            due = int(rate * elapsed) + 1
            while offered < due:
                offered += 1
                if self.rec.in_flight >= self.args.max_in_flight:
                    self.rec.skipped += 1
                    continue
                client, to, sender = senders[k % len(senders)]
                k += 1
                task = asyncio.create_task(self._send(client, to, sender))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(0.005)
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.1, min(30.0, self.deadline - time.monotonic())))
        return offered

    async def drain(self, expected: Callable[[], int]) -> None:
        """Wait (at most --drain seconds) until every expected delivery has arrived."""
        end = min(time.monotonic() + self.args.drain, self.deadline)
        for _ in range(int(self.args.drain / 0.02) + 1):
            if self.rec.received >= expected() or time.monotonic() >= end:
                return
            await asyncio.sleep(0.02)
