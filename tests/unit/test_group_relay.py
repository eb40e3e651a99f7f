"""GroupRelay's ordering rules, frame by frame: every interleaving of Redis's answer, the join marker,
removals and messages that a real cluster can produce, replayed deterministically.

The router is replaced by a recorder that hands the relay the frames a Redis channel would carry,
in the order the test chooses (the relay is the thing under test; Redis ordering is the premise)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from common import keys
from gateway.group_relay import GroupRelay
from gateway.groups import GroupState
from gateway.session import Session
from protocol import control
from protocol.errors import Forbidden
from tests.helpers import async_wait_until


class FakeRouter:
    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[bytes], None]] = {}

    async def subscribe(self, channel: str, handler: Callable[[bytes], None]) -> None:
        self.handlers[channel] = handler

    async def unsubscribe(self, channel: str) -> None:
        self.handlers.pop(channel, None)


class Recorder(Session):
    __slots__ = ("written",)

    def push(self, frame: bytes) -> None:
        self.written.append(frame)


def session(name: str) -> Recorder:
    s = Recorder(None, name, name, "t", "h", 1 << 20, lambda _: None)  # type: ignore[arg-type]
    s.written = []
    s.holding = False
    return s


def msg(n: int) -> bytes:
    return b'{"type":"message","id":"%d-0","from":"alice","to":"#G","body":"m%d","ts":%d}' % (n, n, n)


def event(what: str, user: str) -> bytes:
    return b'{"type":"group_event","group":"G","event":"%s","user":"%s"}' % (what.encode(), user.encode())


def mark(nonce: str) -> bytes:
    return b'{"type":"_mark","n":"' + nonce.encode() + b'"}'


CHANNEL = keys.group_channel("g")


def relay() -> tuple[GroupRelay, FakeRouter, list[asyncio.Task[Any]]]:
    router = FakeRouter()
    tasks: list[asyncio.Task[Any]] = []

    def spawn(coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        tasks.append(task)
        return task

    return GroupRelay(router, None, spawn), router, tasks  # type: ignore[arg-type]


async def start_join(
    r: GroupRelay, router: FakeRouter, s: Session
) -> tuple[asyncio.Future[tuple[GroupState, bool]], list[str], asyncio.Future[GroupState]]:
    """Start ``s`` joining group "g" and wait until it has reached Redis's decision: subscribed, and
    (pretend) the script is running.  Returns the future to answer for Redis, the nonce the join's
    marker carries (once asked), and the join itself."""
    answer: asyncio.Future[tuple[GroupState, bool]] = asyncio.get_running_loop().create_future()
    nonces: list[str] = []

    async def decide(nonce: str) -> tuple[GroupState, bool]:
        nonces.append(nonce)
        return await answer

    joining = asyncio.ensure_future(r.join(s, "g", decide))
    await async_wait_until(lambda: CHANNEL in router.handlers and nonces, 5, "the join to ask Redis", interval=0)
    return answer, nonces, joining


async def bob_past_his_marker() -> tuple[GroupRelay, Recorder, asyncio.Future[tuple[GroupState, bool]],
                                         asyncio.Future[GroupState], Callable[[bytes], None]]:
    """bob joining "g" with his join's marker delivered, Redis's answer still to come: the relay, bob,
    the future to answer for Redis, the join, and the group channel's handler."""
    r, router, _ = relay()
    bob = session("bob")
    answer, nonces, joining = await start_join(r, router, bob)
    deliver = router.handlers[CHANNEL]
    deliver(mark(nonces[0]))
    return r, bob, answer, joining, deliver


async def redis_says_yes(answer: asyncio.Future[tuple[GroupState, bool]], joining: asyncio.Future[GroupState]) -> None:
    """Redis admits the join at position 2-0 (an open group of alice's); the join completes."""
    answer.set_result((GroupState("g", "G", "alice", False, [], "2-0"), True))
    await joining


@pytest.mark.parametrize("answer_first", [True, False])
async def test_only_frames_after_the_marker_and_after_the_position_are_delivered(answer_first: bool) -> None:
    r, router, _ = relay()
    member, joiner = session("alice"), session("bob")
    await r.open(member, "g", None)
    r.admit(member, "g", "G", "1-0", now=True)
    answer, nonces, joining = await start_join(r, router, joiner)
    deliver = router.handlers[CHANNEL]
    deliver(msg(2))  # before the membership: never the joiner's
    deliver(event("left", "carol"))
    if answer_first:
        answer.set_result((GroupState("g", "G", "alice", True, [], "2-0"), True))
        await joining
        assert joiner.written == []  # Redis said yes, but the marker is not in yet
    deliver(mark(nonces[0]))
    deliver(event("joined", "bob"))
    deliver(msg(3))
    if not answer_first:
        assert joiner.written == []  # the marker is in, but not Redis's answer
        answer.set_result((GroupState("g", "G", "alice", True, [], "2-0"), True))
        await joining
    deliver(msg(4))
    assert joiner.written == [event("joined", "bob"), msg(3), msg(4)]
    assert member.written == [msg(2), event("left", "carol"), event("joined", "bob"), msg(3), msg(4)]


async def test_a_refused_join_delivers_nothing_and_unsubscribes() -> None:
    r, router, tasks = relay()
    intruder = session("mallory")
    answer, _, joining = await start_join(r, router, intruder)
    for n in range(5):
        router.handlers[CHANNEL](msg(n + 1))
    answer.set_exception(Forbidden("invite-only"))
    with pytest.raises(Forbidden):
        await joining
    await asyncio.gather(*tasks)
    assert intruder.written == [] and "g" not in intruder.groups and CHANNEL not in router.handlers


async def test_messages_at_or_before_the_position_are_dropped_even_after_the_marker() -> None:
    r, router, _ = relay()
    joiner = session("bob")
    answer, nonces, joining = await start_join(r, router, joiner)
    router.handlers[CHANNEL](mark(nonces[0]))
    router.handlers[CHANNEL](msg(5))  # id not above the position: not the joiner's
    answer.set_result((GroupState("g", "G", "alice", False, [], "5-0"), True))
    await joining
    router.handlers[CHANNEL](msg(6))
    assert joiner.written == [msg(6)]


async def test_a_part_stops_delivery_at_once_and_a_stale_part_does_not_cancel_a_newer_join() -> None:
    r, router, _ = relay()
    bob = session("bob")
    sessions = {"bob": bob}
    await r.open(bob, "g", None)
    r.admit(bob, "g", "G", "1-0", now=True)
    router.handlers[CHANNEL](msg(2))
    r.part("bob", "g", sessions)  # removed: synchronous
    router.handlers[CHANNEL](msg(3))
    assert bob.written == [msg(2)] and "g" not in bob.groups

    answer, nonces, joining = await start_join(r, router, bob)
    r.part("bob", "g", sessions)  # the part of the old membership, late: before this join's marker
    router.handlers[CHANNEL](mark(nonces[0]))
    answer.set_result((GroupState("g", "G", "alice", False, [], "3-0"), True))
    await joining
    router.handlers[CHANNEL](msg(4))
    assert bob.written == [msg(2), msg(4)]


async def test_a_removal_right_after_the_join_cancels_it_before_anything_is_delivered() -> None:
    r, bob, answer, joining, deliver = await bob_past_his_marker()
    deliver(msg(3))
    deliver(event("removed", "bob"))
    r.part("bob", "g", {"bob": bob})
    deliver(msg(4))
    await redis_says_yes(answer, joining)
    deliver(msg(5))
    assert msg(4) not in bob.written and msg(5) not in bob.written and "g" not in bob.groups


def part_notice(user: str, since: str = "", upto: str = "") -> bytes:
    """The hidden notice a removal publishes on the group's channel right after its ``removed`` event."""
    return control.encode(control.Part(group="g", user=user, since=since, upto=upto))


async def test_a_removal_on_the_groups_channel_stops_delivery_on_any_gateway() -> None:
    """Issue 15: a removal reaches the removed member's gateway on the group's own channel (its
    ``removed`` event, then the hidden ``part`` notice, from one script), not on a control channel.
    The removed member sees the event; nobody sees the notice; the others keep receiving."""
    r, router, _ = relay()
    bob, alice = session("bob"), session("alice")
    for s in (bob, alice):
        await r.open(s, "g", None)
        r.admit(s, "g", "G", "1-0", now=True)
    router.handlers[CHANNEL](event("removed", "bob"))
    router.handlers[CHANNEL](part_notice("bob", "1-0", "1-0"))
    router.handlers[CHANNEL](msg(2))
    assert bob.written == [event("removed", "bob")] and "g" not in bob.groups
    assert alice.written == [event("removed", "bob"), msg(2)]


async def test_a_removal_notice_on_the_channel_cancels_a_join_that_has_not_taken_effect() -> None:
    _, bob, answer, joining, deliver = await bob_past_his_marker()
    deliver(msg(3))
    deliver(event("removed", "bob"))
    deliver(part_notice("bob", "2-0", "3-0"))
    deliver(msg(4))
    await redis_says_yes(answer, joining)
    deliver(msg(5))
    assert bob.written == [] and "g" not in bob.groups


async def test_another_users_removal_notice_parked_during_a_join_is_never_written() -> None:
    _, bob, answer, joining, deliver = await bob_past_his_marker()
    deliver(event("removed", "carol"))
    deliver(part_notice("carol", "1-0", "2-0"))
    deliver(msg(3))
    await redis_says_yes(answer, joining)
    assert bob.written == [event("removed", "carol"), msg(3)]


async def test_leave_stops_delivery_before_redis_answers() -> None:
    r, router, _ = relay()
    bob = session("bob")
    await r.open(bob, "g", None)
    r.admit(bob, "g", "G", "1-0", now=True)
    answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    asked: list[bool] = []

    def decide() -> asyncio.Future[bool]:
        asked.append(True)
        return answer

    leaving = asyncio.ensure_future(r.leave(bob, "g", decide))
    await async_wait_until(lambda: asked, 5, "the leave to ask Redis", interval=0)
    router.handlers[CHANNEL](msg(2))  # published after the leave, arriving before its answer
    answer.set_result(False)
    await leaving
    assert bob.written == []


def test_an_invitation_on_the_users_channel_is_written_not_taken_for_a_dm() -> None:
    """Issue 15: an invitation reaches a non-member through their own channel (the DM channel), from
    the invitee's slot.  It is written as it comes (held while the session is), and a DM after it is
    still id-checked as before."""
    bob = session("bob")
    invited = event("invited", "bob")
    dm = b'{"type":"message","id":"5-0","from":"alice","to":"@bob","body":"hi","ts":5}'
    bob.holding = True
    bob.deliver_dm(invited)
    assert bob.written == []
    bob.go_live()
    bob.deliver_dm(dm)
    bob.deliver_dm(dm)  # a duplicate: dropped by id
    assert bob.written == [invited, dm] and bob.last_dm == (5, 0)
