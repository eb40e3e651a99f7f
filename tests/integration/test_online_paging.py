"""welcome.online and `who` carry at most a page of names (--online-page); `who` pages through the rest.

Before, every login got every online name (and `who` too): O(online) per login, O(N^2) for a
login storm of N users.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect

from protocol import frames as f
from tests.helpers import Clients, Processes, RedisServer

PAGE = 5


async def test_online_lists_are_capped_and_who_pages_through_everyone_once(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    gw = processes.gateway(redis_server.url, args=["--online-page", str(PAGE)])
    names = [f"user{i:02d}" for i in range(12)]
    await asyncio.gather(*(clients.login(gw.url, name, presence=f.PRESENCE_OFF) for name in names))
    everyone = sorted([*names, "watcher"])

    watcher = await clients.login(gw.url, "watcher")
    welcome = watcher.welcome
    assert welcome is not None
    assert welcome.online == everyone[:PAGE]  # the first page, in code-point order
    assert (welcome.online_total, welcome.online_next) == (len(everyone), everyone[PAGE - 1])
    assert watcher.online_total == len(everyone)

    # Paging: each name exactly once, in order, every page at most PAGE names.
    seen: list[str] = []
    page = await watcher.who_page()
    pages = 1
    while True:
        assert 0 < len(page.users) <= PAGE and page.total == len(everyone)
        seen += page.users
        if page.next is None:
            break
        page = await watcher.who_page(page.next)
        pages += 1
    assert seen == everyone and pages == 3
    assert await watcher.who() == everyone  # the library follows the pages

    # A smaller page on request; a bigger one gets the server's.
    assert (await watcher.who_page(limit=2)).users == everyone[:2]
    assert (await watcher.who_page(limit=1000)).users == everyone[:PAGE]

    # A client that knows nothing of pages: the v1 login and `who` get a capped list, plus fields it ignores.
    async with connect(gw.url) as ws:
        await ws.send(msgspec.json.encode({"type": "login", "v": 1, "user": "zold", "password": "pw"}))
        old_welcome = await _next(ws, "welcome")
        assert old_welcome["online"] == everyone[:PAGE] and old_welcome["online_total"] == len(everyone) + 1
        await ws.send(msgspec.json.encode({"type": "who", "ref": "w1"}))
        answer = await _next(ws, "online")
        assert answer == {"type": "online", "users": everyone[:PAGE], "total": len(everyone) + 1,
                          "next": everyone[PAGE - 1], "ref": "w1"}


async def _next(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next frame of type ``kind`` (presence and the like may come first)."""
    while True:
        frame = msgspec.json.decode(await asyncio.wait_for(ws.recv(), 10))
        if frame["type"] == kind:
            return dict(frame)


async def test_a_list_that_fits_is_sent_as_before(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    gw = processes.gateway(redis_server.url, args=["--online-page", str(PAGE)])
    alice = await clients.login(gw.url, "alice")
    bob = await clients.login(gw.url, "bob")
    assert bob.welcome is not None and bob.welcome.online == ["alice", "bob"]
    assert (bob.welcome.online_total, bob.welcome.online_next, bob.online_total) == (None, None, None)
    page = await alice.who_page()
    assert (page.users, page.total, page.next) == (["alice", "bob"], None, None)
