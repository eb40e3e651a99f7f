"""``chinwag``: the terminal chat client.

    chinwag --server ws://HOST:9000 --user alice

This module is the entry point: the command line, the password, logging in.
The rest is split by concern, the first two testable without any I/O:

* :mod:`client.cli_commands`: what a typed line means (:func:`parse_line`);
* :mod:`client.cli_format`: every line printed (``format_*``) and the exit statuses;
* :mod:`client.cli_console`: the loop, :class:`Console`, that runs commands on a
  :class:`~client.chat.ChatClient` and prints events as they arrive, fed by
  prompt_toolkit on a terminal or by stdin line by line when scripted.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from client.chat import ChatClient
from common.runtime import run
from protocol.errors import ChatError, InvalidUsername
from protocol.names import normalize_name

from .cli_console import Console, StdinLines, emit_error, interactive
from .cli_format import (
    EXIT_COMMANDS_FAILED,
    EXIT_CONNECTION,
    EXIT_INTERRUPTED,
    EXIT_LOGIN,
    EXIT_OK,
    EXIT_USAGE,
    clean,
    describe_login_failure,
    format_who,
)
from .errors import ClientError

__all__ = [
    "EXIT_COMMANDS_FAILED", "EXIT_CONNECTION", "EXIT_INTERRUPTED", "EXIT_LOGIN", "EXIT_OK", "EXIT_USAGE",
    "Options", "build_parser", "main", "resolve_password", "run_client",
]

DEFAULT_SERVER = "ws://127.0.0.1:9000"

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
    except (ChatError, ClientError) as exc:  # the server said no, or did not answer
        line, status = describe_login_failure(exc, options.user, options.server)
        emit_error(line)
        return status
    console = Console(chat)
    console.out(f"* logged in as {clean(chat.user or options.user)} on {chat.url}")
    console.out(format_who(chat.online, chat.online_total))
    if options.interactive:
        return await interactive(console)
    status = await console.converse(StdinLines(sys.stdin.fileno()).readline, linger=options.wait)
    if status == EXIT_OK and console.failures:
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
