"""``chinwag``: the terminal chat client.

    chinwag --server ws://HOST:9000 --user alice

Two halves, kept apart so the first can be tested without any I/O:

* pure functions: :func:`parse_line` turns a typed line into a command
  (:class:`Msg`, :class:`Who`, :class:`GroupOp`, ...) or raises :class:`CommandError`; the
  ``format_*`` functions turn protocol events into the output lines that
  docs/cli.md specifies (scripts and tests depend on them, so they are stable);
* the I/O loop: :class:`Session` runs commands against a
  :class:`~client.chat.ChatClient` and prints events as they arrive, fed by
  prompt_toolkit on a terminal or by stdin line by line when scripted.

Every output line starts with one marker: ``[`` a chat message, ``*`` status
and replies, ``!`` an error.  Bodies are printed on one line with control
characters escaped, so one line is always one event.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import getpass
import io
import os
import re
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.exceptions import InvalidURI, WebSocketException

from client.chat import ChatClient, Closed, Disconnected, Event, StateChanged
from client.files import FileTransferError, download, file_of, send_file
from common.runtime import run
from protocol import frames as f
from protocol.errors import (
    BadPassword,
    ChatError,
    CloseCode,
    InvalidUsername,
    LoginError,
    UsernameTaken,
)
from protocol.files import FileRef, human_size, is_sha256
from protocol.names import BROADCAST, name_key, normalize_name

DEFAULT_SERVER = "ws://127.0.0.1:9000"
DEFAULT_HISTORY = 20
MAX_HISTORY = f.MAX_HISTORY_LIMIT

# Exit statuses (docs/cli.md lists them).
EXIT_OK = 0
EXIT_CONNECTION = 1  # could not connect, or the connection was lost
EXIT_USAGE = 2  # bad command line (argparse uses 2 as well)
EXIT_LOGIN = 3  # login refused: username exists, wrong password, invalid name
EXIT_COMMANDS_FAILED = 4  # scripted mode: at least one command failed
EXIT_INTERRUPTED = 130  # Ctrl-C outside the prompt


# -- commands ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Msg:
    """Send ``body`` to ``to`` (``"@name"``, ``"#group"`` or ``"*"``): ``/msg``, ``/all``."""

    to: str
    body: str


@dataclass(frozen=True, slots=True)
class Say:
    """A plain line: goes to the current ``/to`` recipient, if there is one."""

    body: str


@dataclass(frozen=True, slots=True)
class To:
    """Set the recipient of plain lines (``None``: nobody)."""

    to: str | None


@dataclass(frozen=True, slots=True)
class Who:
    pass


@dataclass(frozen=True, slots=True)
class History:
    """Show the last ``limit`` messages of ``conv`` (``None``: the current recipient, else broadcast)."""

    conv: str | None
    limit: int = DEFAULT_HISTORY


@dataclass(frozen=True, slots=True)
class Help:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class SendFile:
    """Upload the file at ``path`` and send it to ``to`` (``"@name"``, ``"#group"`` or ``"*"``): ``/send``."""

    to: str
    path: str


@dataclass(frozen=True, slots=True)
class GetFile:
    """Download a file by its id (or the start of one shown earlier) into ``folder``: ``/get``."""

    id: str
    folder: str | None = None


@dataclass(frozen=True, slots=True)
class GroupOp:
    """A group operation on ``group`` (``"#name"``): ``/create``, ``/join``, ``/leave``, ``/members``,
    ``/invite``, ``/remove`` (``user`` is ``"@name"``), ``/open`` and ``/close`` (op ``set``)."""

    op: str
    group: str
    user: str | None = None
    invite_only: bool | None = None


@dataclass(frozen=True, slots=True)
class ListGroups:
    """``/groups``: the groups I am a member of."""


Command = Msg | Say | To | Who | History | Help | Quit | SendFile | GetFile | GroupOp | ListGroups


class CommandError(ValueError):
    """A line that is not a valid command; ``code`` starts the ``!`` line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


USAGE = {
    "msg": "/msg NAME TEXT",
    "to": "/to [NAME|#GROUP|*]",
    "all": "/all TEXT",
    "who": "/who",
    "history": "/history [NAME|#GROUP|*|all] [COUNT]",
    "create": "/create GROUP [invite]",
    "join": "/join GROUP",
    "leave": "/leave GROUP",
    "members": "/members GROUP",
    "invite": "/invite GROUP NAME",
    "remove": "/remove GROUP NAME",
    "open": "/open GROUP",
    "close": "/close GROUP",
    "groups": "/groups",
    "help": "/help",
    "quit": "/quit",
    "send": "/send NAME|#GROUP|* PATH",
    "get": "/get ID [DIR]",
}

HELP = (
    "commands:",
    "  /msg NAME TEXT         send TEXT to NAME only (#GROUP: to the group's members)",
    "  /to NAME               plain lines now go to NAME (#GROUP: a group; /to * : everyone; /to alone: nobody)",
    "  /all TEXT              send TEXT to everyone",
    "  /who                   list who is online",
    f"  /history [NAME|*] [N]  last N messages (default {DEFAULT_HISTORY}, at most {MAX_HISTORY}) "
    "with NAME, of #GROUP, or of the broadcast (* or all)",
    "  /groups                list the groups you are in",
    "  /create GROUP [invite] create a group (and own it); 'invite': invite-only",
    "  /join GROUP            join a group (an invite-only one needs an invite)",
    "  /leave GROUP           leave a group",
    "  /members GROUP         show a group's owner and members",
    "  /invite GROUP NAME     owner: invite NAME (into an invite-only group)",
    "  /remove GROUP NAME     owner: remove NAME from the group",
    "  /open GROUP            owner: anyone may join  (/close GROUP: invite-only)",
    "  /send NAME PATH        send the file at PATH to NAME (#GROUP: a group; * or all: everyone)",
    "  /get ID [DIR]          save a file (its id, or the start of one shown) in DIR (default: here)",
    "  /help                  this list",
    "  /quit                  log out and exit (Ctrl-D does the same)",
    "  TEXT                   send to the /to recipient; start it with // to send a line beginning with /",
)

_ALIASES = {"exit": "quit", "?": "help"}
_NO_ARGS: dict[str, Command] = {"who": Who(), "help": Help(), "quit": Quit(), "groups": ListGroups()}
_GROUP_ONLY = {"join": "join", "leave": "leave", "members": "members"}  # command -> op: /CMD GROUP
_GROUP_USER = {"invite": "invite", "remove": "remove"}  # /CMD GROUP NAME
_GROUP_SET = {"open": False, "close": True}  # /CMD GROUP: invite_only
_SPLIT = re.compile(r"\s+")


def parse_line(line: str) -> Command | None:
    """Parse one typed line: a command, ``None`` for a blank line, or CommandError."""
    line = line.rstrip("\r\n")
    if not line.strip():
        return None
    if line.startswith("//"):
        return Say(line[1:])
    if not line.startswith("/"):
        return Say(line)
    name, rest = _split_first(line[1:])
    name = name.lower()
    name = _ALIASES.get(name, name)
    if name == "msg":
        who, body = _split_first(rest)
        if not who or not body.strip():
            raise _usage(name)
        if who == BROADCAST:
            raise CommandError("usage", "/msg is for one person or a #group; use /all TEXT to send to everyone")
        return Msg(parse_group(who) if who.startswith("#") else parse_user(who), body)
    if name == "all":
        if not rest.strip():
            raise _usage(name)
        return Msg(BROADCAST, rest)
    if name == "send":
        who, path = _split_first(rest)
        path = _unquote(path.strip())
        if not who or not path:
            raise _usage(name)
        return SendFile(parse_recipient(who), path)
    if name == "get":
        file_id, folder = _split_first(rest)
        if not file_id:
            raise _usage(name)
        file_id = file_id.lower()
        if not (6 <= len(file_id) <= 64 and all(c in "0123456789abcdef" for c in file_id)):
            raise CommandError("usage", f"{clean(file_id)[:20]!r} is not a file id (hex digits, as shown in "
                               "[file ... id=...])")
        return GetFile(file_id, _unquote(folder.strip()) or None)
    args = _SPLIT.split(rest.strip()) if rest.strip() else []
    if name == "to":
        if len(args) > 1:
            raise _usage(name)
        if not args:
            return To(None)
        if args[0] == BROADCAST:
            return To(BROADCAST)
        return To(parse_group(args[0]) if args[0].startswith("#") else parse_user(args[0]))
    if name == "history":
        if len(args) > 2:
            raise _usage(name)
        conv = parse_conversation(args[0]) if args else None
        limit = parse_count(args[1]) if len(args) == 2 else DEFAULT_HISTORY
        return History(conv, limit)
    if name in _GROUP_ONLY or name in _GROUP_SET or name == "create":
        invite = name == "create" and len(args) == 2 and args[1].lower() == "invite"
        if len(args) != 1 and not invite:
            raise _usage(name)
        group = parse_group(args[0])
        if name == "create":
            return GroupOp("create", group, invite_only=invite)
        if name in _GROUP_SET:
            return GroupOp("set", group, invite_only=_GROUP_SET[name])
        return GroupOp(_GROUP_ONLY[name], group)
    if name in _GROUP_USER:
        if len(args) != 2:
            raise _usage(name)
        return GroupOp(_GROUP_USER[name], parse_group(args[0]), user=parse_user(args[1]))
    if name in _NO_ARGS:
        if args:
            raise CommandError("usage", f"{USAGE[name]} takes no arguments")
        return _NO_ARGS[name]
    shown = clean(line.split()[0])[:40]
    raise CommandError("unknown_command", f"{shown} is not a command (try /help)")


def parse_user(raw: str) -> str:
    """``bob`` or ``@bob`` -> ``"@bob"`` (NFKC display form); CommandError if not a valid name."""
    name = raw[1:] if raw.startswith("@") else raw
    try:
        display, _ = normalize_name(name)
    except InvalidUsername:
        raise CommandError(
            "invalid_username", f"{clean(raw)[:40]!r} is not a username (1-32 letters, digits, '_', '-' or '.')"
        ) from None
    return f"@{display}"


def parse_group(raw: str) -> str:
    """``devs`` or ``#devs`` -> ``"#devs"`` (NFKC display form); CommandError if not a valid group name."""
    try:
        display, _ = normalize_name(raw.removeprefix("#"))
    except InvalidUsername:
        raise CommandError(
            "usage", f"{clean(raw)[:40]!r} is not a group name (1-32 letters, digits, '_', '-' or '.')"
        ) from None
    return f"#{display}"


def parse_recipient(raw: str) -> str:
    """A /send target: ``*`` or ``all`` is everyone, ``#name`` a group, anything else a user."""
    if raw == BROADCAST or raw.lower() == "all":
        return BROADCAST
    if raw.startswith("#"):
        return parse_group(raw)
    return parse_user(raw)


def _local_file(path: str | Path) -> tuple[Path, int | None]:
    """The path with ``~`` expanded, and the file's size (None if it is not a regular file)."""
    source = Path(path).expanduser()
    return source, source.stat().st_size if source.is_file() else None


def _unquote(text: str) -> str:
    """A path typed with surrounding quotes (for spaces) without them."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def parse_conversation(raw: str) -> str:
    """A /history target: ``*`` or ``all`` is the broadcast, ``#name`` a group, anything else a user
    (``@all`` is the user all)."""
    if raw == BROADCAST or raw.lower() == "all":
        return BROADCAST
    if raw.startswith("#"):
        return parse_group(raw)
    return parse_user(raw)


def parse_count(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_HISTORY:
        raise CommandError("usage", f"COUNT must be a number from 1 to {MAX_HISTORY}, not {clean(raw)[:20]!r}")
    return int(raw)


def _split_first(text: str) -> tuple[str, str]:
    """First word and the rest (leading whitespace dropped, inner spacing kept)."""
    parts = _SPLIT.split(text.lstrip(), maxsplit=1)
    return parts[0], parts[1] if len(parts) > 1 else ""


def _usage(name: str) -> CommandError:
    return CommandError("usage", USAGE[name])


# -- output formatting -------------------------------------------------------

_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def clean(text: str) -> str:
    """Text made safe for one terminal line: control characters and bidi overrides escaped."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\t" or (code >= 0x20 and not 0x7F <= code <= 0x9F and ch not in _BIDI):
            out.append(ch)
        elif ch in _NAMED:
            out.append(_NAMED[ch])
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out)


def clock(ts_ms: int, tz: dt.tzinfo | None = None) -> str:
    """``HH:MM:SS`` of a millisecond timestamp (local time unless ``tz`` is given)."""
    if ts_ms <= 0:
        return "--:--:--"
    return dt.datetime.fromtimestamp(ts_ms / 1000, tz).strftime("%H:%M:%S")


def _same_user(address: str, me: str) -> bool:
    return address.startswith("@") and name_key(address[1:]) == name_key(me)


def format_message(msg: f.Message, me: str, tz: dt.tzinfo | None = None) -> str:
    """``[12:01:02] <alice> hi`` (a DM to me), ``<alice→bob>`` (a DM to someone else), ``<alice→*>`` (everyone),
    ``<alice→#devs>`` (a group)."""
    sender = clean(msg.from_)
    if msg.to == BROADCAST:
        who = f"{sender}→*"
    elif msg.to.startswith("#"):
        who = f"{sender}→{clean(msg.to)}"
    elif _same_user(msg.to, me) or not msg.to:
        who = sender
    else:
        who = f"{sender}→{clean(msg.to.removeprefix('@'))}"
    file = file_of(msg)
    if file is not None:
        text = f"{format_file(file)} {clean(msg.body)}" if msg.body else format_file(file)
        return f"[{clock(msg.ts, tz)}] <{who}> {text}"
    return f"[{clock(msg.ts, tz)}] <{who}> {clean(msg.body)}"


FILE_ID_SHOWN = 12  # hex digits of a file id printed; /get takes any unique start of one


def format_file(file: FileRef) -> str:
    """``[file cat.png 5.0 MiB image/png id=ab12cd34ef56…]``"""
    return f"[file {clean(file.name)} {human_size(file.size)} {clean(file.mime)} id={file.id[:FILE_ID_SHOWN]}…]"


def format_presence(event: f.Presence) -> str:
    return f"* {clean(event.user)} is {clean(event.status)}"


def format_error(code: str, message: str) -> str:
    return f"! {clean(code)}: {clean(message)}"


def format_who(users: Iterable[str], total: int | None = None) -> str:
    """``* online: alice, bob``; a list the server capped (``total`` online) says how many it left out."""
    names = sorted(users, key=name_key)
    line = f"* online: {', '.join(clean(u) for u in names) if names else '(nobody)'}"
    if total is not None and total > len(names):
        line += f" \u2026 and {total - len(names)} more (/who lists everyone)"
    return line


def format_history_header(conv: str, count: int) -> str:
    if conv == BROADCAST:
        where = "of the broadcast"
    elif conv.startswith("#"):
        where = f"of {clean(conv)}"
    else:
        where = f"with {clean(conv.removeprefix('@'))}"
    noun = "message" if count == 1 else "messages"
    return f"* history {where}: {count} {noun}"


def format_target(to: str | None) -> str:
    if to is None:
        return "* no recipient: plain lines are not sent (use /to NAME or /all TEXT)"
    if to == BROADCAST:
        return "* talking to everyone: plain lines are broadcast"
    if to.startswith("#"):
        return f"* talking to {clean(to)}: plain lines go to its members"
    name = clean(to.removeprefix("@"))
    return f"* talking to {name}: plain lines go to {name}"


def _group(name: str) -> str:
    return f"#{clean(name.removeprefix('#'))}"


def format_group_info(info: f.GroupInfo) -> str:
    """Reply to a group command: ``* #devs: owner alice, members alice, bob (invite-only)``.

    After ``/leave`` (the server sends no members then): ``* #devs: you left``.
    """
    if info.op == "leave":
        return f"* {_group(info.group)}: you left"
    members = ", ".join(clean(m) for m in sorted(info.members, key=name_key)) or "(none)"
    mode = " (invite-only)" if info.invite_only else ""
    return f"* {_group(info.group)}: owner {clean(info.owner)}, members {members}{mode}"


def format_groups(groups: Iterable[f.GroupSummary]) -> str:
    """Reply to ``/groups``: ``* groups: #devs (owner alice), #ops (owner bob, invite-only)`` or ``* groups: none``."""
    shown = [
        f"{_group(g.group)} (owner {clean(g.owner)}{', invite-only' if g.invite_only else ''})"
        for g in sorted(groups, key=lambda g: name_key(g.group))
    ]
    return f"* groups: {', '.join(shown) if shown else 'none'}"


def format_group_event(event: f.GroupEvent) -> str:
    """``* #devs: bob joined`` and the like (docs/cli.md lists them all)."""
    user = clean(event.user)
    by = f" by {clean(event.by)}" if event.by else ""
    if event.event == "joined":
        what = f"{user} joined"
    elif event.event == "left":
        what = f"{user} left"
    elif event.event == "invited":
        what = f"{user} was invited{by}"
    elif event.event == "removed":
        what = f"{user} was removed{by}"
    elif event.event == "owner":
        what = f"{user} is now the owner"
    elif event.event == "updated" and event.invite_only is not None:
        what = "invite-only now" if event.invite_only else "open to all now"
    else:  # an event this client does not know (or an update without a setting)
        what = f"{clean(event.event)} {user}{by}"
    return f"* {_group(event.group)}: {what}"


def format_closed(closed: Closed) -> str:
    if closed.code is None:
        return format_error("disconnected", "the connection to the server was lost")
    try:
        what = f"{closed.code} {CloseCode(closed.code).name.lower().replace('_', ' ')}"
    except ValueError:
        what = str(closed.code)
    reason = f": {closed.reason}" if closed.reason else ""
    return format_error("disconnected", f"the server closed the connection ({what}){reason}")


def format_event(event: Event, me: str, tz: dt.tzinfo | None = None) -> str | None:
    """The output line of a pushed event, or ``None`` for events the CLI does not show.

    Not shown: your own presence (you know you are online) and frame types this
    client does not know.
    """
    if isinstance(event, f.Message):
        return format_message(event, me, tz)
    if isinstance(event, f.Presence):
        return None if _same_user(f"@{event.user}", me) else format_presence(event)
    if isinstance(event, f.PresenceBatch):
        lines = [format_presence(f.Presence(user=user, status=status))
                 for users, status in ((event.online, "online"), (event.offline, "offline"))
                 for user in users if not _same_user(f"@{user}", me)]
        return "\n".join(lines) or None
    if isinstance(event, f.Online):  # an unsolicited snapshot (the server resynchronised presence)
        return format_who(event.users, event.total)
    if isinstance(event, f.GroupEvent):
        return format_group_event(event)
    if isinstance(event, f.Error):
        return format_error(event.code, event.message)
    if isinstance(event, Closed):
        return format_closed(event)
    if isinstance(event, StateChanged):
        return format_state(event)
    return None


def format_state(event: StateChanged) -> str:
    """``* reconnecting…`` / ``* connected to URL`` (and a warning if history no longer reached back)."""
    if event.state == "reconnecting":
        return f"* connection to {event.url} lost; reconnecting…"
    line = f"* connected to {event.url}"
    lost = sorted(stream for stream, ok in (event.recovered or {}).items() if not ok)
    if lost:
        names = ", ".join("broadcasts" if s == "*" else "direct messages" for s in lost)
        line += f" (some older {names} could not be recovered; see /history)"
    return line


def prompt_text(target: str | None) -> str:
    if target is None:
        return "> "
    return "all> " if target == BROADCAST else f"{target.removeprefix('@')}> "


def describe_login_failure(exc: BaseException, user: str, server: str) -> tuple[str, int]:
    """The ``!`` line and exit status for a failed connect or login."""
    if isinstance(exc, UsernameTaken):
        line = f"! Username Exists: {user} is already logged in elsewhere; choose another name (username_taken)"
        return line, EXIT_LOGIN
    if isinstance(exc, BadPassword):
        return f"! Wrong Password: the password for {user} is not correct (bad_password)", EXIT_LOGIN
    if isinstance(exc, InvalidUsername):
        return f"! Invalid Username: {clean(exc.message)} (invalid_username)", EXIT_LOGIN
    if isinstance(exc, ChatError):
        status = EXIT_LOGIN if isinstance(exc, LoginError) else EXIT_CONNECTION
        return f"! Login Failed: {clean(exc.message)} ({exc.code.value})", status
    if isinstance(exc, Disconnected):
        return f"! Cannot Connect: {server} closed the connection during login", EXIT_CONNECTION
    if isinstance(exc, TimeoutError):
        return f"! Cannot Connect: no answer from {server} in time", EXIT_CONNECTION
    if isinstance(exc, InvalidURI):
        return f"! Cannot Connect: {server} is not a ws:// or wss:// URL", EXIT_CONNECTION
    if isinstance(exc, WebSocketException):
        return f"! Cannot Connect: {server} did not accept a WebSocket connection ({exc})", EXIT_CONNECTION
    if isinstance(exc, OSError):
        why = exc.strerror or str(exc) or type(exc).__name__
        return f"! Cannot Connect: {server} is unreachable ({why})", EXIT_CONNECTION
    return f"! Cannot Connect: {server}: {exc}", EXIT_CONNECTION


# -- the session -------------------------------------------------------------


def emit(line: str) -> None:
    print(line, flush=True)


def emit_error(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Session:
    """Runs commands on a logged-in ChatClient and prints what arrives."""

    def __init__(
        self,
        chat: ChatClient,
        *,
        out: Callable[[str], None] = emit,
        err: Callable[[str], None] = emit_error,
        tz: dt.tzinfo | None = None,
    ) -> None:
        self.chat = chat
        self.me = chat.user or ""
        self.out = out
        self.err = err
        self.tz = tz
        self.target: str | None = None
        self.failures = 0
        self.files: dict[str, FileRef] = {}  # every file seen in this session, by id, for /get

    def fail(self, code: str, message: str) -> None:
        self.failures += 1
        self.out(format_error(code, message))

    async def execute(self, command: Command) -> bool:
        """Run one command; False means quit.  Raises Disconnected when the connection is gone."""
        try:
            return await self._execute(command)
        except ChatError as exc:
            self.fail(exc.code.value, exc.message)
        except TimeoutError:
            self.fail("timeout", f"no reply from the server within {self.chat.request_timeout:g}s")
        except FileTransferError as exc:
            self.fail("download_failed", str(exc))
        except OSError as exc:
            self.fail("file_error", f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        return True

    async def _execute(self, command: Command) -> bool:
        if isinstance(command, Quit):
            return False
        if isinstance(command, Help):
            for line in HELP:
                self.out(f"* {line}")
        elif isinstance(command, Who):
            self.out(format_who(await self.chat.who()))
        elif isinstance(command, To):
            self.target = command.to
            self.out(format_target(command.to))
        elif isinstance(command, Say):
            if self.target is None:
                self.fail("no_recipient", "nobody to send to: use /to NAME, /msg NAME TEXT or /all TEXT")
            else:
                await self.send(self.target, command.body)
        elif isinstance(command, Msg):
            await self.send(command.to, command.body)
        elif isinstance(command, History):
            conv = command.conv or self.target or BROADCAST
            messages = await self.chat.history(conv, limit=command.limit)
            self.out(format_history_header(conv, len(messages)))
            for message in messages:
                self._remember(message)
                self.out(format_message(message, self.me, self.tz))
        elif isinstance(command, SendFile):
            await self.send_file(command.to, command.path)
        elif isinstance(command, GetFile):
            await self.get_file(command.id, command.folder)
        elif isinstance(command, GroupOp):
            user = command.user.removeprefix("@") if command.user else None
            info = await self.chat.group(command.op, command.group, user=user, invite_only=command.invite_only)
            self.out(format_group_info(info))
        elif isinstance(command, ListGroups):
            self.out(format_groups(await self.chat.groups()))
        return True

    def _remember(self, message: f.Message) -> None:
        file = file_of(message)
        if file is not None:
            self.files[file.id] = file

    async def send_file(self, to: str, path: str) -> None:
        """Upload, then send; a DM is echoed (broadcast and group messages come back from the server)."""
        source, size = await asyncio.to_thread(_local_file, path)
        if size is None:
            self.fail("no_file", f"{clean(str(source))} is not a file")
            return
        self.out(f"* uploading {clean(source.name)} ({human_size(size)})…")
        ack, file = await send_file(self.chat, to, source)
        self.files[file.id] = file
        if to == BROADCAST or to.startswith("#"):
            return
        fields: dict[str, Any] = {"id": ack.id, "from_": self.me, "to": to, "body": "", "ts": ack.ts, "file": file}
        self.out(format_message(f.Message(**fields), self.me, self.tz))

    async def get_file(self, file_id: str, folder: str | None) -> None:
        """Download a file seen in this session (any unique start of its id) or any file by its full id."""
        matches = [ref for sha, ref in self.files.items() if sha.startswith(file_id)]
        if len(matches) > 1:
            self.fail("usage", f"{file_id} is the start of {len(matches)} file ids: give more of it")
            return
        if not matches and not is_sha256(file_id):
            self.fail("not_found", f"no file starting with {file_id} was shown here: give its full 64-digit id")
            return
        target = matches[0] if matches else file_id
        saved = await download(self.chat, target, folder or ".")
        _, size = await asyncio.to_thread(_local_file, saved)
        self.out(f"* saved {clean(saved.name)} ({human_size(size or 0)}) to {clean(str(saved))}")

    async def send(self, to: str, body: str) -> None:
        """Send and wait for the ack; a DM is echoed then (broadcast and group messages come back from the server)."""
        ack = await self.chat.send(to, body)
        if to == BROADCAST or to.startswith("#"):
            return
        self.out(format_message(f.Message(id=ack.id, from_=self.me, to=to, body=body, ts=ack.ts), self.me, self.tz))
        key = name_key(to[1:])
        # Only a complete list can tell that someone is offline (a capped one is its first page).
        if self.chat.online_total is None and not any(name_key(u) == key for u in self.chat.online):
            name = clean(to[1:])
            self.out(f"* {name} is offline; they get the message when they log in")

    async def pump(self) -> Closed:
        """Print pushed events until the connection ends; returns how it ended."""
        async for event in self.chat.events():
            if isinstance(event, Closed):
                return event
            if isinstance(event, f.Message):
                self._remember(event)
            line = format_event(event, self.me, self.tz)
            if line is not None:
                self.out(line)
        return self.chat.closed or Closed(None, "")  # pragma: no cover - events() always ends with Closed

    async def converse(self, read_line: Callable[[], Awaitable[str | None]], *, linger: float = 0.0) -> int:
        """Read and run lines until /quit or end of input (``None``), printing events meanwhile.

        After end of input, keep printing events for ``linger`` seconds.  Returns
        the exit status: EXIT_CONNECTION if the connection ended first.
        """
        pump = asyncio.create_task(self.pump(), name="chinwag-cli-events")
        try:
            while True:
                reader = asyncio.ensure_future(read_line())
                await asyncio.wait({reader, pump}, return_when=asyncio.FIRST_COMPLETED)
                if not reader.done():
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, EOFError, KeyboardInterrupt):
                        await reader
                    return self._lost(pump.result())
                line = reader.result()
                if line is None:
                    break
                try:
                    command = parse_line(line)
                except CommandError as exc:
                    self.fail(exc.code, exc.message)
                    continue
                if command is None:
                    continue
                try:
                    if not await self.execute(command):
                        return EXIT_OK
                except Disconnected:
                    return self._lost(await pump)
            if linger > 0:
                await asyncio.wait({pump}, timeout=linger)
                if pump.done():
                    return self._lost(pump.result())
            return EXIT_OK
        finally:
            await self.chat.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pump, 5)  # prints what arrived before the close

    def _lost(self, closed: Closed) -> int:
        self.err(format_closed(closed))
        return EXIT_CONNECTION


# -- input -------------------------------------------------------------------


class StdinLines:
    """Lines of a file descriptor, read by a daemon thread; ``None`` marks the end.

    A thread (rather than the event loop) reads, so it works for pipes, files
    and terminals alike, and a blocked read never delays exit.  It reads the
    raw descriptor, not ``sys.stdin``, so no buffer lock is held at shutdown.
    """

    def __init__(self, fd: int = 0, encoding: str = "utf-8") -> None:
        self.fd = fd
        self.encoding = encoding
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.thread = threading.Thread(target=self._run, name="chinwag-stdin", daemon=True)
        self.thread.start()

    async def readline(self) -> str | None:
        return await self.queue.get()

    def _run(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                if not self._post(raw.decode(self.encoding, "replace")):
                    return
        if pending:
            self._post(pending.decode(self.encoding, "replace"))
        self._post(None)

    def _post(self, item: str | None) -> bool:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True


async def _interactive(session: Session) -> int:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    prompt: PromptSession[str] = PromptSession()

    async def read_line() -> str | None:
        try:
            return await prompt.prompt_async(lambda: prompt_text(session.target))
        except (EOFError, KeyboardInterrupt):
            return None

    with patch_stdout():
        session.out("* type /help for commands")
        return await session.converse(read_line)


# -- entry point ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    server: str  # one URL, or several separated by commas (tried in turn, also on reconnect)
    user: str
    password: str
    wait: float
    interactive: bool
    reconnect: bool = True


async def run_client(options: Options) -> int:
    """Log in, then chat until the input ends; returns the exit status."""
    try:
        urls = [u.strip() for u in options.server.split(",") if u.strip()]
        chat = await ChatClient.open(urls, options.user, options.password, reconnect=options.reconnect)
    except (ChatError, OSError, TimeoutError, WebSocketException) as exc:
        line, status = describe_login_failure(exc, options.user, options.server)
        emit_error(line)
        return status
    session = Session(chat)
    session.out(f"* logged in as {clean(chat.user or options.user)} on {chat.url}")
    session.out(format_who(chat.online, chat.online_total))
    if options.interactive:
        return await _interactive(session)
    status = await session.converse(StdinLines(sys.stdin.fileno()).readline, linger=options.wait)
    if status == EXIT_OK and session.failures:
        return EXIT_COMMANDS_FAILED
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chinwag",
        description="Chinwag chat client. On a terminal it is interactive; with stdin redirected it runs "
        "the commands it reads, one per line (see docs/cli.md).",
    )
    parser.add_argument(
        "--server",
        metavar="URL",
        help=f"gateway URL, or several separated by commas (env CHINWAG_SERVER; default {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--no-reconnect",
        dest="reconnect",
        action="store_false",
        help="exit when the connection drops instead of reconnecting (and resuming) by itself",
    )
    parser.add_argument("--user", metavar="NAME", help="username; registered on first login (env CHINWAG_USER)")
    parser.add_argument(
        "--password",
        metavar="PASSWORD",
        help="password (visible to other users in ps: prefer CHINWAG_PASSWORD, --password-file or the prompt)",
    )
    parser.add_argument("--password-file", metavar="PATH", help="read the password from the first line of PATH")
    parser.add_argument(
        "--wait",
        metavar="SECONDS",
        type=float,
        default=0.0,
        help="scripted mode: keep printing incoming events for SECONDS after the end of input (default 0)",
    )
    return parser


def resolve_password(
    args: argparse.Namespace, env: Mapping[str, str], prompt: Callable[[], str] | None
) -> str | None:
    """--password, then --password-file, then CHINWAG_PASSWORD, then the prompt (if any)."""
    if args.password:
        return str(args.password)
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as fh:
            return fh.readline().rstrip("\r\n")
    if env.get("CHINWAG_PASSWORD"):
        return env["CHINWAG_PASSWORD"]
    return prompt() if prompt is not None else None


def _isatty(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    env = os.environ
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")
    stdin_tty = _isatty(sys.stdin)
    server = args.server or env.get("CHINWAG_SERVER") or DEFAULT_SERVER
    if not (args.wait >= 0 and args.wait < float("inf")):
        parser.error("--wait must be a number of seconds, 0 or more")
    try:
        user = args.user or env.get("CHINWAG_USER") or (input("Username: ").strip() if stdin_tty else "")
        if not user:
            parser.error("no username: pass --user NAME or set CHINWAG_USER")
        try:
            normalize_name(user)
        except InvalidUsername as exc:
            parser.error(f"invalid username {user!r}: {exc.message}")
        try:
            password = resolve_password(args, env, (lambda: getpass.getpass(f"Password for {user}: ")) if stdin_tty
                                        else None)
        except OSError as exc:
            parser.error(f"cannot read the password file: {exc.strerror or exc}")
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    if not password:
        parser.error("no password: set CHINWAG_PASSWORD, pass --password-file PATH, or run on a terminal")

    options = Options(server, user, password, args.wait, interactive=stdin_tty and _isatty(sys.stdout),
                      reconnect=args.reconnect)
    status = EXIT_INTERRUPTED

    async def _main() -> None:
        nonlocal status
        status = await run_client(options)

    try:
        run(_main())
    except BrokenPipeError:  # stdout closed under us (e.g. piped into head)
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_CONNECTION
    return status
