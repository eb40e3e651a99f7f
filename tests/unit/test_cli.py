"""The CLI's pure half: command parsing and output formatting (no sockets, no processes)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus, InvalidURI
from websockets.http11 import Response

from client.chat import Closed, Event
from client.cli import build_parser, main, resolve_password
from client.cli_commands import (
    DEFAULT_HISTORY,
    CommandError,
    GroupOp,
    Help,
    ListGroups,
    ListOnline,
    Msg,
    Quit,
    Say,
    ShowHistory,
    To,
    parse_line,
)
from client.cli_console import Console
from client.cli_format import (
    EXIT_CONNECTION,
    EXIT_LOGIN,
    EXIT_OK,
    clean,
    clock,
    describe_login_failure,
    format_error,
    format_event,
    format_group_event,
    format_group_info,
    format_groups,
    format_history_header,
    format_message,
    format_target,
    format_who,
    prompt_text,
)
from client.connection import events_until_closed
from client.errors import ClientError, Disconnected, RequestTimeout, connect_failed
from protocol import frames as f
from protocol.errors import (
    BadPassword,
    ChatError,
    Forbidden,
    InvalidUsername,
    NotMember,
    RateLimited,
    UnknownUser,
    UsernameTaken,
)

# 2024-01-02 12:01:02.345 UTC
TS = int(dt.datetime(2024, 1, 2, 12, 1, 2, 345000, tzinfo=dt.UTC).timestamp() * 1000)
UTC = dt.UTC


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", None),
        ("   ", None),
        ("\n", None),
        ("hello", Say("hello")),
        ("  indented text  ", Say("  indented text  ")),
        ("hello\r\n", Say("hello")),
        ("//not a command", Say("/not a command")),
        ("//", Say("/")),
        ("/msg bob hi there", Msg("@bob", "hi there")),
        ("/msg @bob hi", Msg("@bob", "hi")),
        ("/msg   bob    spaced   out", Msg("@bob", "spaced   out")),
        ("/MSG Bob Hi", Msg("@Bob", "Hi")),
        ("/msg all hi", Msg("@all", "hi")),  # /msg never broadcasts: "all" is a user here
        ("/all hello everyone", Msg("*", "hello everyone")),
        ("/all  two  spaces", Msg("*", "two  spaces")),
        ("/to bob", To("@bob")),
        ("/to @bob", To("@bob")),
        ("/to *", To("*")),
        ("/to", To(None)),
        ("/to   ", To(None)),
        ("/who", ListOnline()),
        ("/WHO", ListOnline()),
        ("/who  ", ListOnline()),
        ("/history bob", ShowHistory("@bob", DEFAULT_HISTORY)),
        ("/history bob 5", ShowHistory("@bob", 5)),
        ("/history * 100", ShowHistory("*", 100)),
        ("/history all", ShowHistory("*", DEFAULT_HISTORY)),
        ("/history ALL 3", ShowHistory("*", 3)),
        ("/history @all", ShowHistory("@all", DEFAULT_HISTORY)),
        ("/history", ShowHistory(None, DEFAULT_HISTORY)),
        ("/help", Help()),
        ("/?", Help()),
        ("/quit", Quit()),
        ("/exit", Quit()),
        # groups: names with or without '#'
        ("/msg #devs hello group", Msg("#devs", "hello group")),
        ("/msg #Devs  two  spaces", Msg("#Devs", "two  spaces")),
        ("/to #devs", To("#devs")),
        ("/history #devs", ShowHistory("#devs", DEFAULT_HISTORY)),
        ("/history #devs 5", ShowHistory("#devs", 5)),
        ("/create devs", GroupOp("create", "#devs", invite_only=False)),
        ("/create #devs", GroupOp("create", "#devs", invite_only=False)),
        ("/create devs invite", GroupOp("create", "#devs", invite_only=True)),
        ("/CREATE Devs INVITE", GroupOp("create", "#Devs", invite_only=True)),
        ("/join devs", GroupOp("join", "#devs")),
        ("/join #devs", GroupOp("join", "#devs")),
        ("/leave devs", GroupOp("leave", "#devs")),
        ("/leave #devs  ", GroupOp("leave", "#devs")),
        ("/members devs", GroupOp("members", "#devs")),
        ("/members #devs", GroupOp("members", "#devs")),
        ("/invite devs bob", GroupOp("invite", "#devs", user="@bob")),
        ("/invite #devs @bob", GroupOp("invite", "#devs", user="@bob")),
        ("/remove devs bob", GroupOp("remove", "#devs", user="@bob")),
        ("/remove #devs @Bob", GroupOp("remove", "#devs", user="@Bob")),
        ("/open devs", GroupOp("set", "#devs", invite_only=False)),
        ("/open #devs", GroupOp("set", "#devs", invite_only=False)),
        ("/close devs", GroupOp("set", "#devs", invite_only=True)),
        ("/close #devs", GroupOp("set", "#devs", invite_only=True)),
        ("/groups", ListGroups()),
        ("/GROUPS  ", ListGroups()),
    ],
)
def test_parse_line(line: str, expected: object) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    ("line", "code", "fragment"),
    [
        ("/frob", "unknown_command", "/frob is not a command"),
        ("/frob with args", "unknown_command", "/frob is not a command"),
        ("/", "unknown_command", "try /help"),
        ("/msg", "usage", "/msg NAME TEXT"),
        ("/msg bob", "usage", "/msg NAME TEXT"),
        ("/msg bob   ", "usage", "/msg NAME TEXT"),
        ("/msg * hi", "usage", "use /all"),
        ("/msg b@d hi", "invalid_username", "not a username"),
        ("/msg " + "x" * 33 + " hi", "invalid_username", "not a username"),
        ("/all", "usage", "/all TEXT"),
        ("/all    ", "usage", "/all TEXT"),
        ("/to bob carol", "usage", "/to"),
        ("/to b!b", "invalid_username", "not a username"),
        ("/history bob 0", "usage", "COUNT"),
        ("/history bob 101", "usage", "COUNT"),
        ("/history bob many", "usage", "COUNT"),
        ("/history bob -3", "usage", "COUNT"),
        ("/history bob 5 6", "usage", "/history"),
        ("/who me", "usage", "takes no arguments"),
        ("/quit now", "usage", "takes no arguments"),
        ("/help me", "usage", "takes no arguments"),
        ("/msg #devs", "usage", "/msg NAME TEXT"),
        ("/msg #de$s hi", "usage", "not a group name"),
        ("/msg # hi", "usage", "not a group name"),
        ("/to #", "usage", "not a group name"),
        ("/history #b!d", "usage", "not a group name"),
        ("/create", "usage", "/create GROUP [invite]"),
        ("/create devs open", "usage", "/create GROUP [invite]"),
        ("/create devs invite now", "usage", "/create GROUP [invite]"),
        ("/create de/vs", "usage", "not a group name"),
        ("/create " + "x" * 33, "usage", "not a group name"),
        ("/join", "usage", "/join GROUP"),
        ("/join devs ops", "usage", "/join GROUP"),
        ("/leave", "usage", "/leave GROUP"),
        ("/members", "usage", "/members GROUP"),
        ("/members devs bob", "usage", "/members GROUP"),
        ("/invite devs", "usage", "/invite GROUP NAME"),
        ("/invite devs bob carol", "usage", "/invite GROUP NAME"),
        ("/invite devs b!b", "invalid_username", "not a username"),
        ("/remove", "usage", "/remove GROUP NAME"),
        ("/remove devs", "usage", "/remove GROUP NAME"),
        ("/open", "usage", "/open GROUP"),
        ("/close devs now", "usage", "/close GROUP"),
        ("/groups mine", "usage", "takes no arguments"),
    ],
)
def test_parse_line_errors(line: str, code: str, fragment: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_line(line)
    assert info.value.code == code
    assert fragment in info.value.message


def test_unknown_command_text_is_escaped() -> None:
    with pytest.raises(CommandError) as info:
        parse_line("/\x1b[2Jwipe")
    assert "\x1b" not in info.value.message


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain", "plain"),
        ("tab\there", "tab\there"),
        ("two\nlines", "two\\nlines"),
        ("cr\r", "cr\\r"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("bell\x07", "bell\\x07"),
        ("c1\x9b", "c1\\x9b"),
        ("rtl\u202eevil", "rtl\\u202eevil"),
        ("héllo wörld 👋", "héllo wörld 👋"),
        ("nbsp\u00a0ok", "nbsp\u00a0ok"),
    ],
)
def test_clean(text: str, shown: str) -> None:
    assert clean(text) == shown


def message(from_: str, to: str, body: str, ts: int = TS) -> f.Message:
    return f.Message(id="1-0", from_=from_, to=to, body=body, ts=ts)


@pytest.mark.parametrize(
    ("msg", "me", "line"),
    [
        (message("alice", "@bob", "hi"), "bob", "[12:01:02] <alice> hi"),
        (message("alice", "@Bob", "hi"), "bob", "[12:01:02] <alice> hi"),  # names are case-insensitive
        (message("alice", "@bob", "hi"), "alice", "[12:01:02] <alice→bob> hi"),  # my own DM
        (message("alice", "*", "hello all"), "bob", "[12:01:02] <alice→*> hello all"),
        (message("bob", "*", "mine too"), "bob", "[12:01:02] <bob→*> mine too"),
        (message("alice", "@bob", "a\nb"), "bob", "[12:01:02] <alice> a\\nb"),
        (message("alice", "@bob", "old", ts=0), "bob", "[--:--:--] <alice> old"),
        (message("alice", "#devs", "hello group"), "bob", "[12:01:02] <alice→#devs> hello group"),
        (message("alice", "#Devs", "mine"), "alice", "[12:01:02] <alice→#Devs> mine"),  # as the server names it
        (message("alice", "#devs", "a\x1bb"), "bob", "[12:01:02] <alice→#devs> a\\x1bb"),
    ],
)
def test_format_message(msg: f.Message, me: str, line: str) -> None:
    assert format_message(msg, me, UTC) == line


def test_clock_uses_local_time_by_default() -> None:
    local = dt.datetime.fromtimestamp(TS / 1000).strftime("%H:%M:%S")
    assert clock(TS) == local
    assert clock(TS, UTC) == "12:01:02"


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (f.Presence(user="bob", status="online"), "* bob is online"),
        (f.Presence(user="bob", status="offline"), "* bob is offline"),
        (f.Presence(user="Alice", status="online"), None),  # my own presence is not shown
        (f.PresenceBatch(online=["bob", "Alice"], offline=["carol"]), "* bob is online\n* carol is offline"),
        (f.PresenceBatch(online=["alice"], offline=[]), None),
        (message("bob", "*", "yo"), "[12:01:02] <bob→*> yo"),
        (f.Online(users=["bob", "alice"]), "* online: alice, bob"),
        (f.Error(code="rate_limited", message="too many requests; slow down"),
         "! rate_limited: too many requests; slow down"),
        (Closed(1001, "shutting down"),
         "! disconnected: the server closed the connection (1001 going away): shutting down"),
        (Closed(4008, ""), "! disconnected: the server closed the connection (4008 slow consumer)"),
        (Closed(4999, ""), "! disconnected: the server closed the connection (4999)"),
        (Closed(None, ""), "! disconnected: the connection to the server was lost"),
        ({"type": "future-frame"}, None),
        (message("bob", "#devs", "yo"), "[12:01:02] <bob→#devs> yo"),
        (f.GroupEvent(group="devs", event="joined", user="bob"), "* #devs: bob joined"),
    ],
)
def test_format_event(event: object, line: str | None) -> None:
    assert format_event(event, "alice", UTC) == line  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("users", "line"),
    [
        (["bob", "alice", "Carol"], "* online: alice, bob, Carol"),
        (["alice"], "* online: alice"),
        ([], "* online: (nobody)"),
    ],
)
def test_format_who(users: list[str], line: str) -> None:
    assert format_who(users) == line


def test_format_who_says_how_many_a_capped_list_left_out() -> None:
    assert format_who(["bob", "alice"], 5000) == "* online: alice, bob \u2026 and 4998 more (/who lists everyone)"
    assert format_who(["bob", "alice"], 2) == "* online: alice, bob"  # everyone after all
    assert format_event(f.Online(users=["bob"], total=3, next="bob"), "alice", UTC) == (
        "* online: bob \u2026 and 2 more (/who lists everyone)"
    )


async def test_a_capped_online_list_does_not_call_anyone_offline() -> None:
    """carol may be on a page the welcome did not carry: say nothing rather than something wrong."""
    chat = FakeChat()
    chat.online_total = 5000
    status, out, _, _ = await run_script(["/msg carol hi"], chat)
    assert status == EXIT_OK and out == ["[12:01:02] <alice→carol> hi"]


@pytest.mark.parametrize(
    ("conv", "count", "line"),
    [
        ("@bob", 2, "* history with bob: 2 messages"),
        ("@bob", 1, "* history with bob: 1 message"),
        ("*", 0, "* history of the broadcast: 0 messages"),
        ("#devs", 3, "* history of #devs: 3 messages"),
    ],
)
def test_format_history_header(conv: str, count: int, line: str) -> None:
    assert format_history_header(conv, count) == line


@pytest.mark.parametrize(
    ("target", "line", "prompt"),
    [
        ("@bob", "* talking to bob: plain lines go to bob", "bob> "),
        ("*", "* talking to everyone: plain lines are broadcast", "all> "),
        (None, "* no recipient: plain lines are not sent (use /to NAME or /all TEXT)", "> "),
        ("#devs", "* talking to #devs: plain lines go to its members", "#devs> "),
    ],
)
def test_target_line_and_prompt(target: str | None, line: str, prompt: str) -> None:
    assert format_target(target) == line
    assert prompt_text(target) == prompt


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (f.GroupEvent(group="devs", event="joined", user="bob"), "* #devs: bob joined"),
        (f.GroupEvent(group="Devs", event="joined", user="bob"), "* #Devs: bob joined"),
        (f.GroupEvent(group="#devs", event="joined", user="bob"), "* #devs: bob joined"),  # one '#' either way
        (f.GroupEvent(group="devs", event="left", user="bob"), "* #devs: bob left"),
        (f.GroupEvent(group="devs", event="invited", user="bob", by="alice"), "* #devs: bob was invited by alice"),
        (f.GroupEvent(group="devs", event="invited", user="bob"), "* #devs: bob was invited"),
        (f.GroupEvent(group="devs", event="removed", user="bob", by="alice"), "* #devs: bob was removed by alice"),
        (f.GroupEvent(group="devs", event="owner", user="alice"), "* #devs: alice is now the owner"),
        (f.GroupEvent(group="devs", event="updated", user="alice", invite_only=True), "* #devs: invite-only now"),
        (f.GroupEvent(group="devs", event="updated", user="alice", invite_only=False), "* #devs: open to all now"),
        (f.GroupEvent(group="devs", event="renamed", user="alice", by="bob"), "* #devs: renamed alice by bob"),
        (f.GroupEvent(group="devs", event="joined", user="b\x1bb"), "* #devs: b\\x1bb joined"),
    ],
)
def test_format_group_event(event: f.GroupEvent, line: str) -> None:
    assert format_group_event(event) == line
    assert format_event(event, "bob", UTC) == line


def info(op: str, members: list[str], owner: str = "alice", invite_only: bool = False) -> f.GroupInfo:
    return f.GroupInfo(op=op, group="devs", owner=owner, invite_only=invite_only, members=members)


@pytest.mark.parametrize(
    ("reply", "line"),
    [
        (info("create", ["alice"]), "* #devs: owner alice, members alice"),
        (info("join", ["bob", "alice"]), "* #devs: owner alice, members alice, bob"),
        (info("members", ["alice", "bob"], invite_only=True), "* #devs: owner alice, members alice, bob (invite-only)"),
        (info("set", ["alice", "Carol", "bob"], invite_only=True),
         "* #devs: owner alice, members alice, bob, Carol (invite-only)"),
        (info("leave", [], owner=""), "* #devs: you left"),
    ],
)
def test_format_group_info(reply: f.GroupInfo, line: str) -> None:
    assert format_group_info(reply) == line


@pytest.mark.parametrize(
    ("groups", "line"),
    [
        ([], "* groups: none"),
        ([f.GroupSummary("devs", "alice", False)], "* groups: #devs (owner alice)"),
        ([f.GroupSummary("ops", "bob", True), f.GroupSummary("devs", "alice", False)],
         "* groups: #devs (owner alice), #ops (owner bob, invite-only)"),
    ],
)
def test_format_groups(groups: list[f.GroupSummary], line: str) -> None:
    assert format_groups(groups) == line


def test_format_error() -> None:
    assert format_error("unknown_user", "no user named 'x'") == "! unknown_user: no user named 'x'"


@pytest.mark.parametrize(
    ("exc", "status", "fragment"),
    [
        (UsernameTaken(), EXIT_LOGIN, "! Username Exists: alice is already logged in"),
        (BadPassword(), EXIT_LOGIN, "! Wrong Password: the password for alice is not correct"),
        (InvalidUsername(), EXIT_LOGIN, "! Invalid Username:"),
        (RateLimited(), EXIT_CONNECTION, "! Login Failed: too many requests; slow down (rate_limited)"),
        # What ChatClient.open raises when no socket opens: the socket's error wrapped (see client/errors.py).
        (connect_failed("ws://h:1", ConnectionRefusedError(111, "Connection refused")), EXIT_CONNECTION,
         "! Cannot Connect: ws://h:1 is unreachable (Connection refused)"),
        (connect_failed("ws://h:1", OSError(-2, "Name or service not known")), EXIT_CONNECTION,
         "! Cannot Connect: ws://h:1 is unreachable (Name or service not known)"),
        (connect_failed("ws://h:1", TimeoutError()), EXIT_CONNECTION, "! Cannot Connect: no answer from ws://h:1"),
        (connect_failed("ws://h:1", InvalidURI("h:1", "not a ws URL")), EXIT_CONNECTION,
         "! Cannot Connect: ws://h:1 is not a ws:// or wss:// URL"),
        (connect_failed("ws://h:1", InvalidStatus(Response(404, "Not Found", Headers()))), EXIT_CONNECTION,
         "! Cannot Connect: ws://h:1 did not accept a WebSocket connection (server rejected WebSocket connection: "
         "HTTP 404)"),
        (Disconnected("gone"), EXIT_CONNECTION, "! Cannot Connect: ws://h:1 closed the connection during login"),
    ],
)
def test_describe_login_failure(exc: ChatError | ClientError, status: int, fragment: str) -> None:
    line, got = describe_login_failure(exc, "alice", "ws://h:1")
    assert got == status
    assert line.startswith(fragment)
    assert "\n" not in line


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_password_precedence(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("from-file\nignored\n")
    env = {"CHINWAG_PASSWORD": "from-env"}
    prompt = lambda: "from-prompt"  # noqa: E731
    assert resolve_password(_args("--password", "flag", "--password-file", str(secret)), env, prompt) == "flag"
    assert resolve_password(_args("--password-file", str(secret)), env, prompt) == "from-file"
    assert resolve_password(_args(), env, prompt) == "from-env"
    assert resolve_password(_args(), {}, prompt) == "from-prompt"
    assert resolve_password(_args(), {}, None) is None


def test_parser_defaults() -> None:
    args = _args()
    assert (args.server, args.user, args.password, args.wait) == (None, None, None, 0.0)
    assert _args("--wait", "2.5").wait == 2.5


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["--user", "alice"], {}, "no password"),
        ([], {"CHINWAG_PASSWORD": "pw"}, "no username"),
        (["--user", "al ice"], {"CHINWAG_PASSWORD": "pw"}, "invalid username"),
        (["--user", "alice", "--wait", "-1"], {"CHINWAG_PASSWORD": "pw"}, "--wait"),
        (["--user", "alice", "--wait", "inf"], {"CHINWAG_PASSWORD": "pw"}, "--wait"),
        (["--user", "alice", "--password-file", "/nonexistent/pw"], {}, "password file"),
    ],
)
def test_main_usage_errors(
    argv: list[str], env: dict[str, str], fragment: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("CHINWAG_PASSWORD", "CHINWAG_USER", "CHINWAG_SERVER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert fragment in capsys.readouterr().err


# -- the session loop against an in-memory fake client (still no sockets) ------


class FakeChat:
    """Just enough of ChatClient for Console: records sends, replays scripted events."""

    def __init__(self, online: tuple[str, ...] = ("alice", "bob")) -> None:
        self.user = "alice"
        self.online = set(online)
        self.online_total: int | None = None
        self.request_timeout = 10.0
        self.sent: list[tuple[str, str]] = []
        self.group_ops: list[tuple[str, str, str | None, bool | None]] = []
        self.closed: Closed | None = None
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    async def send(self, to: str, body: str) -> f.Ack:
        await asyncio.sleep(0)  # a real round trip yields to the loop
        if to == "@nobody":
            raise UnknownUser("no user named 'nobody'")
        self.sent.append((to, body))
        return f.Ack(id=f"{len(self.sent)}-0", ts=TS)

    async def who(self) -> list[str]:
        return sorted(self.online)

    async def group(
        self, op: str, group: str, *, user: str | None = None, invite_only: bool | None = None
    ) -> f.GroupInfo:
        await asyncio.sleep(0)  # a real round trip yields to the loop
        self.group_ops.append((op, group, user, invite_only))
        name = group.removeprefix("#")
        if name == "secret":
            raise NotMember()
        if op == "remove":
            raise Forbidden()
        if op == "leave":
            return f.GroupInfo(op=op, group=name, owner="", invite_only=False, members=[])
        return f.GroupInfo(op=op, group=name, owner="alice", invite_only=bool(invite_only), members=["alice", "bob"])

    async def groups(self) -> list[f.GroupSummary]:
        return [f.GroupSummary("devs", "alice", False)]

    async def history(self, conv: str, before: str | None = None, limit: int = 50) -> list[f.Message]:
        return [message("bob", conv, "older"), message("alice", conv, "newer")][-limit:]

    def events(self) -> AsyncIterator[Event]:
        return events_until_closed(self.queue)

    async def close(self) -> None:
        if self.closed is None:
            self.closed = Closed(1000, "")
            self.queue.put_nowait(self.closed)


def scripted(lines: list[str]) -> Callable[[], Awaitable[str | None]]:
    pending: list[str | None] = [*lines, None]

    async def read_line() -> str | None:
        return pending.pop(0) if pending else None

    return read_line


async def run_script(lines: list[str], chat: FakeChat | None = None) -> tuple[int, list[str], list[str], FakeChat]:
    chat = chat or FakeChat()
    out: list[str] = []
    err: list[str] = []
    session = Console(chat, out=out.append, err=err.append, tz=UTC)  # type: ignore[arg-type]
    status = await session.converse(scripted(lines))
    return status, out, err, chat


async def test_session_runs_a_script_in_order() -> None:
    status, out, err, chat = await run_script(
        ["/msg bob one", "/all two", "/to bob", "three", "/who", "/history bob 1", "/quit", "/msg bob never"]
    )
    assert status == EXIT_OK and err == []
    assert chat.sent == [("@bob", "one"), ("*", "two"), ("@bob", "three")]
    assert out == [
        "[12:01:02] <alice→bob> one",  # DMs are echoed on ack; broadcasts come back from the server
        "* talking to bob: plain lines go to bob",
        "[12:01:02] <alice→bob> three",
        "* online: alice, bob",
        "* history with bob: 1 message",
        "[12:01:02] <alice→bob> newer",
    ]


async def test_session_reports_failures_and_carries_on() -> None:
    status, out, _, chat = await run_script(["hello?", "/frob", "/msg nobody hi", "/msg carol hi", "/msg bob ok"])
    assert status == EXIT_OK
    assert out == [
        "! no_recipient: nobody to send to: use /to NAME, /msg NAME TEXT or /all TEXT",
        "! unknown_command: /frob is not a command (try /help)",
        "! unknown_user: no user named 'nobody'",
        "[12:01:02] <alice→carol> hi",
        "* carol is offline; they get the message when they log in",
        "[12:01:02] <alice→bob> ok",
    ]
    assert chat.sent == [("@carol", "hi"), ("@bob", "ok")]


async def test_session_prints_events_and_reports_a_lost_connection() -> None:
    chat = FakeChat()
    chat.queue.put_nowait(f.Presence(user="bob", status="online"))
    chat.queue.put_nowait(message("bob", "@alice", "hi alice"))
    chat.queue.put_nowait(Closed(1001, "bye"))
    out: list[str] = []
    err: list[str] = []
    session = Console(chat, out=out.append, err=err.append, tz=UTC)  # type: ignore[arg-type]
    never = asyncio.get_running_loop().create_future()

    async def read_line() -> str | None:
        return await never  # type: ignore[no-any-return]

    status = await asyncio.wait_for(session.converse(read_line), 5)
    assert status == EXIT_CONNECTION
    assert out == ["* bob is online", "[12:01:02] <bob> hi alice"]
    assert err == ["! disconnected: the server closed the connection (1001 going away): bye"]


async def test_session_runs_group_commands() -> None:
    chat = FakeChat()
    chat.queue.put_nowait(f.GroupEvent(group="devs", event="joined", user="bob"))
    status, out, _, chat = await run_script(
        ["/create devs invite", "/invite devs bob", "/msg #devs hi all", "/to #devs", "plain", "/groups",
         "/close devs", "/members #secret", "/remove devs bob", "/history #devs 1", "/leave devs"],
        chat,
    )
    assert status == EXIT_OK
    assert chat.group_ops == [
        ("create", "#devs", None, True),
        ("invite", "#devs", "bob", None),
        ("set", "#devs", None, True),
        ("members", "#secret", None, None),
        ("remove", "#devs", "bob", None),
        ("leave", "#devs", None, None),
    ]
    assert chat.sent == [("#devs", "hi all"), ("#devs", "plain")]  # group messages are not echoed: they come back
    lines = [line for line in out if line != "* #devs: bob joined"]  # the pushed event may print anywhere
    assert "* #devs: bob joined" in out
    assert lines == [
        "* #devs: owner alice, members alice, bob (invite-only)",
        "* #devs: owner alice, members alice, bob",
        "* talking to #devs: plain lines go to its members",
        "* groups: #devs (owner alice)",
        "* #devs: owner alice, members alice, bob (invite-only)",
        "! not_member: you are not a member of that group",
        "! forbidden: only the group's owner can do that",
        "* history of #devs: 1 message",
        "[12:01:02] <alice→#devs> newer",
        "* #devs: you left",
    ]


class LostChat(FakeChat):
    """A client whose connection ends for good (no reconnect) at the first send."""

    async def send(self, to: str, body: str) -> f.Ack:
        await asyncio.sleep(0)  # a real round trip yields to the loop
        self.sent.append((to, body))
        if self.closed is None:
            self.closed = Closed(1001, "going away")
            self.queue.put_nowait(self.closed)
        raise Disconnected("connection closed (1001)")


async def test_a_connection_lost_for_good_ends_the_script_with_its_status() -> None:
    """Disconnected ends the session (it is a ConnectionError, so it used to be caught as a local file error:
    one "! file_error" line per remaining command, then exit 0, and 4 from run_client)."""
    status, out, err, chat = await run_script(["/msg bob one", "/msg bob two", "/who"], LostChat())
    assert status == EXIT_CONNECTION
    assert not any("file_error" in line for line in out)
    assert err == ["! disconnected: the server closed the connection (1001 going away): going away"]
    assert chat.sent == [("@bob", "one")]  # nothing after the loss is attempted


class SlowChat(FakeChat):
    """A client whose requests get no reply in time, and whose downloads fail."""

    async def who(self) -> list[str]:
        raise RequestTimeout("no reply within 10s")


async def test_a_request_without_an_answer_prints_one_line_and_carries_on() -> None:
    status, out, _, _ = await run_script(["/who", "/msg bob still here"], SlowChat())
    assert status == EXIT_OK
    assert out == ["! timeout: no reply from the server within 10s", "[12:01:02] <alice→bob> still here"]
