"""The asyncio chat client every Chinwag front end uses (CLI, Tk GUI, load tester, tests).

    chat = await ChatClient.open(["ws://gw1:9000", "ws://gw2:9000"], "alice", "secret")
    ack = await chat.send("@bob", "hi")
    async for event in chat.events():
        ...

Requests (``send``, ``who``, ``history``, ``ping``, ``group``, ...) are
matched to their replies by ``ref`` and raise the :mod:`protocol.errors` class
of any ``error`` reply, or a :class:`client.errors.ClientError` when no answer
came.  Everything the server pushes (messages, presence, errors without a
ref), connection state changes and the final close arrive through
:meth:`~client.connection.Connection.events`.

Nothing is lost across failures, and users never write retry loops: when the
connection drops the client reconnects by itself (capped, jittered backoff,
rotating through the URLs), takes its name back with its session token,
resumes every stream after the last message id it saw, and re-sends every
request still unanswered with its original ``ref`` (the server acks a retried
send with the original id instead of storing it twice).  Messages are handed
on at most once: one whose id is not above the last one of its stream is
counted in ``duplicates`` and dropped.

Three layers, one concern each:

* :class:`protocol.client_state.ClientState`, sans-I/O: what the client knows
  and decides (positions, dedupe, replies matched by ref, who is online, groups);
* :class:`client.connection.Connection`: its asyncio adapter (sockets, login,
  reconnects with backoff, the reader task, futures and timeouts);
* :class:`ChatClient` (here): the typed requests of the protocol, and the
  core's state as attributes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from common.backoff import Backoff
from protocol import frames as f
from protocol.errors import RateLimited, Unavailable
from protocol.files import FileRef

from .connection import Closed, Connection, Event, StateChanged
from .errors import ClientError, Disconnected

__all__ = ["ChatClient", "ClientError", "Closed", "Disconnected", "Event", "StateChanged"]


class ChatClient(Connection):
    """A logged-in chat user: one method per request, the session's state as attributes."""

    # -- the core's state, as attributes ----------------------------------------

    @property
    def user(self) -> str | None:
        return self.core.user

    @property
    def welcome(self) -> f.Welcome | None:
        return self.core.welcome

    @property
    def session(self) -> str | None:
        """Token that takes our name back after a drop (settable: a new client can take a session over)."""
        return self.core.session

    @session.setter
    def session(self, token: str | None) -> None:
        self.core.session = token

    @property
    def positions(self) -> dict[str, str]:
        """Stream -> last message id seen (settable: a new client can resume where another stopped)."""
        return self.core.positions

    @positions.setter
    def positions(self, positions: dict[str, str]) -> None:
        self.core.positions = positions

    @property
    def online(self) -> set[str]:
        """Who is online: everyone, or, when the server capped its list (``online_total`` is not None),
        its first page plus everyone seen coming online since.  :meth:`who` pages through everyone."""
        return self.core.online

    @property
    def online_total(self) -> int | None:
        return self.core.online_total

    @property
    def duplicates(self) -> int:
        return self.core.duplicates

    # -- requests -----------------------------------------------------------

    @classmethod
    async def open(cls, urls: str | Sequence[str], user: str, password: str, **kwargs: Any) -> ChatClient:
        """Connect (first reachable URL) and log in; raises the login's ChatError, or a ClientError."""
        client = cls(urls, **kwargs)
        await client.connect()
        try:
            await client.login(user, password)
        except BaseException:
            await client.close()
            raise
        return client

    async def send(self, to: str, body: str = "", *, ref: str | None = None, file: FileRef | None = None) -> f.Ack:
        """Send to ``"@user"``, ``"#group"`` or ``"*"`` (text, a stored file, or both); returns the ack.

        Retried with the same ``ref`` while the server answers ``unavailable``
        (Redis away) or ``rate_limited`` (after the wait it asks for) until
        ``request_timeout``; the server stores it once.
        """
        frame = f.Send(to=to, body=body, file=file, ref=ref or self.core.next_ref())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        backoff = Backoff(base=0.1, cap=1.0)
        while True:
            try:
                reply = await self._request(frame, max(0.01, deadline - loop.time()))
                assert isinstance(reply, f.Ack)
                return reply
            except (Unavailable, RateLimited) as exc:
                delay = exc.retry_after if exc.retry_after else backoff.next_delay()
                if loop.time() + delay >= deadline:
                    raise
                await asyncio.sleep(delay)

    async def who(self) -> list[str]:
        """Everyone online, in code-point order: one ``who`` per page (one for up to 1,000 names)."""
        names: list[str] = []
        page = await self.who_page()
        names += page.users
        while page.next is not None:
            page = await self.who_page(page.next)
            names += page.users
        return names

    async def who_page(self, cursor: str | None = None, limit: int | None = None) -> f.Online:
        """One page of who is online: the first, or the one after ``cursor`` (a previous page's ``next``)."""
        reply = await self._request(f.Who(cursor=cursor, limit=limit, ref=self.core.next_ref()))
        assert isinstance(reply, f.Online)
        return reply

    async def history(self, conv: str, before: str | None = None, limit: int = 50) -> list[f.Message]:
        reply = await self._request(f.HistoryRequest(conv=conv, before=before, limit=limit,
                                                     ref=self.core.next_ref()))
        assert isinstance(reply, f.History)
        return reply.messages

    async def ping(self) -> None:
        await self._request(f.Ping(ref=self.core.next_ref()))

    async def group(
        self, op: str, group: str, *, user: str | None = None, invite_only: bool | None = None
    ) -> f.GroupInfo:
        """A group operation: create, join, leave, members, invite, remove, set (see docs/protocol.md)."""
        frame = f.Group(op=op, group=group.removeprefix("#"), user=user, invite_only=invite_only,
                        ref=self.core.next_ref())
        reply = await self._request(frame)
        assert isinstance(reply, f.GroupInfo)
        return reply

    async def groups(self) -> list[f.GroupSummary]:
        """The groups this user is a member of."""
        reply = await self._request(f.Groups(ref=self.core.next_ref()))
        assert isinstance(reply, f.GroupList)
        return reply.groups

    async def request(self, frame: Any, timeout: float | None = None) -> Any:
        """Send any client frame that has a ``ref`` and return its reply (raising an ``error`` reply).

        Like every request it is re-sent with the same ref after a reconnect.
        """
        if frame.ref is None:
            frame.ref = self.core.next_ref()
        return await self._request(frame, timeout)
