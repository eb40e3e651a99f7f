"""Bad frames against one real gateway: each gets its documented error and the sender chats on.

Acceptance point: "A table-driven test of at least 20 kinds of bad frames: each
gets the documented error, and the sender can still chat afterwards."  Every
case logs in a fresh sender and receiver on the same gateway (one redis-server
and one gateway process for the whole module), sends the bad frame raw, checks
the exact ``code`` and echoed ``ref`` of the error frame, then proves the
connection survived by sending a DM that the receiver gets.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from client import ChatClient
from client.chat import Closed
from protocol import frames as f
from protocol.errors import InvalidUsername, NotLoggedIn, UnsupportedVersion, UsernameTaken
from tests.helpers import Clients, Proc, Processes, RedisServer, async_wait_until, wait_for_event

HARD_CAP = 1024 * 1024  # Settings.hard_frame_bytes with the default 64 KiB frame limit
_names = itertools.count(1)


# -- one redis-server and one gateway for the whole module -------------------------------


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    base: Path = tmp_path_factory.mktemp("bad_frames")
    redis = RedisServer(base / "redis", appendonly=False)
    redis.start()
    procs = Processes(base)
    try:
        yield procs.gateway(redis.url)
    finally:
        procs.stop_all()
        redis.stop()


@pytest.fixture(autouse=True)
def _gateway_log_on_failure(gateway: Proc, request: pytest.FixtureRequest) -> Iterator[None]:
    start = len(gateway.log())
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"===== gateway log during {request.node.name}\n{gateway.log()[start:][-6000:]}")


def _new_log(gateway: Proc, start: int) -> str:
    return gateway.log()[start:]


# -- helpers ----------------------------------------------------------------------------


def _is_message(body: str):
    return lambda e: isinstance(e, f.Message) and e.body == body


def _is_error_or_closed(e: object) -> bool:
    return isinstance(e, f.Error | Closed)


async def _pair(clients: Clients, url: str) -> tuple[ChatClient, ChatClient]:
    n = next(_names)
    return await clients.login(url, f"snd{n}"), await clients.login(url, f"rcv{n}")


async def _drain(client: ChatClient) -> list[object]:
    """Events already queued (no waiting beyond a loop turn)."""
    out: list[object] = []
    while True:
        try:
            out.append(await client.next_event(timeout=0.01))
        except TimeoutError:
            return out


async def _assert_still_chats(sender: ChatClient, receiver: ChatClient) -> None:
    """The sender's connection survived: a DM is acked and the receiver gets exactly it."""
    assert sender.connected, f"sender's connection closed: {sender.closed}"
    body = f"still here {next(_names)}"
    ack = await sender.send(f"@{receiver.user}", body)
    got = await wait_for_event(receiver, _is_message(body))
    assert isinstance(got, f.Message)
    assert (got.id, got.from_, got.to, got.ts) == (ack.id, sender.user, f"@{receiver.user}", ack.ts)
    leftover = [e for e in await _drain(sender) if _is_error_or_closed(e)]
    assert leftover == [], f"unexpected extra events for the sender: {leftover}"


def _j(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _send(**extra: object) -> str:
    return _j({"type": "send", **extra})


# -- the table --------------------------------------------------------------------------

INVALID = "invalid_frame"


# (raw frame, expected error code, expected ref in the error frame)
CASES = [
    # not a JSON object at all
    pytest.param('{"type":"ping","ref":"x1"', INVALID, None, id="malformed-json"),
    pytest.param("", INVALID, None, id="empty-frame"),
    pytest.param('{"type":"ping","ref":"g1"} {}', INVALID, None, id="trailing-garbage"),
    pytest.param('[{"type":"ping","ref":"a1"}]', INVALID, None, id="json-array"),
    pytest.param('"ping"', INVALID, None, id="json-string"),
    pytest.param("42", INVALID, None, id="json-number"),
    pytest.param("null", INVALID, None, id="json-null"),
    # the type field
    pytest.param(_j({"ref": "m1", "to": "@x", "body": "hi"}), INVALID, "m1", id="missing-type"),
    pytest.param(_j({"type": ["send"], "ref": "t1"}), INVALID, "t1", id="type-not-a-string"),
    pytest.param(_j({"type": None, "ref": "t2"}), INVALID, "t2", id="type-null"),
    pytest.param(_j({"type": "shout", "ref": "u1"}), "unknown_type", "u1", id="unknown-type"),
    pytest.param(_j({"type": "SEND", "to": "*", "body": "x", "ref": "u2"}), "unknown_type", "u2", id="type-wrong-case"),
    # send: fields
    pytest.param(_send(body="hi", ref="s1"), INVALID, "s1", id="send-missing-to"),
    pytest.param(_send(to="*", ref="s2"), INVALID, "s2", id="send-missing-body"),
    pytest.param(_send(to="*", body="", ref="s3"), INVALID, "s3", id="send-empty-body"),
    pytest.param(_send(to="*", body=42, ref="s4"), INVALID, "s4", id="send-body-not-a-string"),
    pytest.param(_send(to="*", body=None, ref="s5"), INVALID, "s5", id="send-body-null"),
    pytest.param(_send(to=5, body="hi", ref="s6"), INVALID, "s6", id="send-to-not-a-string"),
    # sizes
    pytest.param(_send(to="*", body="x" * 8001, ref="big1"), "too_large", "big1", id="body-over-8000-chars"),
    pytest.param(_send(to="*", body="é" * 8001, ref="big2"), "too_large", "big2", id="body-over-limit-multibyte"),
    # Over 64 KiB the parser does not decode the frame at all, so no ref can be echoed.
    pytest.param(_send(to="*", body="x" * 70_000, ref="big3"), "too_large", None, id="frame-over-64KiB"),
    pytest.param(_send(to="*", body="x" * 1_000_000, ref="big4"), "too_large", None, id="frame-just-under-hard-cap"),
    # addresses
    pytest.param(_send(to="bob", body="hi", ref="a1"), INVALID, "a1", id="to-without-at"),
    pytest.param(_send(to="@", body="hi", ref="a2"), INVALID, "a2", id="to-bare-at"),
    pytest.param(_send(to="@bad name", body="hi", ref="a3"), INVALID, "a3", id="to-with-space"),
    pytest.param(_send(to="#bad group", body="hi", ref="a4"), INVALID, "a4", id="to-bad-group-name"),
    pytest.param(_send(to="#nosuchgroup", body="hi", ref="a5"), "not_found", "a5", id="to-missing-group"),
    pytest.param(_send(to="@" + "x" * 33, body="hi", ref="a5"), INVALID, "a5", id="to-name-too-long"),
    pytest.param(_send(to="@nobody_here", body="hi", ref="a6"), "unknown_user", "a6", id="to-unknown-user"),
    # fields the client may not set
    pytest.param(_send(to="*", body="hi", ref="f1", **{"from": "eve"}), INVALID, "f1", id="spoofed-from"),
    pytest.param(_send(to="*", body="hi", ref="f2", ts=1), INVALID, "f2", id="send-extra-field"),
    pytest.param(_j({"type": "ping", "ref": "f3", "extra": 1}), INVALID, "f3", id="ping-extra-field"),
    pytest.param(_j({"type": "who", "ref": "f4", "all": True}), INVALID, "f4", id="who-extra-field"),
    # ref itself unusable: never echoed
    pytest.param(_j({"type": "ping", "ref": "r" * 65}), INVALID, None, id="ref-too-long"),
    pytest.param(_j({"type": "ping", "ref": 7}), INVALID, None, id="ref-not-a-string"),
    # history
    pytest.param(_j({"type": "history", "conv": "*", "limit": 0, "ref": "h1"}), INVALID, "h1", id="history-limit-0"),
    pytest.param(_j({"type": "history", "conv": "*", "limit": 101, "ref": "h2"}), INVALID, "h2",
                 id="history-limit-101"),
    pytest.param(_j({"type": "history", "conv": "*", "limit": "5", "ref": "h3"}), INVALID, "h3",
                 id="history-limit-string"),
    pytest.param(_j({"type": "history", "conv": "*", "limit": True, "ref": "h4"}), INVALID, "h4",
                 id="history-limit-bool"),
    pytest.param(_j({"type": "history", "conv": "*", "before": "yesterday", "ref": "h5"}), INVALID, "h5",
                 id="history-bad-before"),
    pytest.param(_j({"type": "history", "conv": "bob", "ref": "h6"}), INVALID, "h6", id="history-bad-conv"),
    pytest.param(_j({"type": "history", "ref": "h7"}), INVALID, "h7", id="history-missing-conv"),
    # state
    pytest.param(_j({"type": "login", "v": 1, "user": "someone", "password": "pw", "ref": "l1"}),
                 "already_logged_in", "l1", id="second-login"),
    # binary frames are decoded as UTF-8 by the parser
    pytest.param(b'\xff\xfe{"type":"ping"}', INVALID, None, id="binary-invalid-utf8"),
    pytest.param(b'{"type":"ping","ref":"\xff"}', INVALID, None, id="binary-invalid-utf8-in-string"),
    # known gateway/protocol bugs: the documented answer is invalid_frame on a live connection
    pytest.param("[", INVALID, None, id="truncated-array"),
    pytest.param('{"type":"shout","ref":"z1"', INVALID, None, id="truncated-unknown-type"),
    pytest.param('{"type":"ping","ref":"z2","x":1', INVALID, None, id="truncated-after-unknown-field"),
    pytest.param("[" * 20_000 + "]" * 20_000, INVALID, None, id="deeply-nested-json"),
    pytest.param(_j({"type": "ping", "x": 1}).replace("1}", "[" * 5000 + "]" * 5000 + "}"), INVALID, None,
                 id="deeply-nested-unknown-field"),
    pytest.param('{"type":"ping","x":1e400}', INVALID, None, id="number-out-of-range"),
    pytest.param('{"type":"history","conv":"*","limit":-1e400}', INVALID, None, id="limit-out-of-range"),
    pytest.param(_j({"type": "history", "conv": "*", "before": "1-2\n", "ref": "i1"}), INVALID, "i1",
                 id="history-before-trailing-newline"),
    pytest.param(_j({"type": "history", "conv": "*", "before": "١٢-٣", "ref": "i2"}), INVALID, "i2",
                 id="history-before-arabic-indic-digits"),
]

GOOD_CASES = [c for c in CASES if not c.marks]


@pytest.mark.parametrize(("raw", "code", "ref"), CASES)
async def test_bad_frame_gets_its_error_and_sender_chats_on(
    gateway: Proc, clients: Clients, raw: str | bytes, code: str, ref: str | None
) -> None:
    log_start = len(gateway.log())
    sender, receiver = await _pair(clients, gateway.url)
    await sender.send_raw(raw)
    reply = await wait_for_event(sender, _is_error_or_closed)
    assert isinstance(reply, f.Error), f"expected an error frame, got {reply}"
    assert (reply.code, reply.ref) == (code, ref), reply
    assert reply.message and "Traceback" not in reply.message
    await _assert_still_chats(sender, receiver)
    assert "Traceback" not in _new_log(gateway, log_start)


async def test_every_bad_frame_in_a_row_on_one_connection(gateway: Proc, clients: Clients) -> None:
    """The whole table on one socket: one error per frame, in order, and the session lives on."""
    sender, receiver = await _pair(clients, gateway.url)
    expected = [(c.values[1], c.values[2]) for c in GOOD_CASES]
    for case in GOOD_CASES:
        await sender.send_raw(case.values[0])  # type: ignore[arg-type]
    got = []
    for _ in GOOD_CASES:
        reply = await wait_for_event(sender, _is_error_or_closed)
        assert isinstance(reply, f.Error), f"after {len(got)} errors: {reply}"
        got.append((reply.code, reply.ref))
    assert got == expected
    await _assert_still_chats(sender, receiver)
    assert await sender.who()


async def test_binary_frame_with_valid_json_is_handled_like_text(gateway: Proc, clients: Clients) -> None:
    """The parser takes bytes as UTF-8 JSON, so a binary frame is a normal frame (no error)."""
    sender, receiver = await _pair(clients, gateway.url)
    frame = _send(to=f"@{receiver.user}", body="sent as binary", ref="b1").encode()
    await sender.send_raw(frame)  # bytes -> a binary WebSocket frame
    got = await wait_for_event(receiver, _is_message("sent as binary"))
    assert isinstance(got, f.Message) and got.from_ == sender.user
    assert [e for e in await _drain(sender) if _is_error_or_closed(e)] == []
    # And a binary ping gets a (text) pong echoing its ref.
    async with connect(gateway.url) as ws:
        await _raw_login(ws, f"bin{next(_names)}")
        await ws.send(b'{"type":"ping","ref":"bp"}')
        assert await _recv_type(ws, "pong") == {"type": "pong", "ref": "bp"}
    await _assert_still_chats(sender, receiver)


# -- before login ------------------------------------------------------------------------


async def test_frames_before_login_get_not_logged_in_and_socket_stays_open(
    gateway: Proc, clients: Clients
) -> None:
    raw = await clients.raw(gateway.url)
    before_login = [
        (_j({"type": "ping", "ref": "p1"}), "not_logged_in"),
        (_j({"type": "who"}), "not_logged_in"),
        (_send(to="*", body="hi"), "not_logged_in"),
        (_j({"type": "history", "conv": "*"}), "not_logged_in"),
        (b'{"type":"ping"}', "not_logged_in"),  # binary too
        ("{not json", "invalid_frame"),  # a bad frame gets its own error, also before login
        (_j({"type": "shout"}), "unknown_type"),
        (_j({"type": "login", "v": 1, "user": "x"}), "invalid_frame"),  # no password: not a login refusal
        (_j({"type": "login", "v": 1, "user": "x", "password": ""}), "invalid_frame"),
        (_j({"type": "login", "v": 1, "user": "x", "password": "pw", "presence": "loud"}), "invalid_frame"),
    ]
    for frame, code in before_login:
        await raw.send_raw(frame)
        reply = await wait_for_event(raw, _is_error_or_closed)
        assert isinstance(reply, f.Error) and reply.code == code, (frame, reply)
    assert raw.connected
    user = f"late{next(_names)}"
    welcome = await raw.login(user, "pw")
    assert welcome.user == user
    receiver = await clients.login(gateway.url, f"rcv{next(_names)}")
    await _assert_still_chats(raw, receiver)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param("[", id="truncated"),
        pytest.param('{"type":"ping","x":1e400}', id="out-of-range"),
        pytest.param("[" * 20_000 + "]" * 20_000, id="deeply-nested"),
    ],
)
async def test_frames_crashing_the_parser_before_login(gateway: Proc, clients: Clients, frame: str) -> None:
    raw = await clients.raw(gateway.url)
    await raw.send_raw(frame)
    reply = await wait_for_event(raw, _is_error_or_closed)
    assert isinstance(reply, f.Error) and reply.code == "invalid_frame", reply
    assert raw.connected


async def test_not_logged_in_echoes_ref(gateway: Proc, clients: Clients) -> None:
    raw = await clients.raw(gateway.url)
    await raw.send_raw(_j({"type": "ping", "ref": "p1"}))
    reply = await wait_for_event(raw, _is_error_or_closed)
    assert isinstance(reply, f.Error) and reply.code == "not_logged_in"
    assert reply.ref == "p1"
    # Consequence for the client library: a request before login should fail fast, not time out.
    early = ChatClient(gateway.url, request_timeout=2)
    await early.connect()
    clients.clients.append(early)
    with pytest.raises(NotLoggedIn):
        await early.ping()


async def test_login_refusal_echoes_ref(gateway: Proc, clients: Clients) -> None:
    user = f"pw{next(_names)}"
    await clients.login(gateway.url, user, "right")
    raw = await clients.raw(gateway.url)
    await raw.send_raw(_j({"type": "login", "v": 1, "user": user, "password": "wrong", "ref": "L2"}))
    reply = await wait_for_event(raw, _is_error_or_closed)
    assert isinstance(reply, f.Error) and reply.code == "bad_password", reply  # checked before the name is claimed
    assert reply.ref == "L2", reply


@pytest.mark.parametrize("user", ["bad name", "", "x" * 33, "a@b", "emoji\U0001f600", "tab\t"])
async def test_login_with_invalid_username_is_refused_with_4001(
    gateway: Proc, clients: Clients, user: str
) -> None:
    raw = await clients.raw(gateway.url)
    with pytest.raises(InvalidUsername):
        await raw.login(user, "pw")
    closed = await wait_for_event(raw, lambda e: isinstance(e, Closed))
    assert isinstance(closed, Closed) and closed.code == 4001


async def test_invalid_username_error_echoes_ref_then_closes_4001(gateway: Proc, clients: Clients) -> None:
    raw = await clients.raw(gateway.url)
    await raw.send_raw(_j({"type": "login", "v": 1, "user": "bad name", "password": "pw", "ref": "L1"}))
    reply = await wait_for_event(raw, _is_error_or_closed)
    assert isinstance(reply, f.Error) and (reply.code, reply.ref) == ("invalid_username", "L1")
    closed = await wait_for_event(raw, lambda e: isinstance(e, Closed))
    assert isinstance(closed, Closed) and closed.code == 4001


@pytest.mark.parametrize("version", [2, 0, 999])
async def test_login_with_other_protocol_version_is_refused_with_4001(
    gateway: Proc, clients: Clients, version: int
) -> None:
    raw = await clients.raw(gateway.url)
    await raw.send_raw(_j({"type": "login", "v": version, "user": "vuser", "password": "pw", "ref": "v1"}))
    reply = await wait_for_event(raw, _is_error_or_closed)
    assert isinstance(reply, f.Error) and (reply.code, reply.ref) == ("unsupported_version", "v1")
    assert isinstance(reply.to_exception(), UnsupportedVersion)
    closed = await wait_for_event(raw, lambda e: isinstance(e, Closed))
    assert isinstance(closed, Closed) and closed.code == 4001


# -- frames the WebSocket layer rejects: the connection closes, the name is freed -------


async def _raw_login(ws: ClientConnection, user: str) -> None:
    await ws.send(_j({"type": "login", "v": 1, "user": user, "password": "pw"}))
    welcome = await _recv_type(ws, "welcome")
    assert welcome["user"] == user


async def _recv_type(ws: ClientConnection, kind: str, timeout: float = 5.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), max(0.0, deadline - time.monotonic())))
        if frame.get("type") == kind:
            return frame  # type: ignore[no-any-return]


async def _close_code_after(ws: ClientConnection, timeout: float = 5.0) -> int | None:
    """Read until the server closes the connection; its close code."""
    deadline = time.monotonic() + timeout
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), max(0.0, deadline - time.monotonic()))
    return ws.close_code


async def _login_again(clients: Clients, url: str, user: str, timeout: float = 10.0) -> ChatClient:
    """Log in once the gateway has released the name of the closed connection."""

    async def login() -> ChatClient | None:
        try:
            return await clients.login(url, user)
        except UsernameTaken:
            return None

    return cast(ChatClient, await async_wait_until(login, timeout, f"the name {user!r} to be released"))


@pytest.mark.parametrize(
    ("payload", "close_code"),
    [
        pytest.param(b"\xff", 1007, id="text-frame-invalid-utf8"),
        pytest.param(b'{"type":"ping","ref":"\xc3\x28"}', 1007, id="text-frame-invalid-utf8-in-json"),
        pytest.param(b"x" * (HARD_CAP + 1), 1009, id="frame-over-hard-cap"),
        pytest.param(_send(to="*", body="x" * (2 * HARD_CAP)).encode(), 1009, id="send-frame-over-hard-cap"),
    ],
)
async def test_frame_rejected_by_websocket_layer_closes_and_user_can_return(
    gateway: Proc, clients: Clients, payload: bytes, close_code: int
) -> None:
    log_start = len(gateway.log())
    receiver = await clients.login(gateway.url, f"rcv{next(_names)}")
    user = f"wsl{next(_names)}"
    async with connect(gateway.url, max_size=None, compression=None) as ws:
        await _raw_login(ws, user)
        await ws.send(payload, text=True)  # bytes sent as a Text frame, not checked by the client
        assert await _close_code_after(ws) == close_code
    again = await _login_again(clients, gateway.url, user)
    await _assert_still_chats(again, receiver)
    assert "Traceback" not in _new_log(gateway, log_start)


# -- history ids the parser accepts but Redis does not ----------------------------------


@pytest.mark.parametrize("before", ["0-0", "99999999999999999999-0", "1-99999999999999999999"])
async def test_history_before_an_id_redis_cannot_take_is_refused_not_unavailable(
    gateway: Proc, clients: Clients, before: str
) -> None:
    """XREVRANGE rejects these ends ('0-0' is below every id; the others overflow): the parser must refuse them."""
    sender, receiver = await _pair(clients, gateway.url)
    await sender.send(f"@{receiver.user}", "one")
    await sender.send_raw(_j({"type": "history", "conv": f"@{receiver.user}", "before": before, "ref": "hb"}))
    reply = await wait_for_event(sender, _is_error_or_closed)
    assert isinstance(reply, f.Error) and (reply.code, reply.ref) == ("invalid_frame", "hb"), reply
    await _assert_still_chats(sender, receiver)
