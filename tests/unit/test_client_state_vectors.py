"""The shared test vectors (tests/vectors/client_state.json) against the Python client core.

The same file drives the web client's core (gateway/web/core.js) in
tests/web/core.test.mjs, run by tests/unit/test_web_core.py: both cores must
decide every step alike (positions, dedupe, replies by ref, presence, groups).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from protocol import client_state as cs
from protocol import frames as f
from protocol.names import name_key

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "client_state.json").read_text())
OUTCOMES = {"IGNORE": cs.IGNORE, "EVENT": cs.EVENT, "REPLY": cs.REPLY, "WELCOMED": cs.WELCOMED,
            "LOGIN_FAILED": cs.LOGIN_FAILED, "UPLOAD": cs.UPLOAD}


def run_step(core: cs.ClientState[None], step: dict[str, Any]) -> None:
    op = step["op"]
    if op == "login":
        login = core.login("me", "pw", f.PRESENCE_BATCHED)
        assert {"session": login.session, "resume": login.resume} == step["expect"]
    elif op == "receive":
        frame = f.parse_server_frame(json.dumps(step["frame"]))
        assert core.receive(frame) == OUTCOMES[step["expect"]], step["frame"]
    elif op == "request":
        core.request(msgspec.convert(step["frame"], f.ClientFrame), None)
    elif op == "finished":
        core.finished(step["ref"])
    elif op == "watch_upload":
        core.watch_upload(step["upload"], lambda _reply: None)
    elif op == "check":
        check(core, step)
    else:
        raise AssertionError(f"unknown step {op!r}")


def check(core: cs.ClientState[None], want: dict[str, Any]) -> None:
    if "positions" in want:
        assert core.positions == want["positions"]
    if "duplicates" in want:
        assert core.duplicates == want["duplicates"]
    if "online" in want:
        assert sorted(core.online) == want["online"]
    if "online_total" in want:
        assert core.online_total == want["online_total"]
    if "groups" in want:
        assert sorted(core.groups) == [name_key(g) for g in want["groups"]]
    if "session" in want:
        assert core.session == want["session"]
    if "resend" in want:
        assert [json.loads(data)["ref"] for data in core.resend()] == want["resend"]


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["name"] for c in VECTORS["cases"]])
def test_vector(case: dict[str, Any]) -> None:
    core: cs.ClientState[None] = cs.ClientState("vec")
    for step in case["steps"]:
        run_step(core, step)
