"""The client's sans-I/O core (protocol/client_state.py), driven synchronously: no sockets, no loop."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from protocol import client_state as cs
from protocol import frames as f
from protocol.errors import CloseCode
from protocol.names import id_tuple


def state() -> cs.ClientState[str]:
    return cs.ClientState("abcd")


def msg(mid: str, to: str = "@me", sender: str = "bob") -> f.Message:
    return f.Message(id=mid, from_=sender, to=to, body="x", ts=int(mid.split("-")[0]))


def welcome(online: list[str] | None = None, positions: dict[str, str] | None = None, **extra: Any) -> f.Welcome:
    return f.Welcome(user="me", online=online or [], v=1, session="tok", positions=positions or {}, **extra)


def logged_in(**kwargs: Any) -> cs.ClientState[str]:
    core = state()
    core.login("me", "pw", f.PRESENCE_BATCHED)
    assert core.receive(welcome(**kwargs)) == cs.WELCOMED
    return core


def decode_login(frame: f.Login) -> dict[str, object]:
    result: dict[str, object] = msgspec.json.decode(f.encode(frame))
    return result


# -- positions and dedupe ---------------------------------------------------------


def test_positions_advance_only_in_order_per_stream() -> None:
    core = logged_in(positions={"dm": "0-0", "*": "0-0"})
    assert core.receive(msg("5-0")) == cs.EVENT
    assert core.receive(msg("5-1", to="*")) == cs.EVENT
    assert core.receive(msg("3-0", to="#Devs")) == cs.EVENT  # a stream of its own
    assert core.receive(msg("4-9")) == cs.IGNORE  # older than the dm stream's position
    assert core.receive(msg("5-0")) == cs.IGNORE  # the same id again
    assert core.receive(msg("5-1", to="*")) == cs.IGNORE
    assert core.receive(msg("6-0", to="@someone-else")) == cs.EVENT  # any "@..." is our inbox
    assert core.positions == {"dm": "6-0", "*": "5-1", "#Devs": "3-0"}
    assert core.duplicates == 3


def test_ids_compare_as_numbers_not_text() -> None:
    core = logged_in()
    assert core.receive(msg("9-0")) == cs.EVENT
    assert core.receive(msg("10-0")) == cs.EVENT  # "10-0" < "9-0" as text
    assert core.receive(msg("10-10")) == cs.EVENT
    assert core.receive(msg("10-9")) == cs.IGNORE
    assert core.positions["dm"] == "10-10"


ids = st.tuples(st.integers(0, 50), st.integers(0, 3)).map(lambda t: f"{t[0]}-{t[1]}")


@given(st.lists(st.tuples(st.sampled_from(["@me", "*", "#g"]), ids), max_size=60))
def test_every_stream_hands_on_a_strictly_increasing_sequence(arrivals: list[tuple[str, str]]) -> None:
    core = logged_in()
    passed: dict[str, list[str]] = {}
    for to, mid in arrivals:
        if core.receive(msg(mid, to=to)) == cs.EVENT:
            passed.setdefault(to, []).append(mid)
    for to, handed in passed.items():
        keys = [id_tuple(m) for m in handed]
        assert keys == sorted(set(keys))  # strictly increasing: nothing twice, nothing older
        arrived = [id_tuple(m) for t, m in arrivals if t == to]
        assert keys[-1] == max(arrived)  # the position ends at the newest id that arrived
        stream = "dm" if to == "@me" else to
        assert core.positions[stream] == handed[-1]
    assert core.duplicates == len(arrivals) - sum(len(v) for v in passed.values())


def test_resume_is_built_from_positions_and_the_replay_overlap_is_dropped() -> None:
    core = logged_in(positions={"dm": "0-0", "*": "0-0"})
    for mid in ("1-0", "2-0", "3-0"):
        core.receive(msg(mid))
    core.receive(msg("2-5", to="*"))
    login = core.login("me", "pw", f.PRESENCE_BATCHED)  # a reconnect
    sent = decode_login(login)
    assert sent["resume"] == {"dm": "3-0", "*": "2-5"}
    assert sent["session"] == "tok"
    # The server answers from our resume point, but a message can arrive twice (live before the drop,
    # replayed after it): only the new ones pass.
    assert core.receive(welcome(positions={"dm": "3-0", "*": "2-5"}, recovered={"dm": True, "*": True})) == cs.WELCOMED
    before = core.duplicates
    assert [core.receive(msg(m)) for m in ("2-0", "3-0", "4-0")] == [cs.IGNORE, cs.IGNORE, cs.EVENT]
    assert core.duplicates == before + 2


def test_first_login_sends_no_resume() -> None:
    sent = decode_login(state().login("me", "pw", f.PRESENCE_OFF))
    assert "resume" not in sent and "session" not in sent and sent["presence"] == "off"


def test_welcome_positions_merge_forward_only() -> None:
    core = logged_in(positions={"dm": "5-0", "*": "7-0"})
    core.receive(msg("9-0"))  # dm is at 9-0 now
    core.login("me", "pw", f.PRESENCE_BATCHED)
    core.receive(welcome(positions={"dm": "6-0", "*": "8-0", "#Ops": "1-0"}))
    assert core.positions == {"dm": "9-0", "*": "8-0", "#Ops": "1-0"}  # never backwards


# -- requests by ref ------------------------------------------------------------------


def test_replies_are_matched_to_requests_by_ref() -> None:
    core = logged_in()
    ref = core.next_ref()
    data = core.request(f.Send(to="@bob", body="hi", ref=ref), "waiter-1")
    assert msgspec.json.decode(data)["ref"] == ref
    assert core.receive(f.Ack(id="1-0", ts=1, ref="somebody-else")) == cs.IGNORE
    assert core.receive(f.Ack(id="1-0", ts=1, ref=ref)) == cs.REPLY
    assert core.pending[ref].waiter == "waiter-1"
    core.finished(ref)
    assert core.receive(f.Ack(id="1-0", ts=1, ref=ref)) == cs.IGNORE  # late: answered already
    assert core.receive(f.Ack(id="1-0", ts=1)) == cs.IGNORE  # no ref: nobody can wait for it


def test_error_frames_answer_their_request_the_login_or_nobody() -> None:
    core = state()
    core.login("me", "pw", f.PRESENCE_BATCHED)
    assert core.receive(f.Error(code="bad_password", message="no")) == cs.LOGIN_FAILED
    assert not core.awaiting_welcome
    assert core.receive(welcome()) == cs.IGNORE  # nobody is logging in any more
    core.login("me", "pw", f.PRESENCE_BATCHED)
    core.receive(welcome())
    ref = core.next_ref()
    core.request(f.Who(ref=ref), "w")
    assert core.receive(f.Error(code="rate_limited", message="slow", ref=ref)) == cs.REPLY
    assert core.receive(f.Error(code="invalid_frame", message="pushed")) == cs.EVENT


def test_unanswered_requests_are_resent_after_a_reconnect_with_their_ref() -> None:
    core = logged_in()
    refs = [core.next_ref() for _ in range(3)]
    frames = [core.request(f.Send(to="@bob", body=str(i), ref=r), r) for i, r in enumerate(refs)]
    core.receive(f.Ack(id="1-0", ts=1, ref=refs[1]))
    core.finished(refs[1])  # answered
    core.finished(refs[2])  # given up (timed out)
    assert core.resend() == [frames[0]]
    assert len(set(refs)) == 3 and all(r.startswith("abcd-") for r in refs)


@given(st.lists(st.tuples(st.sampled_from(["send", "ack", "give_up", "reconnect"]), st.integers(0, 9)),
                max_size=40))
def test_resend_is_every_request_neither_answered_nor_given_up_in_order(steps: list[tuple[str, int]]) -> None:
    core = logged_in()
    sent: dict[str, bytes] = {}  # what the model expects pending, in the order sent
    refs: list[str] = []
    for op, n in steps:
        if op == "send":
            ref = core.next_ref()
            refs.append(ref)
            sent[ref] = core.request(f.Send(to="@bob", body=str(n), ref=ref), ref)
        elif op in ("ack", "give_up") and refs:
            ref = refs[n % len(refs)]
            if op == "ack":  # the adapter resolves the waiter on REPLY, then the request is finished
                assert core.receive(f.Ack(id=f"{n + 1}-0", ts=1, ref=ref)) == (cs.REPLY if ref in sent else cs.IGNORE)
            core.finished(ref)
            sent.pop(ref, None)
        elif op == "reconnect":
            core.login("me", "pw", f.PRESENCE_BATCHED)
            assert core.receive(welcome()) == cs.WELCOMED
            assert core.resend() == list(sent.values())
    assert core.resend() == list(sent.values())


def test_an_abandoned_login_ignores_a_late_welcome() -> None:
    core = state()
    core.login("me", "pw", f.PRESENCE_BATCHED)
    core.login_abandoned()
    assert core.receive(welcome(online=["x"])) == cs.IGNORE
    assert core.session is None and core.online == set()


def test_upload_replies_are_routed_by_upload_id() -> None:
    core = logged_in()
    unhook = core.watch_upload("u1", lambda frame: None)
    assert core.receive(f.ChunkAck(upload="u1", offset=10)) == cs.UPLOAD
    assert core.receive(f.ChunkAck(upload="u2", offset=10)) == cs.IGNORE
    assert core.receive(f.Error(code="not_found", message="no upload", upload="u1")) == cs.UPLOAD
    unhook()
    assert core.receive(f.ChunkAck(upload="u1", offset=10)) == cs.IGNORE


def test_reconnect_only_after_closes_that_are_not_final() -> None:
    assert cs.reconnects_after(None) and cs.reconnects_after(1006) and cs.reconnects_after(CloseCode.GOING_AWAY)
    assert not any(cs.reconnects_after(c) for c in (CloseCode.NORMAL, CloseCode.LOGIN_FAILED, CloseCode.TAKEN_OVER))


# -- who is online ------------------------------------------------------------------


def test_welcome_and_presence_merge_into_the_online_set() -> None:
    core = logged_in(online=["alice", "me"])
    assert core.online_total is None
    assert core.receive(f.Presence(user="bob", status="online")) == cs.EVENT
    assert core.receive(f.Presence(user="alice", status="offline")) == cs.EVENT
    assert core.receive(f.Presence(user="alice", status="offline")) == cs.EVENT  # duplicates are harmless
    assert core.online == {"me", "bob"}
    assert core.receive(f.PresenceBatch(online=["carol", "dave"], offline=["bob"])) == cs.EVENT
    assert core.online == {"me", "carol", "dave"}


def test_a_capped_welcome_keeps_its_total_and_grows_by_presence() -> None:
    core = logged_in(online=["Alice", "bob"], online_total=5, online_next="bob")
    assert core.online == {"Alice", "bob"} and core.online_total == 5
    core.receive(f.Presence(user="zed", status="online"))
    assert core.online == {"Alice", "bob", "zed"} and core.online_total == 5


def test_an_unsolicited_online_replaces_the_set_but_a_reply_does_not() -> None:
    core = logged_in(online=["a", "b"])
    ref = core.next_ref()
    core.request(f.Who(ref=ref), "w")
    assert core.receive(f.Online(users=["x"], total=9, next="x", ref=ref)) == cs.REPLY
    assert core.online == {"a", "b"} and core.online_total is None
    assert core.receive(f.Online(users=["c"], total=3, next="c")) == cs.EVENT
    assert core.online == {"c"} and core.online_total == 3
    core.login("me", "pw", f.PRESENCE_BATCHED)
    core.receive(welcome(online=["c", "d"]))  # a new welcome: everyone again
    assert core.online == {"c", "d"} and core.online_total is None


# -- groups -----------------------------------------------------------------------------


def test_group_membership_as_the_client_sees_it() -> None:
    core = logged_in(positions={"dm": "0-0", "*": "0-0", "#Devs": "4-0"})
    assert core.groups == {"devs"}
    ref = core.next_ref()
    core.request(f.Group(op="join", group="ops", ref=ref), "g")
    info = f.GroupInfo(op="join", group="Ops", owner="al", invite_only=False, members=["al", "me"],
                       position="7-0", ref=ref)
    assert core.receive(info) == cs.REPLY
    assert core.groups == {"devs", "ops"}
    assert core.positions["#Ops"] == "7-0"  # a reconnect resumes it from the join
    assert core.receive(f.GroupEvent(group="Devs", event="removed", user="ME", by="al")) == cs.EVENT
    assert core.receive(f.GroupEvent(group="Ops", event="left", user="al")) == cs.EVENT  # not about us
    assert core.groups == {"ops"}
    ref = core.next_ref()
    core.request(f.Group(op="leave", group="ops", ref=ref), "g")
    core.receive(f.GroupInfo(op="leave", group="Ops", owner="al", invite_only=False, members=["al"], ref=ref))
    assert core.groups == set()


def test_a_join_reply_never_moves_a_position_back() -> None:
    core = logged_in(positions={"#Ops": "9-0"})
    ref = core.next_ref()
    core.request(f.Group(op="join", group="ops", ref=ref), "g")
    core.receive(f.GroupInfo(op="join", group="Ops", owner="al", invite_only=False, members=[], position="7-0",
                             ref=ref))
    assert core.positions["#Ops"] == "9-0"


def test_unknown_frame_types_are_handed_on_as_dicts() -> None:
    core = logged_in()
    assert core.receive({"type": "future_thing", "x": 1}) == cs.EVENT
    assert core.receive(f.Pong()) == cs.IGNORE


def test_only_a_complete_online_list_tells_who_is_offline() -> None:
    assert cs.known_offline("Carol", {"alice", "bob"}, None)
    assert not cs.known_offline("BOB", {"alice", "bob"}, None)  # names compare case-insensitively
    assert not cs.known_offline("carol", {"alice", "bob"}, 5000)  # capped: carol may be on a later page
