"""Resume, session takeover and idempotent sends, against real gateways."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from client import ChatClient
from client.chat import Closed, StateChanged
from protocol import frames as f
from protocol.errors import UsernameTaken
from tests.backends import RedisBackend, redis_server_on_each_backend  # noqa: F401 (on every backend)
from tests.helpers import Clients, Processes, presence_changes, wait_for_event, wait_until


async def _drain(client: ChatClient, until: int, timeout: float = 10) -> list[f.Message]:
    got: list[f.Message] = []
    while len(got) < until:
        got.append(await wait_for_event(client, lambda e: isinstance(e, f.Message), timeout))  # type: ignore[arg-type]
    return got


async def test_session_token_takes_the_name_over_and_closes_the_old_socket(
    redis_server: RedisBackend, processes: Processes, clients: Clients
) -> None:
    gw1, gw2 = processes.gateway(redis_server.url), processes.gateway(redis_server.url)
    url1, url2 = gw1.url, gw2.url
    old = await clients.login(url1, "alice")
    watcher = await clients.login(url2, "watcher")
    assert old.session
    # Without the token the name is taken, on any gateway; a wrong token is no better.
    with pytest.raises(UsernameTaken):
        await clients.login(url2, "alice")
    stranger = ChatClient(url2, reconnect=False)
    await stranger.connect()
    stranger.session = "not-the-token"
    with pytest.raises(UsernameTaken):
        await stranger.login("alice", "pw")
    # With it, the new connection wins and the old one is told why it was closed.
    new = ChatClient(url2, reconnect=False)
    await new.connect()
    clients.clients.append(new)
    new.session = old.session
    welcome = await new.login("alice", "pw")
    assert welcome.user == "alice" and welcome.session != old.session
    closed = await wait_for_event(old, lambda e: isinstance(e, Closed))
    assert isinstance(closed, Closed) and closed.code == 4004
    # No presence flicker for others, and the name now lives on gateway 2.
    await new.send("@watcher", "it is me, moved")
    got = await wait_for_event(
        watcher, lambda e: isinstance(e, f.Message) or bool(presence_changes(e, "alice"))
    )
    assert isinstance(got, f.Message) and got.body == "it is me, moved"
    # The old gateway logs the old session out; that must not free the name.
    await asyncio.to_thread(wait_until, lambda: "logout alice" in gw1.log(), 10, "the old session's logout")
    with pytest.raises(UsernameTaken):
        await ChatClient.open(url1, "alice", "pw", reconnect=False)


async def test_a_retried_send_is_stored_once_and_acked_with_the_original_id(
    two_gateways: tuple[str, str], clients: Clients
) -> None:
    url1, url2 = two_gateways
    alice = await clients.login(url1, "alice")
    bob = await clients.login(url2, "bob")
    first = await alice.send("@bob", "exactly once", ref="retry-1")
    again = await alice.send("@bob", "exactly once", ref="retry-1")
    assert (again.id, again.ts, again.duplicate, first.duplicate) == (first.id, first.ts, True, False)
    b1 = await alice.send("*", "broadcast once", ref="retry-2")
    b2 = await alice.send("*", "broadcast once", ref="retry-2")
    assert b1.id == b2.id and b2.duplicate
    await alice.send("@bob", "marker")
    got = await _drain(bob, 3)
    assert [m.body for m in got] == ["exactly once", "broadcast once", "marker"]
    assert [m.id for m in await bob.history("@alice")][:1] == [first.id]
    assert len(await bob.history("@alice")) == 2


async def test_reconnect_resumes_dms_and_broadcasts_without_gap_or_duplicate(
    redis_server: RedisBackend, processes: Processes, clients: Clients
) -> None:
    doomed = processes.gateway(redis_server.url)
    spare = processes.gateway(redis_server.url)
    processes.presence(redis_server.url)
    bob = await clients.login([doomed.url, spare.url], "bob", reconnect=True)
    alice = await clients.login(spare.url, "alice")
    before = [(await alice.send("@bob", f"before {i}")).id for i in range(3)]
    assert [m.id for m in await _drain(bob, 3)] == before
    doomed.kill()
    state = await wait_for_event(bob, lambda e: isinstance(e, StateChanged))
    assert isinstance(state, StateChanged) and state.state == "reconnecting"
    during = [(await alice.send("@bob", f"during {i}")).id for i in range(5)]
    during.append((await alice.send("*", "broadcast during")).id)
    got: list[f.Message] = []
    back: StateChanged | None = None
    while back is None or len(got) < len(during):  # replayed messages may come before the state event
        event = await wait_for_event(bob, lambda e: isinstance(e, StateChanged | f.Message), 15)
        if isinstance(event, StateChanged):
            back = event
        else:
            got.append(event)  # type: ignore[arg-type]
    assert back.state == "connected" and back.url == spare.url
    assert back.recovered == {"dm": True, "*": True}
    after = (await alice.send("@bob", "after")).id
    got += await _drain(bob, 1)
    assert [m.id for m in got] == [*during, after]  # every one, once, in order
    assert bob.duplicates >= 0 and bob.reconnects == 1


async def test_resume_past_trimmed_history_says_not_recovered_and_history_still_works(
    redis_server: RedisBackend, processes: Processes, clients: Clients
) -> None:
    gw = processes.gateway(redis_server.url, args=["--stream-maxlen", "100"])
    alice = await clients.login(gw.url, "alice")
    bob = await clients.login(gw.url, "bob")
    await alice.send("*", "the one bob saw")
    seen = await wait_for_event(bob, lambda e: isinstance(e, f.Message))
    positions = dict(bob.positions)
    assert positions["*"] == seen.id  # type: ignore[union-attr]
    await bob.close()
    for i in range(400):  # far past the 100 kept
        await alice.send("*", f"flood {i}")
    again = ChatClient(gw.url, reconnect=False)
    await again.connect()
    clients.clients.append(again)
    again.positions = positions
    welcome = await again.login("bob", "pw")
    assert welcome.recovered == {"dm": True, "*": False}  # told explicitly, never silently
    last = await wait_for_event(again, lambda e: isinstance(e, f.Message) and e.body == "flood 399")
    assert isinstance(last, f.Message)
    page = await again.history("*", limit=20)
    assert [m.body for m in page] == [f"flood {i}" for i in range(380, 400)]


async def test_resume_by_hand_with_raw_frames(two_gateways: tuple[str, str], clients: Clients) -> None:
    """The protocol, not just the library: login with resume replays exactly what came after."""
    url1, url2 = two_gateways
    alice = await clients.login(url1, "alice")
    bob = await clients.login(url2, "bob")
    ids = [(await alice.send("@bob", f"m{i}")).id for i in range(4)]
    await _drain(bob, 4)
    await bob.close()
    raw = await clients.raw(url1)
    await raw.send_raw(msgspec.json.encode(
        {"type": "login", "v": 1, "user": "bob", "password": "pw", "resume": {"dm": ids[1]}, "ref": "l1"}
    ))
    got = [await wait_for_event(raw, lambda e: isinstance(e, f.Message)) for _ in range(2)]
    assert [m.id for m in got] == ids[2:]  # type: ignore[union-attr]
