"""Chat across two real gateway processes sharing one real Redis."""

from __future__ import annotations

import pytest

from protocol import frames as f
from protocol.errors import UnknownUser
from tests.backends import redis_server_on_each_backend  # noqa: F401 (on every backend)
from tests.helpers import Clients, wait_for_event, wait_for_presence


def is_message(body: str):
    return lambda e: isinstance(e, f.Message) and e.body == body


async def test_dm_both_ways_across_gateways(two_gateways: tuple[str, str], clients: Clients) -> None:
    url1, url2 = two_gateways
    alice = await clients.login(url1, "alice")
    bob = await clients.login(url2, "bob")
    assert alice.node != bob.node

    ack = await alice.send("@bob", "hi bob")
    assert ack.id and ack.ts > 0
    got = await wait_for_event(bob, is_message("hi bob"))
    assert isinstance(got, f.Message)
    assert (got.id, got.from_, got.to, got.ts) == (ack.id, "alice", "@bob", ack.ts)

    ack2 = await bob.send("@alice", "hi alice")
    got2 = await wait_for_event(alice, is_message("hi alice"))
    assert isinstance(got2, f.Message) and got2.id == ack2.id and got2.from_ == "bob"
    assert ack2.id != ack.id


async def test_broadcast_reaches_three_users_on_two_gateways(two_gateways: tuple[str, str], clients: Clients) -> None:
    url1, url2 = two_gateways
    alice = await clients.login(url1, "alice")
    bob = await clients.login(url2, "bob")
    carol = await clients.login(url2, "carol")
    ack = await carol.send("*", "hello all")
    for who in (alice, bob, carol):  # the sender included
        got = await wait_for_event(who, is_message("hello all"))
        assert isinstance(got, f.Message) and got.to == "*" and got.from_ == "carol" and got.id == ack.id


@pytest.mark.parametrize("mode", ["each", "batched"])
async def test_presence_crosses_gateways(two_gateways: tuple[str, str], clients: Clients, mode: str) -> None:
    url1, url2 = two_gateways
    alice = await clients.login(url1, "alice", presence=mode)
    bob = await clients.login(url2, "bob")
    assert await wait_for_presence(alice, "bob") == [("bob", "online")]
    assert set(await alice.who()) == {"alice", "bob"}
    assert "alice" in bob.online and "bob" in bob.online and alice.online == {"alice", "bob"}
    await bob.close()
    assert await wait_for_presence(alice, "bob") == [("bob", "offline")]
    assert await alice.who() == ["alice"]
    assert alice.online == {"alice"}


async def test_dm_to_unknown_user_is_refused(two_gateways: tuple[str, str], clients: Clients) -> None:
    alice = await clients.login(two_gateways[0], "alice")
    with pytest.raises(UnknownUser):
        await alice.send("@nobody", "hello?")
    assert (await alice.send("*", "still here")).id


async def test_client_given_several_urls_uses_one_that_is_up(two_gateways: tuple[str, str], clients: Clients) -> None:
    from tests.helpers import free_port

    down = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
    alice = await clients.login([down, two_gateways[1]], "alice")
    assert alice.url == two_gateways[1]
    assert (await alice.send("*", "found a live gateway")).id
