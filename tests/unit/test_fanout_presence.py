"""Presence batches: a session that logs in mid-window never gets an older status than it was held."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from common.metrics import Counter
from gateway import fanout as fanout_module
from gateway.fanout import Fanout
from gateway.session import Session
from protocol import frames as f


@dataclass(eq=False)
class _Session:
    """What Fanout reads of a session: its socket, its presence mode, and where held frames go."""

    ws: object = field(default_factory=object)
    presence: str = f.PRESENCE_BATCHED
    held: list[bytes] = field(default_factory=list)

    def hold(self, frame: bytes) -> None:
        self.held.append(frame)


def _presence(user: str, status: str) -> bytes:
    return f.encode(f.Presence(user=user, status=status))


async def test_a_status_pending_when_the_last_batched_session_left_is_not_flushed_to_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Soak seed 7000: a reaper's ``offline u5`` reached the gateway while u5's old (batched) socket was still
    there, so it waited for the window's batch; that socket then closed, and u5 logged in again on the same
    gateway.  The login's own ``online u5`` came while no batched socket was live, so it was held for the
    login only, not recorded in the batch, and the batch flushed after the login carried the stale
    ``offline u5``: u5 saw itself offline for good."""
    written: list[tuple[object, bytes]] = []
    monkeypatch.setattr(fanout_module, "write_text", lambda conns, frame: written.extend((ws, frame) for ws in conns))
    joining: list[_Session] = []
    fanout = Fanout(0.25, lambda: cast(list[Session], joining), Counter("out", "", ("kind",)))
    try:
        old = _Session()
        fanout.add(cast(Session, old))
        fanout.on_presence(_presence("u5", "offline"))  # published before the new login: pending in the window
        fanout.drop(cast(Any, old.ws))  # the old socket closes

        new = _Session()
        joining.append(new)  # logging in: its claim publishes online u5, held for it
        fanout.on_presence(_presence("u5", "online"))
        assert new.held == [_presence("u5", "online")]
        joining.remove(new)
        fanout.add(cast(Session, new))  # live: the held frames were written after its welcome
        fanout.flush()

        # It has everything already (welcome, then online u5): no batch at all, and above all no offline u5.
        assert [frame for ws, frame in written if ws is new.ws] == []
    finally:
        fanout.close()


async def test_a_batch_still_carries_the_latest_status_while_batched_sessions_stay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While someone is batched, every event is recorded: a session that goes live mid-window gets the
    latest status of each user in the batch (here the newer ``online`` over the older ``offline``)."""
    written: list[tuple[object, bytes]] = []
    monkeypatch.setattr(fanout_module, "write_text", lambda conns, frame: written.extend((ws, frame) for ws in conns))
    joining: list[_Session] = []
    fanout = Fanout(0.25, lambda: cast(list[Session], joining), Counter("out", "", ("kind",)))
    try:
        stays, new = _Session(), _Session()
        fanout.add(cast(Session, stays))
        fanout.on_presence(_presence("u5", "offline"))
        joining.append(new)
        fanout.on_presence(_presence("u5", "online"))
        joining.remove(new)
        fanout.add(cast(Session, new))
        fanout.flush()
        assert [frame for ws, frame in written if ws is new.ws] == [
            f.encode(f.PresenceBatch(online=["u5"], offline=[]))]
    finally:
        fanout.close()
