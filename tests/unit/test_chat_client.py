"""ChatClient, the asyncio adapter over the client core, against a scripted server on loopback.

A scripted server (websockets, no Redis, no gateway) sends exactly the frames
a case needs, in the order it needs them: a real gateway cannot be made to put
two frames back to back, or to never answer, on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.asyncio.server import ServerConnection, serve

from client.chat import ChatClient
from client.errors import ClientError, ConnectFailed, ConnectRefused, Disconnected, RequestTimeout
from tests.helpers import free_port

Handler = Callable[[ServerConnection], Awaitable[None]]


def welcome(user: str, online: list[str]) -> str:
    return json.dumps({"type": "welcome", "user": user, "online": online, "v": 1, "session": "t",
                       "positions": {"dm": "0-0", "*": "0-0"}, "node": "scripted"})


@contextlib.asynccontextmanager
async def logged_in(handler: Handler, **kwargs: float) -> AsyncIterator[ChatClient]:
    """A client logged in to a scripted server running ``handler``; closed (and the server stopped) after."""
    async with serve(handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        chat = await ChatClient.open(url, "alice", "pw", reconnect=False, **kwargs)
        try:
            yield chat
        finally:
            await chat.close()


async def test_presence_right_after_the_welcome_is_not_lost() -> None:
    """The welcome's state is applied when it arrives, before the frames behind it (it used to be applied when
    the login coroutine resumed, after the reader had handled them: this presence was overwritten)."""

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(welcome("alice", ["alice"]))
        await ws.send(json.dumps({"type": "presence", "user": "bob", "status": "online"}))
        await ws.wait_closed()

    async with logged_in(handler) as chat:
        await asyncio.wait_for(chat.next_event(), 5)  # the presence event has been handled
        assert chat.online == {"alice", "bob"}


async def test_a_request_without_a_reply_raises_request_timeout() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(welcome("alice", ["alice"]))
        async for _ in ws:  # never answers
            pass

    async with logged_in(handler, request_timeout=0.3) as chat:
        with pytest.raises(RequestTimeout) as info:
            await chat.ping()
        assert isinstance(info.value, ClientError) and isinstance(info.value, TimeoutError)
        assert chat.core.pending == {}  # given up: a late reply is dropped


async def test_nothing_listening_raises_connect_refused() -> None:
    url = f"ws://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectFailed) as info:
        await ChatClient.open(url, "alice", "pw")
    assert isinstance(info.value, ConnectRefused) and isinstance(info.value, ConnectionRefusedError)
    assert isinstance(info.value.__cause__, OSError) and info.value.url == url


async def test_going_away_during_the_first_login_is_the_callers_to_retry() -> None:
    """The first login is one-shot (a program shows why it failed); a gateway stopping meanwhile
    (1001) is a Disconnected, which the nemesis harness retries (its CI seed 3 failure)."""

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(1001, "shutting down")

    async with serve(handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        with pytest.raises(Disconnected, match="1001"):
            await ChatClient.open(url, "alice", "pw")


async def test_going_away_during_a_reconnect_login_is_retried() -> None:
    """Once logged in, the client resumes by itself: a login refused by a gateway going away
    (1001, as one that cannot bind its ports closes what it accepted) is tried again."""
    logins: list[int] = []
    dropped = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        logins.append(len(logins))
        if len(logins) == 2:
            await ws.close(1001, "shutting down")  # the first reconnect: going away mid-login
            return
        await ws.send(welcome("alice", ["alice"]))
        if len(logins) == 1:
            dropped.set()
            await ws.close(1001, "shutting down")  # the logged-in socket goes away
            return
        async for raw in ws:
            frame = json.loads(raw)
            if frame.get("type") == "ping":
                await ws.send(json.dumps({"type": "pong", "ref": frame["ref"]}))

    async with serve(handler, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        chat = await ChatClient.open(url, "alice", "pw", backoff_cap=0.2, request_timeout=5)
        try:
            await asyncio.wait_for(dropped.wait(), 5)
            await chat.ping()  # answered on the third socket
            assert len(logins) == 3 and chat.state == "connected" and chat.reconnects == 1
        finally:
            await chat.close()
