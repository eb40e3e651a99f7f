"""Group membership is decided in Redis before anything is delivered, against real gateway processes.

The attack of issue 11 item 3 (non-members looping ``join``/``create`` on an
invite-only group while a member chats), removal/rejoin bounds, the request
budget on every request kind, invitations made while offline, deterministic
ownership succession, and group positions that survive a SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from websockets.asyncio.client import connect

from client import ChatClient
from client.chat import Closed
from common import keys
from protocol import frames as f
from protocol.errors import RateLimited
from protocol.names import id_tuple
from tests.backends import RedisBackend, redis_server_on_each_backend  # noqa: F401 (on every backend)
from tests.helpers import Clients, Processes, async_wait_until, wait_for_event


def to_group(body: str):
    return lambda e: isinstance(e, f.Message) and e.to.startswith("#") and e.body == body


async def _attack(url: str, user: str, group: str, stop: asyncio.Event) -> tuple[int, list[str], set[str]]:
    """Log in raw and loop ``join``/``create`` on ``group`` until ``stop``, reading every frame.

    Returns (requests made, bodies of group messages received, error codes seen)."""
    received: list[str] = []
    codes: set[str] = set()
    tries = 0

    def note(frame: dict[str, object]) -> None:
        if frame.get("type") == "message" and str(frame.get("to", "")).startswith("#"):
            received.append(str(frame.get("body")))

    async def until_ref(ws, ref: str) -> dict[str, object]:  # type: ignore[no-untyped-def]
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), 15))
            note(frame)
            if frame.get("ref") == ref:
                return frame  # type: ignore[no-any-return]

    async with connect(url, compression=None) as ws:
        await ws.send(json.dumps({"type": "login", "v": 1, "user": user, "password": "pw", "ref": "l"}))
        assert (await until_ref(ws, "l"))["type"] == "welcome"
        while not stop.is_set():
            op = "join" if tries % 2 == 0 else "create"
            ref = f"a{tries}"
            await ws.send(json.dumps({"type": "group", "op": op, "group": group, "ref": ref}))
            answer = await until_ref(ws, ref)
            assert answer["type"] == "error", answer  # never let in
            codes.add(str(answer["code"]))
            tries += 1
        await ws.send(json.dumps({"type": "ping", "ref": "end"}))  # whatever was in flight arrives before the pong
        await until_ref(ws, "end")
    return tries, received, codes


async def test_non_members_looping_join_and_create_receive_no_group_message(
    redis_server: RedisBackend, processes: Processes, clients: Clients
) -> None:
    """Issue 11 item 3: the gateway used to add a joiner to its local members before Redis decided, and
    non-members received most of an invite-only group's messages.  Now they receive none."""
    gw1, gw2 = processes.gateway(redis_server.url), processes.gateway(redis_server.url)
    alice = await clients.login(gw1.url, "alice")
    bob = await clients.login(gw2.url, "bob")
    await alice.group("create", "secret", invite_only=True)
    await alice.group("invite", "secret", user="bob")
    await bob.group("join", "secret")

    stop = asyncio.Event()
    attackers = [asyncio.create_task(_attack(url, name, "#Secret", stop))
                 for url, name in ((gw1.url, "mallory"), (gw2.url, "trudy"), (gw1.url, "oscar"))]
    sent = []
    for i in range(55):
        sent.append((await alice.send("#secret", f"secret {i}")).id)
        await asyncio.sleep(0.02)  # pacing the chat so it overlaps many join attempts, not synchronisation
    for i in range(55):  # the member on the other gateway gets every one: the test can see delivery
        await wait_for_event(bob, to_group(f"secret {i}"), 10)
    stop.set()
    results = await asyncio.gather(*attackers)
    for tries, received, codes in results:
        print(f"\nattacker: {tries} join/create attempts, {len(received)} group messages received")
        assert tries > 20 and codes == {"forbidden", "group_exists"}
        assert received == []
    assert (await alice.group("members", "secret")).members == ["alice", "bob"]


async def test_a_rejoined_member_resuming_from_before_never_gets_what_was_sent_while_out(
    redis_server: RedisBackend, processes: Processes, clients: Clients
) -> None:
    gw1, gw2 = processes.gateway(redis_server.url), processes.gateway(redis_server.url)
    alice = await clients.login(gw1.url, "alice")
    bob = await clients.login(gw2.url, "bob")
    await alice.group("create", "ops")
    await bob.group("join", "ops")
    await alice.send("#ops", "while in")
    await wait_for_event(bob, to_group("while in"))
    old_positions = dict(bob.positions)
    await alice.group("remove", "ops", user="bob")
    while_out = await alice.send("#ops", "while out")
    await bob.group("join", "ops")
    await alice.send("#ops", "back in")
    await wait_for_event(bob, to_group("back in"))

    again = ChatClient(gw1.url, reconnect=False)  # takes bob's name over, resuming from before the removal
    clients.clients.append(again)
    again.positions = old_positions
    again.session = bob.session
    await again.connect()
    welcome = await again.login("bob", "pw")
    assert id_tuple(welcome.positions["#ops"]) >= id_tuple(while_out.id)  # never before the rejoin
    await again.send("@bob", "marker")
    seen = []
    while True:
        event = await again.next_event(5)
        if isinstance(event, f.Message):
            if event.body == "marker":
                break
            seen.append(event.body)
    assert "while out" not in seen and "back in" in seen


async def test_every_request_kind_spends_the_users_request_budget_on_every_gateway(
    redis_server: RedisBackend, processes: Processes, clients: Clients
) -> None:
    env = {"CHINWAG_RATE_REQUESTS": "0.5", "CHINWAG_RATE_REQUEST_BURST": "3", "CHINWAG_RATE_ABUSE_LIMIT": "6"}
    gw1, gw2 = processes.gateway(redis_server.url, env=env), processes.gateway(redis_server.url, env=env)
    requests = {
        "who": lambda c: c.who(),
        "history": lambda c: c.history("*"),
        "groups": lambda c: c.groups(),
        "group create": lambda c: c.group("create", f"g{random.randrange(10**9)}"),
        "group members": lambda c: c.group("members", "nope"),
        "upload": lambda c: c.request(f.Upload(name="a.txt", size=3, sha256="0" * 64, mime="text/plain")),
    }
    for i, (kind, call) in enumerate(requests.items()):
        user = await clients.login(gw1.url, f"user{i}")
        for _ in range(3):  # the burst
            try:
                await call(user)
            except RateLimited:
                raise AssertionError(f"{kind} limited within the burst") from None
            except Exception:
                pass  # not_found / not_member / upload errors are answers too
        for _ in range(30):
            await user.ping()  # free, and never limited
        with pytest.raises(RateLimited) as limited:
            await call(user)
        assert limited.value.retry_after is not None and limited.value.retry_after > 0, kind
        await user.close()
        elsewhere = await clients.login(gw2.url, f"user{i}")  # one budget across the gateways
        with pytest.raises(RateLimited):
            await elsewhere.who()
        await elsewhere.close()

    hammer = await clients.login(gw2.url, "hammer")
    for _ in range(3):
        await hammer.who()
    for _ in range(6):
        await hammer.send_raw(json.dumps({"type": "who", "ref": f"w{_}"}))
    closed = await wait_for_event(hammer, lambda e: isinstance(e, Closed), 10)
    assert isinstance(closed, Closed) and closed.code == 4029


async def test_an_invitation_made_while_offline_arrives_at_login_until_used_or_revoked(
    redis_server: RedisBackend, processes: Processes, clients: Clients
) -> None:
    gw1, gw2 = processes.gateway(redis_server.url), processes.gateway(redis_server.url)
    for name in ("bob", "carol"):
        await (await clients.login(gw2.url, name)).close()  # accounts exist; both offline now
    alice = await clients.login(gw1.url, "alice")
    await alice.group("create", "Core", invite_only=True)
    await alice.group("invite", "core", user="bob")
    await alice.group("invite", "core", user="carol")
    await alice.group("remove", "core", user="carol")  # revoked while she is away

    bob = await clients.login(gw2.url, "bob")
    invited = await wait_for_event(bob, lambda e: isinstance(e, f.GroupEvent))
    assert isinstance(invited, f.GroupEvent)
    assert (invited.group, invited.event, invited.user, invited.by) == ("Core", "invited", "bob", "alice")
    carol = await clients.login(gw2.url, "carol")
    await carol.send("@carol", "marker")
    first = await wait_for_event(carol, lambda e: isinstance(e, f.GroupEvent | f.Message))
    assert isinstance(first, f.Message) and first.body == "marker"  # no invitation for carol

    await bob.group("join", "core")
    await bob.close()
    bob = await clients.login(gw1.url, "bob")  # joined: the invitation is used up
    await bob.send("@bob", "marker")
    first = await wait_for_event(bob, lambda e: isinstance(e, f.GroupEvent | f.Message))
    assert isinstance(first, f.Message) and first.body == "marker"


async def test_the_longest_standing_member_becomes_owner(
    redis_server: RedisBackend, processes: Processes, clients: Clients
) -> None:
    gw1, gw2 = processes.gateway(redis_server.url), processes.gateway(redis_server.url)
    # A name of 30 three-byte characters makes Redis keep the members hash as a real hash table,
    # whose order has nothing to do with the order of joining.
    names = ["ownerA", "\u3042" * 30] + [f"m{i:02d}" for i in range(30)]
    random.Random(7).shuffle(names[1:])
    members = [await clients.login((gw1.url, gw2.url)[i % 2], name) for i, name in enumerate(names)]
    await members[0].group("create", "club")
    for m in members[1:]:
        await m.group("join", "club")
    await members[3].group("leave", "club")
    await members[3].group("join", "club")  # rejoining puts you last
    order = [m.user for m in members[:3] + members[4:] + members[3:4]]
    for i in range(4):
        await members[names.index(order[i])].group("leave", "club")
        heir = members[names.index(order[i + 1])]
        info = await heir.group("members", "club")
        assert info.owner == order[i + 1], f"after {order[i]} left"


async def test_group_positions_are_saved_as_they_advance_and_survive_sigkill(
    redis_server: RedisBackend, processes: Processes, clients: Clients
) -> None:
    env = {"CHINWAG_GROUP_CURSOR_INTERVAL": "0.2"}
    doomed = processes.gateway(redis_server.url, env=env)
    spare = processes.gateway(redis_server.url, env=env)
    alice = await clients.login(spare.url, "alice")
    bob = await clients.login(doomed.url, "bob")
    await alice.group("create", "devs")
    await bob.group("join", "devs")
    sent = [(await alice.send("#devs", f"m{i}")).id for i in range(10)]
    for i in range(10):
        await wait_for_event(bob, to_group(f"m{i}"))
    admin = redis_server.admin()
    try:
        async def saved() -> bool:
            return await admin.hget(keys.group_cursors("bob"), "devs") == sent[-1].encode()
        await async_wait_until(saved, 10, "bob's position in #devs to be saved")
    finally:
        await admin.aclose()
    doomed.kill()  # SIGKILL: no logout, nothing saved at the end
    after = [(await alice.send("#devs", f"after {i}")).id for i in range(3)]

    back = ChatClient(spare.url, reconnect=False)  # takes the name over, no resume positions at all
    clients.clients.append(back)
    back.session = bob.session
    await back.connect()
    welcome = await back.login("bob", "pw")
    assert welcome.positions["#devs"] == sent[-1]
    got = [await wait_for_event(back, lambda e: isinstance(e, f.Message)) for _ in range(3)]
    assert [m.id for m in got] == after  # type: ignore[union-attr]
    await back.send("@bob", "marker")
    nxt = await wait_for_event(back, lambda e: isinstance(e, f.Message))
    assert isinstance(nxt, f.Message) and nxt.body == "marker"  # no re-replay, nothing more


async def test_a_removed_member_gets_nothing_after_the_removal_even_mid_burst(
    redis_server: RedisBackend, processes: Processes, clients: Clients
) -> None:
    gw1, gw2 = processes.gateway(redis_server.url), processes.gateway(redis_server.url)
    alice = await clients.login(gw1.url, "alice")
    bob = await clients.login(gw2.url, "bob")
    carol = await clients.login(gw2.url, "carol")
    await alice.group("create", "team")
    await bob.group("join", "team")
    await carol.group("join", "team")

    async def burst() -> list[str]:
        return [(await alice.send("#team", f"b{i}")).id for i in range(60)]

    sending = asyncio.create_task(burst())
    await wait_for_event(carol, to_group("b10"), 10)
    await alice.group("remove", "team", user="bob")
    ids = await sending
    await wait_for_event(carol, to_group("b59"), 10)
    removed_seen = False
    got: list[str] = []
    await bob.send("@bob", "marker")
    while True:
        event = await bob.next_event(10)
        if isinstance(event, f.GroupEvent) and event.event == "removed":
            removed_seen = True
        elif isinstance(event, f.Message) and event.body == "marker":
            break
        elif isinstance(event, f.Message):
            assert not removed_seen, f"{event.body} arrived after the removal"
            got.append(event.id)
    assert removed_seen and got == ids[: len(got)]  # a prefix: in order, nothing after the removal


@pytest.mark.single_redis("kills every pub/sub client of the one Redis and counts them there; a lost shard "
                         "subscription on a cluster is the router's tests' (on_lost -> hold and replay)")
async def test_a_removal_while_the_gateway_is_cut_off_from_pubsub_still_stops_delivery(
    redis_server: RedisBackend, processes: Processes, clients: Clients
) -> None:
    """The removed member's gateway misses the ``part`` (its subscriptions are down when it is
    published); after resubscribing it reads the memberships again before delivering anything."""
    gw1, gw2 = processes.gateway(redis_server.url), processes.gateway(redis_server.url)
    alice = await clients.login(gw2.url, "alice")
    bob = await clients.login(gw1.url, "bob")
    carol = await clients.login(gw1.url, "carol")
    await alice.group("create", "ops")
    await bob.group("join", "ops")
    await carol.group("join", "ops")
    admin = redis_server.admin()
    try:
        await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await alice.group("remove", "ops", user="bob")  # published while nobody listens

        async def resubscribed() -> bool:
            clients_now = (await admin.execute_command("CLIENT", "LIST", "TYPE", "pubsub")).splitlines()
            return len(clients_now) >= 2
        await async_wait_until(resubscribed, 15, "both gateways to resubscribe")
    finally:
        await admin.aclose()
    await alice.send("#ops", "after")
    await wait_for_event(carol, to_group("after"), 15)  # the group flows again on that gateway
    await alice.send("@bob", "marker")
    while True:
        event = await bob.next_event(15)
        if isinstance(event, f.Message):
            assert event.body == "marker", f"{event.body!r} reached bob after his removal"
            break
