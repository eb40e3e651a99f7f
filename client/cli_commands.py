"""The ``chinwag`` CLI's commands: what a typed line means, without any I/O.

:func:`parse_line` turns one line into a command (:class:`Msg`,
:class:`ListOnline`, :class:`GroupOp`, ...) or raises :class:`CommandError`;
:data:`USAGE` and :data:`HELP` are the texts docs/cli.md shows.  The command
classes are named for what the user asked (``ListOnline`` for ``/who``,
``ShowHistory`` for ``/history``), not after the protocol frames that carry
them out (:class:`protocol.frames.Who`, :class:`protocol.frames.History`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol import frames as f
from protocol.errors import InvalidUsername
from protocol.names import BROADCAST, normalize_name

from .cli_format import clean

DEFAULT_HISTORY = 20
MAX_HISTORY = f.MAX_HISTORY_LIMIT

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
class ListOnline:
    """``/who``: everyone online (not the protocol's ``who`` frame: that is one page of them)."""


@dataclass(frozen=True, slots=True)
class ShowHistory:
    """``/history``: show the last ``limit`` messages of ``conv`` (``None``: the current recipient, else broadcast)."""

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


Command = Msg | Say | To | ListOnline | ShowHistory | Help | Quit | SendFile | GetFile | GroupOp | ListGroups


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
_NO_ARGS: dict[str, Command] = {"who": ListOnline(), "help": Help(), "quit": Quit(), "groups": ListGroups()}
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
        conv = parse_recipient(args[0]) if args else None
        limit = parse_count(args[1]) if len(args) == 2 else DEFAULT_HISTORY
        return ShowHistory(conv, limit)
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
    """A /send or /history target: ``*`` or ``all`` is everyone (the broadcast), ``#name`` a group,
    anything else a user (``@all`` is the user all)."""
    if raw == BROADCAST or raw.lower() == "all":
        return BROADCAST
    if raw.startswith("#"):
        return parse_group(raw)
    return parse_user(raw)



def _unquote(text: str) -> str:
    """A path typed with surrounding quotes (for spaces) without them."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text



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
