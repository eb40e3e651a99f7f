"""The ``chinwag`` CLI's output: every line it prints, and its exit statuses, without any I/O.

The ``format_*`` functions turn protocol events into the output lines that
docs/cli.md specifies (scripts and tests depend on them, so they are stable).
Every output line starts with one marker: ``[`` a chat message, ``*`` status
and replies, ``!`` an error.  Bodies are printed on one line with control
characters escaped (:func:`clean`), so one line is always one event.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from protocol import frames as f
from protocol.errors import BadPassword, ChatError, CloseCode, InvalidUsername, LoginError, UsernameTaken
from protocol.files import FileRef, human_size
from protocol.names import BROADCAST, name_key

from .chat import Closed, Event, StateChanged
from .errors import BadURL, ClientError, ConnectFailed, Disconnected, FileTransferError, HandshakeFailed
from .files import file_of

# Exit statuses (docs/cli.md lists them).
EXIT_OK = 0
EXIT_CONNECTION = 1  # could not connect, or the connection was lost
EXIT_USAGE = 2  # bad command line (argparse uses 2 as well)
EXIT_LOGIN = 3  # login refused: username exists, wrong password, invalid name
EXIT_COMMANDS_FAILED = 4  # scripted mode: at least one command failed
EXIT_INTERRUPTED = 130  # Ctrl-C outside the prompt


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


def describe_login_failure(exc: ChatError | ClientError, user: str, server: str) -> tuple[str, int]:
    """The ``!`` line and exit status for a failed connect or login: the server said no, or did not answer."""
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
    if isinstance(exc, TimeoutError):  # ConnectTimeout, or RequestTimeout waiting for the welcome
        return f"! Cannot Connect: no answer from {server} in time", EXIT_CONNECTION
    if isinstance(exc, BadURL):
        return f"! Cannot Connect: {server} is not a ws:// or wss:// URL", EXIT_CONNECTION
    if isinstance(exc, HandshakeFailed):
        return f"! Cannot Connect: {server} did not accept a WebSocket connection ({exc})", EXIT_CONNECTION
    if isinstance(exc, ConnectFailed):
        return f"! Cannot Connect: {server} is unreachable ({exc})", EXIT_CONNECTION
    return f"! Cannot Connect: {server}: {exc}", EXIT_CONNECTION


def describe_failure(exc: ClientError, request_timeout: float) -> tuple[str, str]:
    """The ``!`` line's code and text for a command that got no answer (the connection is still up)."""
    if isinstance(exc, FileTransferError):
        return "download_failed", str(exc)
    if isinstance(exc, TimeoutError):
        return "timeout", f"no reply from the server within {request_timeout:g}s"
    return "no_answer", clean(str(exc))
