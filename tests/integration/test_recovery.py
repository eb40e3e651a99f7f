"""Catching up after the gateway lost its pub/sub link: groups (regressions found by the nemesis test)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as redis_async

from client import ChatClient
from common import keys
from common.config import Settings
from gateway.server import Gateway
from presence.registry import Registry
from protocol import frames as f
from protocol.errors import Forbidden
from tests.helpers import Clients, Proc, Processes, RedisServer, async_wait_until, subscriptions_cut, wait_for_event


async def _messages(client: ChatClient, n: int, timeout: float = 10) -> list[f.Message]:
    """The next ``n`` messages the client receives (other events skipped)."""
    return [cast(f.Message, await wait_for_event(client, lambda e: isinstance(e, f.Message), timeout))
            for _ in range(n)]


async def _member_and_owner(
    redis_server: RedisServer, processes: Processes, clients: Clients, owner_name: str = "owner"
) -> tuple[Proc, ChatClient, ChatClient]:
    """Two gateway processes; "member" on the first joined group "devs", which ``owner_name`` on the
    second created: group traffic reaches the member only through its gateway's subscriptions."""
    gw1 = processes.gateway(redis_server.url)
    gw2 = processes.gateway(redis_server.url)
    member = await clients.login(gw1.url, "member")
    owner = await clients.login(gw2.url, owner_name)
    await owner.group("create", "devs")
    await member.group("join", "devs")
    return gw1, member, owner


async def _cut_subscriptions(admin: redis_async.Redis) -> None:
    """The async ``subscriptions_cut`` for the in-process tests, which let SUBSCRIBE back themselves
    (and again in ``_admin``'s exit)."""
    await admin.execute_command("ACL", "SETUSER", "default", "-subscribe")
    await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")


@contextlib.asynccontextmanager
async def _admin(redis_url: str) -> AsyncIterator[redis_async.Redis]:
    """An async admin connection; SUBSCRIBE is allowed again when it closes, whatever happened."""
    admin = redis_async.Redis.from_url(redis_url)
    try:
        yield admin
    finally:
        await admin.execute_command("ACL", "SETUSER", "default", "+subscribe")
        await admin.aclose()


@contextlib.asynccontextmanager
async def _gateway_in_process(redis_url: str, tmp_path: Path, **settings: Any) -> AsyncIterator[Gateway]:
    """A gateway in this process, so the test can reach its sessions and recovery state."""
    gateway = Gateway(Settings(
        redis_url=redis_url, port=0, http_port=0, argon2_memory_kib=1024, argon2_time_cost=1, rate_messages=0,
        rate_requests=0, ip_connections=0, ip_logins=0, data_dir=str(tmp_path), **settings,
    ))
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


def _url(gateway: Gateway) -> str:
    return f"ws://127.0.0.1:{gateway.port}"


async def test_group_created_on_a_fresh_cluster_is_caught_up_after_a_pubsub_loss(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    """tests/chaos/test_nemesis.py seed 4: a group created before any message existed starts at
    position "0-0", which the catch-up took for "nobody here has read it": everything the group
    stored while the gateway's subscriptions were down was skipped, for every local member."""
    gw1 = processes.gateway(redis_server.url)
    gw2 = processes.gateway(redis_server.url)
    owner = await clients.login(gw1.url, "owner")
    member = await clients.login(gw1.url, "member")
    sender = await clients.login(gw2.url, "sender")
    info = await owner.group("create", "devs")
    assert info.position == "0-0"  # nothing stored anywhere yet
    assert (await member.group("join", "devs")).position == "0-0"
    await sender.group("join", "devs")
    with subscriptions_cut(redis_server.url, frozen=gw1):
        acks = [await sender.send("#devs", f"while gw1 was cut off {i}") for i in range(3)]
    for client in (owner, member):
        assert [m.id for m in await _messages(client, 3)] == [a.id for a in acks]
    nxt = await sender.send("#devs", "live again")
    assert (await _messages(owner, 1))[0].id == nxt.id


async def test_leaving_a_group_during_a_pubsub_outage_first_delivers_what_was_stored(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    """tests/chaos/test_nemesis.py seed 3: a member whose gateway had lost its subscriptions left
    the group before the catch-up ran; what the group stored while they were still a member never
    reached them (no catch-up or resume covers a group you are no longer in)."""
    _, member, sender = await _member_and_owner(redis_server, processes, clients, "sender")
    with subscriptions_cut(redis_server.url):
        acks = [await sender.send("#devs", f"stored while member {i}") for i in range(3)]
        await member.group("leave", "devs")
    assert [m.id for m in await _messages(member, 3)] == [a.id for a in acks]


async def test_a_catch_up_that_ends_while_pubsub_is_down_keeps_holding(
    redis_server: RedisServer, processes: Processes, clients: Clients, tmp_path: Path
) -> None:
    """tests/chaos/test_nemesis.py soak seed 1000: a catch-up (here the one after a lost lease)
    finished while the pub/sub link was down and released the held frames; after the resubscribe
    the first live frames overtook what was stored during the outage and every position jumped
    past it (lost broadcasts, DMs and group messages).  In-process, to see the session's state."""
    other = processes.gateway(redis_server.url)
    async with (
        _gateway_in_process(redis_server.url, tmp_path, lease_ttl=1.5, redis_ping_interval=0.2,
                            redis_ping_timeout=0.5) as gateway,
        _admin(redis_server.url) as admin,
    ):
        alice = await clients.login(_url(gateway), "alice")
        bob = await clients.login(other.url, "bob")
        session = gateway.sessions["alice"]
        # Cut the gateway's subscriptions for good (SUBSCRIBE denied), then reap its lease.
        await _cut_subscriptions(admin)
        await async_wait_until(lambda: not gateway.router.live, 5, "the gateway's pub/sub to be down")
        await Registry(admin).release_gateway(gateway.node_id)  # what the reaper does
        during = [await bob.send("@alice", f"during {i}") for i in range(3)]
        await async_wait_until(lambda: gateway.recovery.reclaim_pending is False and gateway.recovery.task is not None
                               and gateway.recovery.task.done(),
                               10, "the lease recovery to finish")
        assert session.holding, "released held frames while the subscriptions were still down"
        await admin.execute_command("ACL", "SETUSER", "default", "+subscribe")
        after = await bob.send("@alice", "after")
        assert [m.id for m in await _messages(alice, 4)] == [a.id for a in [*during, after]]


async def test_a_removal_during_a_pubsub_outage_first_delivers_what_was_stored(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    """docs/guarantees.md, "removal during an outage" (the checker's old exemption): the owner removed
    a member whose gateway had lost its subscriptions; the ``part`` notice was lost with them, and the
    catch-up found the member gone and dropped the group without writing what it had stored while
    they were still a member.  The removal now records where the membership ended."""
    _, member, owner = await _member_and_owner(redis_server, processes, clients)
    with subscriptions_cut(redis_server.url):
        acks = [await owner.send("#devs", f"stored while member {i}") for i in range(3)]
        await owner.group("remove", "devs", user="member")
        after = await owner.send("#devs", "stored after the removal")
    assert [m.id for m in await _messages(member, 3)] == [a.id for a in acks]
    probe = await owner.send("@member", "probe")  # everything of the group would have come before it
    rest = (await _messages(member, 1))[0]
    assert rest.id == probe.id, f"{rest} (the message after the removal is {after.id})"


async def test_a_removal_while_catching_up_delivers_the_held_messages(
    redis_server: RedisServer, processes: Processes, clients: Clients, tmp_path: Path
) -> None:
    """The removal's notice arrives live while the member's session is still holding live frames
    (a catch-up in progress): the held messages of the group were dropped at release, as the session
    was no longer a member, though the user was one when they were stored.  In-process, to hold."""
    other = processes.gateway(redis_server.url)
    async with _gateway_in_process(redis_server.url, tmp_path) as gateway:
        member = await clients.login(_url(gateway), "member")
        owner = await clients.login(other.url, "owner")
        await owner.group("create", "devs")
        await member.group("join", "devs")
        session = gateway.sessions["member"]
        session.start_holding()  # what a catch-up does until it has replayed everything
        acks = [await owner.send("#devs", f"held {i}") for i in range(3)]
        await async_wait_until(lambda: len(session.early) >= 3, 10, "the group messages to be held")
        await owner.group("remove", "devs", user="member")
        await async_wait_until(lambda: "devs" not in session.groups, 10, "the removal to arrive")
        session.go_live()
        assert [m.id for m in await _messages(member, 3)] == [a.id for a in acks]


async def test_a_removal_while_the_client_reconnects_is_delivered_on_resume(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    """Soak seed 2004: the member's connection died (messages of the group written to it, or held on
    its gateway, never arrived), the owner removed them, and the client's resume could not bring those
    messages back: the login replays only groups the user is in.  It now replays a resumed group up to
    where the owner's removal ended the membership, and nothing after."""
    gw1, member, owner = await _member_and_owner(redis_server, processes, clients)
    first = await owner.send("#devs", "first")
    await wait_for_event(member, lambda e: isinstance(e, f.Message) and e.id == first.id, 10)
    positions, token = dict(member.positions), member.session
    await member.close()
    acks = [await owner.send("#devs", f"while away {i}") for i in range(3)]
    await owner.group("remove", "devs", user="member")
    after = await owner.send("#devs", "after the removal")
    again = ChatClient(gw1.url, reconnect=False)
    clients.clients.append(again)
    again.positions, again.session = positions, token
    await again.connect()
    await again.login("member", "pw")
    probe = await owner.send("@member", "probe")
    seen = []
    while True:
        event = await again.next_event(10)
        if isinstance(event, f.Message):
            if event.id == probe.id:
                break
            seen.append(event.id)
    assert seen == [a.id for a in acks], f"{seen} (the message after the removal is {after.id})"


async def test_a_login_spanning_a_pubsub_loss_loses_nothing(
    redis_server: RedisServer, processes: Processes, clients: Clients, tmp_path: Path
) -> None:
    """A login that had subscribed but read its group replay while the subscriptions were down, and was
    still writing it when the resubscribe's catch-up began: the catch-up skipped the session (still
    logging in), so what was published between the login's read and the resubscribe never reached it.
    In-process, to place the outage inside the login (after its reads)."""
    other = processes.gateway(redis_server.url)
    async with (
        _gateway_in_process(redis_server.url, tmp_path, redis_ping_interval=0.2, redis_ping_timeout=0.5) as gateway,
        _admin(redis_server.url) as admin,
    ):
        owner = await clients.login(other.url, "owner")
        await owner.group("create", "devs")
        first = await clients.login(_url(gateway), "member")
        await first.group("join", "devs")
        await first.close()
        await async_wait_until(lambda: "member" not in gateway.sessions, 10, "the first session to end")
        missed: list[f.Ack] = []
        invitations = gateway.groups.invitations

        async def outage_after_the_reads(ukey: str) -> list[bytes]:  # the login's last read
            losses = gateway.recovery.losses
            await _cut_subscriptions(admin)  # and they cannot come back
            await async_wait_until(lambda: gateway.recovery.losses > losses, 5, "the gateway's pub/sub to drop")
            missed.append(await owner.send("#devs", "published while the subscriptions were down"))
            await admin.execute_command("ACL", "SETUSER", "default", "+subscribe")
            await async_wait_until(lambda: gateway.router.live and gateway.recovery.task is not None
                                   and gateway.recovery.task.done(),
                                   10, "the resubscribe's catch-up")
            return await invitations(ukey)

        gateway.groups.invitations = outage_after_the_reads  # type: ignore[method-assign]
        member = await clients.login(_url(gateway), "member", reconnect=True)
        gateway.groups.invitations = invitations  # type: ignore[method-assign]
        assert (await _messages(member, 1, 15))[0].id == missed[0].id


async def test_a_leave_during_a_pubsub_outage_delivers_up_to_the_leave_itself(
    redis_server: RedisServer, processes: Processes, clients: Clients, tmp_path: Path
) -> None:
    """Analysis of soak seed 2002: a leave first writes what the group stored up to the newest id it
    reads, then leaves in Redis one round trip later; with the subscriptions down, a message stored in
    between was neither live nor caught up (the user was no longer in the group when the catch-up ran).
    The leave now delivers up to the position the leave script itself records.  In-process, to store
    the message between the two round trips."""
    other = processes.gateway(redis_server.url)
    async with _gateway_in_process(redis_server.url, tmp_path) as gateway, _admin(redis_server.url) as admin:
        owner = await clients.login(other.url, "owner")
        await owner.group("create", "devs")
        member = await clients.login(_url(gateway), "member")
        await member.group("join", "devs")
        window: list[f.Ack] = []
        leave = gateway.groups.leave

        async def message_just_before(gkey: str, ukey: str, uname: str) -> object:
            window.append(await owner.send("#devs", "stored between the read and the leave"))
            return await leave(gkey, ukey, uname)

        await _cut_subscriptions(admin)
        await async_wait_until(lambda: not gateway.router.live, 5, "the gateway's pub/sub to drop")
        before = await owner.send("#devs", "stored while the subscriptions were down")
        gateway.groups.leave = message_just_before  # type: ignore[assignment]
        await member.group("leave", "devs")
        assert [m.id for m in await _messages(member, 2)] == [before.id, window[0].id]


async def test_a_removal_and_a_rejoin_during_a_pubsub_outage_deliver_the_old_membership(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    """Soakfix replay of seed 2004: removed (the notice lost with the subscriptions) and back in the
    group before the catch-up; the new membership's position moved the session past what the old one
    had stored, which no path delivered.  Nothing from between the two memberships may arrive."""
    _, member, owner = await _member_and_owner(redis_server, processes, clients)
    with subscriptions_cut(redis_server.url):
        acks = [await owner.send("#devs", f"stored while member {i}") for i in range(3)]
        await owner.group("remove", "devs", user="member")
        out = await owner.send("#devs", "stored while out")
        await member.group("join", "devs")
        back = await owner.send("#devs", "stored after the rejoin")
    got = await _messages(member, 4)
    assert [m.id for m in got] == [*(a.id for a in acks), back.id], f"(while out: {out.id})"


async def test_a_login_during_which_the_lease_is_found_lost_loses_nothing(
    redis_server: RedisServer, processes: Processes, clients: Clients, tmp_path: Path
) -> None:
    """Soak seed 1006: the presence service reaped the gateway (freeing the name of a user logging in
    there) and the gateway found its lease lost before that login ended.  The catch-up left the session
    out (still logging in), and the re-claim, which ran just after the login ended, kept it (no longer
    logging in): a DM stored while the name was free, after the login had read its replay, was published
    nowhere and never replayed.  Such a login is now closed with 4003, and the client resumes.
    In-process, to reap inside the login (after its reads) and hold the re-claim until it has ended."""
    settings = Settings(
        redis_url=redis_server.url, port=0, http_port=0, argon2_memory_kib=1024, argon2_time_cost=1,
        rate_messages=0, rate_requests=0, ip_connections=0, ip_logins=0, data_dir=str(tmp_path),
        lease_ttl=1.0,  # renewed every third of a second: the loss is found within the login
    )
    gateway = Gateway(settings)
    await gateway.start()
    other = processes.gateway(redis_server.url)
    admin = redis_async.Redis.from_url(redis_server.url)
    try:
        bob = await clients.login(other.url, "bob")
        missed: list[f.Ack] = []
        invitations, reclaim = gateway.groups.invitations, gateway.registry.reclaim

        async def reaped_after_the_reads(ukey: str) -> list[bytes]:  # the login's last read
            await Registry(admin).release_gateway(gateway.node_id)  # what reaping an expired lease does
            missed.append(await bob.send("@alice", "stored while alice's name was free"))
            await async_wait_until(lambda: gateway.recovery.lease_losses > 0, 5, "the gateway to find its lease lost")
            return await invitations(ukey)

        async def reclaim_once_logged_in(node_id: str, sessions: list[tuple[str, str, str]]) -> list[int]:
            await async_wait_until(lambda: "alice" in gateway.sessions
                                   and gateway.sessions["alice"] not in gateway.joining, 10, "alice's login to end")
            return await reclaim(node_id, sessions)

        gateway.groups.invitations = reaped_after_the_reads  # type: ignore[method-assign]
        gateway.registry.reclaim = reclaim_once_logged_in  # type: ignore[method-assign]
        alice = await clients.login(f"ws://127.0.0.1:{gateway.port}", "alice", reconnect=True)
        gateway.groups.invitations = invitations  # type: ignore[method-assign]
        got = await wait_for_event(alice, lambda e: isinstance(e, f.Message), 15)
        assert got.id == missed[0].id  # type: ignore[union-attr]
    finally:
        await admin.aclose()
        await gateway.stop()


async def test_a_session_that_ends_during_the_re_claim_does_not_keep_its_name(
    redis_server: RedisServer, processes: Processes, clients: Clients, tmp_path: Path
) -> None:
    """Soak seed 2102: a gateway found its lease lost and re-claimed its sessions' names; one session
    logged out while the re-claim script was on its way (its release found the name free, a no-op), so
    the script gave the name back to a session that was gone.  Nobody released it: the user could not
    log in again until that gateway's lease lapsed (40 s there), and a DM published to the name in the
    meantime reached the user's stale session on a paused gateway, moving its position past one stored
    while the name was free.  In-process, to end the session between the re-claim's read and its script."""
    settings = Settings(
        redis_url=redis_server.url, port=0, http_port=0, argon2_memory_kib=1024, argon2_time_cost=1,
        rate_messages=0, rate_requests=0, ip_connections=0, ip_logins=0, data_dir=str(tmp_path),
        lease_ttl=1.0,
    )
    gateway = Gateway(settings)
    await gateway.start()
    other = processes.gateway(redis_server.url)
    admin = redis_async.Redis.from_url(redis_server.url)
    try:
        alice = await clients.login(f"ws://127.0.0.1:{gateway.port}", "alice")
        reclaim = gateway.registry.reclaim

        async def reclaim_after_a_logout(node_id: str, sessions: list[tuple[str, str, str]]) -> list[int]:
            if any(key == "alice" for key, *_ in sessions):
                await alice.close()
                await async_wait_until(lambda: "alice" not in gateway.sessions, 10, "alice's logout")
            return await reclaim(node_id, sessions)

        gateway.registry.reclaim = reclaim_after_a_logout  # type: ignore[method-assign]
        await Registry(admin).release_gateway(gateway.node_id)  # the lease reaped (alice's name freed)
        await async_wait_until(lambda: "alice" not in gateway.sessions and not gateway.recovery.reclaim_pending, 10,
                               "the re-claim to finish")
        assert not await admin.exists(keys.session("alice")), "a logged-out session kept its name"
        again = await clients.login(other.url, "alice")  # not username_taken
        assert again.node != gateway.node_id
    finally:
        await admin.aclose()
        await gateway.stop()


async def test_a_refused_join_after_an_unseen_removal_delivers_the_old_membership(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    """Soak seed 3001: the owner of an invite-only group removed a member whose gateway had lost its
    subscriptions (the ``part`` notice lost with them); the member, not invited again, then asked to
    join while the gateway still counted them a member.  Redis refused, and the refusal stopped delivery
    without writing what the group had stored while they were still a member; the catch-up that
    followed no longer saw the membership.  The refusal now writes the ended membership first."""
    gw1 = processes.gateway(redis_server.url)
    gw2 = processes.gateway(redis_server.url)
    member = await clients.login(gw1.url, "member")
    owner = await clients.login(gw2.url, "owner")
    await owner.group("create", "devs", invite_only=True)
    await owner.group("invite", "devs", user="member")
    await member.group("join", "devs")
    with subscriptions_cut(redis_server.url):
        acks = [await owner.send("#devs", f"stored while member {i}") for i in range(3)]
        await owner.group("remove", "devs", user="member")
        after = await owner.send("#devs", "stored after the removal")
        with pytest.raises(Forbidden):
            await member.group("join", "devs")  # not invited again: refused
    got = await _messages(member, 3)
    assert [m.id for m in got] == [a.id for a in acks], f"(after the removal: {after.id})"
    probe = await owner.send("@member", "probe")  # nothing of the group may come before it
    rest = (await _messages(member, 1))[0]
    assert rest.id == probe.id, f"{rest} (the message after the removal is {after.id})"


async def test_a_rejoin_while_the_catch_up_reads_memberships_keeps_delivering(
    redis_server: RedisServer, processes: Processes, clients: Clients, tmp_path: Path
) -> None:
    """Soak seed 5201 (issue 15): a member was removed while its gateway's subscriptions were down (the
    ``part`` notice lost), invited again and joined while the catch-up was confirming memberships.  The
    catch-up had read "not a member" just before the join decided, and then stopped delivery, after the
    join had answered: the member got nothing of the group until it left and joined again.  A join that
    starts while the memberships are read now makes that read stale.  In-process, to hold the catch-up
    between its read and its verdict until the join has answered."""
    settings = Settings(
        redis_url=redis_server.url, port=0, http_port=0, argon2_memory_kib=1024, argon2_time_cost=1,
        rate_messages=0, rate_requests=0, ip_connections=0, ip_logins=0, data_dir=str(tmp_path),
    )
    gateway = Gateway(settings)
    await gateway.start()
    other = processes.gateway(redis_server.url)
    try:
        async with _admin(redis_server.url) as admin:
            member = await clients.login(f"ws://127.0.0.1:{gateway.port}", "member")
            owner = await clients.login(other.url, "owner")
            await owner.group("create", "devs", invite_only=True)
            await owner.group("invite", "devs", user="member")
            await member.group("join", "devs")
            parted, read = gateway.groups.parted, asyncio.Event()

            async def parted_after_the_join(ukey: str, gkeys: list[str]) -> Any:
                read.set()  # the catch-up has read "not a member"; the member joins again now
                await async_wait_until(lambda: admin.hexists(keys.group_members("devs"), "member"), 10,
                                       "the join to be decided in Redis")
                return await parted(ukey, gkeys)

            gateway.groups.parted = parted_after_the_join  # type: ignore[method-assign]
            await _cut_subscriptions(admin)
            await owner.group("remove", "devs", user="member")  # the notice is lost
            await owner.group("invite", "devs", user="member")
            await admin.execute_command("ACL", "SETUSER", "default", "+subscribe")  # the catch-up starts
            await asyncio.wait_for(read.wait(), 10)
            await member.group("join", "devs")
            await async_wait_until(lambda: not gateway.recovery.held and gateway.router.live, 10, "the catch-up")
            gateway.groups.parted = parted  # type: ignore[method-assign]
            after = await owner.send("#devs", "stored after the rejoin")
            got = await _messages(member, 1)
            assert [m.id for m in got] == [after.id]
    finally:
        await gateway.stop()


@pytest.mark.parametrize("marker_heard", [False, True], ids=["link-down-at-the-join", "link-lost-after-the-marker"])
async def test_a_join_answered_after_a_catch_up_loses_nothing(
    redis_server: RedisServer, processes: Processes, clients: Clients, tmp_path: Path, marker_heard: bool
) -> None:
    """Soak seed 5201 (issue 15): "member" joined a group its gateway was already subscribed to (another
    local member) while that gateway's pub/sub link was down, so the join's marker was lost; the link
    came back and the catch-up ran before the join had answered.  The catch-up stopped waiting for the
    marker but did not count the join a member (no answer yet), so it replayed nothing for it, and the
    join then started live delivery: what the group stored between the join and the resubscribe never
    arrived.  The join now writes that itself before delivery starts.  The same if the marker was heard and
    the link lost after it, before the answer.  In-process, to hold the join's answer until the catch-up
    is done."""
    other = processes.gateway(redis_server.url)
    async with _gateway_in_process(redis_server.url, tmp_path) as gateway, _admin(redis_server.url) as admin:
        watcher = await clients.login(_url(gateway), "watcher")  # keeps the group subscribed here
        member = await clients.login(_url(gateway), "member")
        owner = await clients.login(other.url, "owner")
        await owner.group("create", "devs")
        await watcher.group("join", "devs")
        join, decided, answer = gateway.groups.join, asyncio.Event(), asyncio.Event()

        async def join_answered_late(gkey: str, ukey: str, uname: str, nonce: str = "") -> Any:
            result = await join(gkey, ukey, uname, nonce)  # decided in Redis: the marker is published
            decided.set()
            await answer.wait()
            return result

        gateway.groups.join = join_answered_late  # type: ignore[method-assign]
        if not marker_heard:
            await _cut_subscriptions(admin)
            await async_wait_until(lambda: not gateway.router.live, 10, "the pub/sub link to drop")
        joining = asyncio.create_task(member.group("join", "devs"))
        await asyncio.wait_for(decided.wait(), 10)
        if marker_heard:
            pending = gateway.relay._pending  # the relay's parked joins (no public view of the marker)
            await async_wait_until(lambda: all(p.marked for p in pending.get("devs", {}).values()), 10, "the marker")
            await _cut_subscriptions(admin)
            await async_wait_until(lambda: not gateway.router.live, 10, "the pub/sub link to drop")
        lost = await owner.send("#devs", "stored after the join, while the link was down")
        await admin.execute_command("ACL", "SETUSER", "default", "+subscribe")  # the catch-up starts
        await async_wait_until(lambda: gateway.router.live and not gateway.recovery.running, 10, "the catch-up")
        answer.set()
        await joining
        gateway.groups.join = join  # type: ignore[method-assign]
        after = await owner.send("#devs", "stored once the join had answered")
        first = (await _messages(member, 1))[0]
        assert first.id == lost.id, f"got {first.id} first; {lost.id} was stored after the join"
        assert (await _messages(member, 1))[0].id == after.id
