"""The ``chinwag`` CLI's interactive half: run commands against a ChatClient, print what arrives.

:class:`Console` runs the commands of :mod:`client.cli_commands` on a
logged-in :class:`~client.chat.ChatClient` and prints events as they arrive
with :mod:`client.cli_format`, fed by prompt_toolkit on a terminal
(:func:`interactive`) or by :class:`StdinLines` line by line when scripted.
A command the server refuses (:class:`~protocol.errors.ChatError`) or that gets
no answer (:class:`~client.errors.ClientError`) prints one ``!`` line and the
session goes on; only the end of the connection (``Disconnected``) ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from protocol import frames as f
from protocol.client_state import known_offline
from protocol.errors import ChatError
from protocol.files import FileRef, human_size, is_sha256
from protocol.names import BROADCAST

from .chat import ChatClient, Closed
from .cli_commands import (
    HELP,
    Command,
    CommandError,
    GetFile,
    GroupOp,
    Help,
    ListGroups,
    ListOnline,
    Msg,
    Quit,
    Say,
    SendFile,
    ShowHistory,
    To,
    parse_line,
)
from .cli_format import (
    EXIT_CONNECTION,
    EXIT_OK,
    clean,
    describe_failure,
    format_closed,
    format_error,
    format_event,
    format_group_info,
    format_groups,
    format_history_header,
    format_message,
    format_target,
    format_who,
    prompt_text,
)
from .errors import ClientError, Disconnected
from .files import download, file_of, send_file


def emit(line: str) -> None:
    print(line, flush=True)


def emit_error(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Console:
    """Runs commands on a logged-in ChatClient and prints what arrives (one per ``chinwag`` run)."""

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
        except Disconnected:
            raise  # the connection is gone for good: converse() reports how it ended
        except ChatError as exc:  # the server said no
            self.fail(exc.code.value, exc.message)
        except ClientError as exc:  # no answer (in time), or a download that went wrong
            self.fail(*describe_failure(exc, self.chat.request_timeout))
        except OSError as exc:  # a local file: /send of one that cannot be read, /get into a folder we cannot write
            self.fail("file_error", f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        return True

    async def _execute(self, command: Command) -> bool:
        if isinstance(command, Quit):
            return False
        if isinstance(command, Help):
            for line in HELP:
                self.out(f"* {line}")
        elif isinstance(command, ListOnline):
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
        elif isinstance(command, ShowHistory):
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
        if known_offline(to[1:], self.chat.online, self.chat.online_total):
            self.out(f"* {clean(to[1:])} is offline; they get the message when they log in")

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


async def interactive(console: Console) -> int:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    prompt: PromptSession[str] = PromptSession()

    async def read_line() -> str | None:
        try:
            return await prompt.prompt_async(lambda: prompt_text(console.target))
        except (EOFError, KeyboardInterrupt):
            return None

    with patch_stdout():
        console.out("* type /help for commands")
        return await console.converse(read_line)


def _local_file(path: str | Path) -> tuple[Path, int | None]:
    """The path with ``~`` expanded, and the file's size (None if it is not a regular file)."""
    source = Path(path).expanduser()
    return source, source.stat().st_size if source.is_file() else None
