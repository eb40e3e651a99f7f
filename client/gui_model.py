"""What the Tk client shows, without Tk: addresses, times, wording, and the conversation model.

Kept apart from the widgets (:mod:`client.gui`, :mod:`client.gui_groups`) so
the rules are plain functions and data: what users may type as a server
address, how a close code or a failed login reads, and what one conversation
holds.  A :class:`Conversation` is any pane's content, whoever it is with: one
person (``"@bob"``), a group (``"#devs"``) or everyone (``"*"``).  Lines typed
but not yet acknowledged by the server are kept as :class:`Pending` so they
show at once ("sending…"), turn into the stored message when the ack comes,
and say so when sending failed, instead of vanishing while the client
reconnects.
"""

from __future__ import annotations

import datetime as dt
import itertools
import urllib.parse
from dataclasses import dataclass, field
from typing import Literal

from websockets.exceptions import InvalidHandshake, InvalidURI

from client.chat import Closed
from protocol import frames as f
from protocol.errors import (
    BadPassword,
    ChatError,
    CloseCode,
    InvalidUsername,
    Unavailable,
    UsernameTaken,
)
from protocol.files import FileRef
from protocol.names import id_tuple, name_key

DEFAULT_PORT = 9000
DEFAULT_SERVER = f"127.0.0.1:{DEFAULT_PORT}"

DialogKind = Literal["warning", "error", "info"]


# -- pure helpers -------------------------------------------------------------


def server_url(text: str, default_port: int = DEFAULT_PORT) -> str:
    """Turn what users type (``host``, ``host:port``, ``ws://host[:port]``) into a ws:// URL.

    The original client asked for a bare address; people also paste URLs.  Both
    work, and a missing port means the chat server's default, 9000.
    """
    raw = text.strip()
    if not raw:
        raise ValueError("enter the server's address, e.g. 127.0.0.1:9000")
    if "://" not in raw:
        if raw.count(":") > 1 and not raw.startswith("["):  # a bare IPv6 address
            raw = f"[{raw}]"
        raw = "ws://" + raw
    parts = urllib.parse.urlsplit(raw)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"unsupported scheme {parts.scheme!r}: use ws:// or wss://")
    host = parts.hostname
    if not host:
        raise ValueError("the server address has no host name")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the port must be a number from 1 to 65535") from None
    if port is None:
        port = default_port
    shown_host = f"[{host}]" if ":" in host else host
    return urllib.parse.urlunsplit((parts.scheme, f"{shown_host}:{port}", parts.path, parts.query, ""))


def server_urls(text: str, default_port: int = DEFAULT_PORT) -> list[str]:
    """Several addresses separated by commas or spaces: the client fails over between them."""
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts:
        raise ValueError("enter the server's address, e.g. 127.0.0.1:9000")
    return [server_url(p, default_port) for p in parts]


def format_time(ts_ms: int, now: dt.datetime | None = None) -> str:
    """``14:03`` for today's messages, ``12 Mar 14:03`` for older ones (local time)."""
    if ts_ms <= 0:
        return "--:--"
    when = dt.datetime.fromtimestamp(ts_ms / 1000)
    now = now or dt.datetime.now()
    if when.date() == now.date():
        return when.strftime("%H:%M")
    return when.strftime("%d %b %H:%M")


_CLOSE_WORDS = {
    "GOING_AWAY": "the server is shutting down",
    "LOGIN_FAILED": "the server refused the login",
    "TAKEN_OVER": "you logged in again somewhere else",
    "SESSION_LOST": "the server lost your session",
    "SLOW_CONSUMER": "the connection was too slow",
}


def describe_close(closed: Closed) -> str:
    """Why the connection ended, in words (for the status line)."""
    if closed.code is None:
        return "the connection was lost"
    try:
        name = CloseCode(closed.code).name
    except ValueError:
        return f"the server closed the connection (code {closed.code})"
    if name in _CLOSE_WORDS:
        return _CLOSE_WORDS[name]
    what = name.lower().replace("_", " ")
    reason = f": {closed.reason}" if closed.reason and closed.reason not in what else ""
    return f"the server closed the connection ({what}{reason})"


def login_failure(exc: BaseException, user: str, url: str) -> tuple[DialogKind, str, str]:
    """The dialog (kind, title, text) explaining why connecting failed."""
    if isinstance(exc, UsernameTaken):
        return ("warning", "Username Exists",
                f"The username \u201c{user}\u201d is already in use by someone online.\n\nPlease choose another name.")
    if isinstance(exc, BadPassword):
        return ("error", "Wrong Password",
                f"Wrong password for \u201c{user}\u201d.\n\n"
                "That name is registered: enter its password, or choose another name.")
    if isinstance(exc, InvalidUsername):
        return ("warning", "Invalid Username", f"\u201c{user}\u201d cannot be used: {exc.message}.")
    if isinstance(exc, Unavailable):
        return ("error", "Server Unavailable",
                f"The chat server at {url} cannot log you in right now.\n\nPlease try again in a moment.")
    if isinstance(exc, ChatError):
        return ("error", "Login Failed", f"The server refused the login: {exc.message}.")
    if isinstance(exc, InvalidURI):
        return ("error", "Bad Server Address", f"{url} is not a valid server address.")
    if isinstance(exc, OSError | TimeoutError | InvalidHandshake):
        why = reason(exc)
        return ("error", "Server Unreachable",
                f"Cannot reach the chat server at {url}.\n\n{why}\n\n"
                "Check the address and that the server is running.")
    return ("error", "Connection Failed", f"Could not connect to {url}: {reason(exc)}")


def error_text(exc: BaseException | None) -> str:
    """What went wrong, as a phrase for a window or its log (never a traceback): the OS's
    sentence for an OSError (not "[Errno 98] ..."), else the exception's text or its type."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, OSError) and exc.strerror:
        return str(exc.strerror)
    text = str(exc).strip()
    return text or type(exc).__name__


def reason(exc: BaseException) -> str:
    """The chat window's wording: network failures in words, as a sentence."""
    if isinstance(exc, TimeoutError):
        return "The server did not answer in time."
    if isinstance(exc, ConnectionRefusedError):
        return "The connection was refused (nothing is listening on that port)."
    text = error_text(exc)
    return text[:1].upper() + text[1:]


# -- model --------------------------------------------------------------------

_tokens = itertools.count(1)


@dataclass
class Pending:
    """A line sent but not acknowledged yet: shown at once as "sending…", or why it failed."""

    body: str
    ts: int  # local time it was typed (ms)
    file: FileRef | None = None
    error: str | None = None  # set when sending failed for good
    token: int = field(default_factory=lambda: next(_tokens))


@dataclass
class Conversation:
    """One conversation pane's content: every message by id, local notes, lines still being sent."""

    peer: str  # display name: the other user, the group, or "everyone"
    address: str = ""  # where sends go: "@Bob", "#Devs" or "*"
    messages: dict[str, f.Message] = field(default_factory=dict)
    unread: int = 0
    history_loaded: bool = False
    loading: bool = False
    notes: list[tuple[int, str]] = field(default_factory=list)  # (ts ms, text): local notices
    pending: dict[int, Pending] = field(default_factory=dict)  # token -> line awaiting its ack

    def add(self, msg: f.Message) -> bool:
        """Store a message; False if it was already there (echoes, history overlap)."""
        if msg.id in self.messages:
            return False
        self.messages[msg.id] = msg
        return True

    def ordered(self) -> list[f.Message]:
        return sorted(self.messages.values(), key=lambda m: sort_key(m.id))

    def is_last(self, msg: f.Message) -> bool:
        """True if ``msg`` sorts after every other message (so it can simply be appended)."""
        key = sort_key(msg.id)
        return all(sort_key(other) <= key for other in self.messages)

    def lines(self) -> list[f.Message | str]:
        """Messages and notes in time order (messages by id among themselves)."""
        items: list[tuple[int, int, f.Message | str]] = [(m.ts, 0, m) for m in self.ordered()]
        items += [(ts, 1, note) for ts, note in self.notes]
        items.sort(key=lambda item: (item[0], item[1]))
        return [item for _, _, item in items]

    def start_sending(self, body: str, file: FileRef | None = None) -> Pending:
        line = Pending(body, now_ms(), file)
        self.pending[line.token] = line
        return line

    def sent(self, token: int, msg: f.Message) -> None:
        """The ack came: the pending line becomes the stored message (the echo may have come first)."""
        self.pending.pop(token, None)
        self.add(msg)

    def failed(self, token: int, why: str) -> None:
        line = self.pending.get(token)
        if line is not None:
            line.error = why


def sort_key(message_id: str) -> tuple[int, int]:
    try:
        return id_tuple(message_id)
    except ValueError:
        return (0, 0)


def dm_key(name: str) -> str:
    """The conversation key of a private chat with ``name`` (any case, with or without ``@``)."""
    return "@" + name_key(name.removeprefix("@"))


def group_key(name: str) -> str:
    """The conversation key of a group (any case, with or without ``#``)."""
    return "#" + name_key(name.removeprefix("#"))


def now_ms() -> int:
    return int(dt.datetime.now().timestamp() * 1000)
