"""Which half an old DM goes to (chinwag/migrate_dm.py): by ``to``, else by ``from``; never a guess."""

from __future__ import annotations

import pytest

from chinwag.migrate_dm import MigrationError, recipient_of
from protocol import frames as f


def frame(sender: str, to: str) -> bytes:
    return f.encode(f.Message(id="1-1", from_=sender, to=to, body="x", ts=1))


def test_the_recipient_is_the_to_field_case_folded() -> None:
    assert recipient_of(frame("alice", "@Bob"), "alice", "bob", "s") == "bob"
    assert recipient_of(frame("Bob", "@ALICE"), "alice", "bob", "s") == "alice"


def test_a_to_outside_the_pair_falls_back_to_the_sender() -> None:
    # A recipient renamed since (display name changed): the sender still tells the direction.
    assert recipient_of(frame("alice", "@someone-else"), "alice", "bob", "s") == "bob"


def test_a_note_to_self_has_one_half() -> None:
    assert recipient_of(b"not even json", "alice", "alice", "s") == "alice"


def test_an_entry_of_neither_is_an_error_not_a_guess() -> None:
    with pytest.raises(MigrationError, match="neither"):
        recipient_of(frame("mallory", "@eve"), "alice", "bob", "cw:s:dm:alice|bob")
    with pytest.raises(MigrationError, match="not a message"):
        recipient_of(b"[1, 2]", "alice", "bob", "cw:s:dm:alice|bob")
