"""client/gui_model.py: what a conversation holds while lines are being sent (pure, no Tk)."""

from __future__ import annotations

from client.gui_model import Conversation, dm_key, group_key
from protocol import frames as f


def test_a_sent_line_is_pending_until_its_ack_then_the_stored_message() -> None:
    conv = Conversation("Devs", "#Devs")
    line = conv.start_sending("standup in 5")
    assert list(conv.pending.values()) == [line] and line.error is None
    echo = f.Message(id="5-0", from_="alice", to="#Devs", body="standup in 5", ts=5)
    assert conv.add(echo)  # a group echoes the sender's own message, maybe before the ack
    conv.sent(line.token, f.Message(id="5-0", from_="alice", to="#Devs", body="standup in 5", ts=5))
    assert conv.pending == {} and list(conv.messages) == ["5-0"]  # once, not twice


def test_a_failed_line_stays_with_its_reason() -> None:
    conv = Conversation("bob", "@bob")
    first, second = conv.start_sending("one"), conv.start_sending("two")
    conv.failed(second.token, "disconnected")
    assert conv.pending[second.token].error == "disconnected" and conv.pending[first.token].error is None
    assert first.token < second.token  # drawn in the order typed


def test_lines_interleave_notes_by_time_and_keys_ignore_case() -> None:
    conv = Conversation("Devs", "#Devs")
    conv.add(f.Message(id="2-0", from_="bob", to="#Devs", body="b", ts=2))
    conv.add(f.Message(id="1-0", from_="alice", to="#Devs", body="a", ts=1))
    conv.notes.append((1, "bob joined"))
    assert [x if isinstance(x, str) else x.body for x in conv.lines()] == ["a", "bob joined", "b"]
    assert group_key("#DEVS") == group_key("devs") == "#devs"
    assert dm_key("@Bob") == dm_key("bob") == "@bob"
