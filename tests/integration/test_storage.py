"""Offline delivery and history."""

from __future__ import annotations

from protocol import frames as f
from tests.helpers import Clients, wait_for_event


async def test_dm_to_offline_user_is_delivered_at_next_login(
    two_gateways: tuple[str, str], clients: Clients
) -> None:
    url1, url2 = two_gateways
    bob = await clients.login(url2, "bob")
    await bob.close()
    alice = await clients.login(url1, "alice")
    acks = [await alice.send("@bob", f"while you were out {i}") for i in range(3)]
    bob = await clients.login(url2, "bob")
    got = [await wait_for_event(bob, lambda e: isinstance(e, f.Message)) for _ in range(3)]
    assert [m.id for m in got] == [a.id for a in acks]  # type: ignore[union-attr]
    assert [m.body for m in got] == [f"while you were out {i}" for i in range(3)]  # type: ignore[union-attr]
    # Delivered once: a later login does not replay them again.
    await bob.close()
    bob = await clients.login(url1, "bob")
    await alice.send("@bob", "fresh")
    nxt = await wait_for_event(bob, lambda e: isinstance(e, f.Message))
    assert isinstance(nxt, f.Message) and nxt.body == "fresh"


async def test_history_returns_conversation_in_order_and_pages(
    two_gateways: tuple[str, str], clients: Clients
) -> None:
    url1, url2 = two_gateways
    alice = await clients.login(url1, "alice")
    bob = await clients.login(url2, "bob")
    sent = []
    for i in range(12):
        sender, to = (alice, "@bob") if i % 2 == 0 else (bob, "@alice")
        sent.append((await sender.send(to, f"m{i}")).id)
    await alice.send("*", "not in the DM conversation")

    page = await bob.history("@alice", limit=5)
    assert [m.body for m in page] == [f"m{i}" for i in range(7, 12)]
    older = await bob.history("@alice", before=page[0].id, limit=100)
    assert [m.id for m in older + page] == sent  # oldest first, ids ordered
    assert [m.id for m in await alice.history("@BOB")] == sent  # same conversation from the other side
    everyone = await bob.history("*")
    assert [m.body for m in everyone] == ["not in the DM conversation"]
    assert await bob.history("@carol") == []
