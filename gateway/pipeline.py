"""Auto-pipelined Redis commands for the send path: one socket, one write per loop turn.

Every chat message is one Lua call.  Through redis-py's pool each call costs a
pool checkout, a ``write`` syscall, a ``read`` syscall and a page of Python;
at thousands of messages a second that overhead outweighs the script itself.
So, like rueidis (Centrifugo's Redis client) and ioredis's auto-pipelining,
the sends of all connections share one connection: a call appends its encoded
command to a buffer and returns a future; the buffer goes out in a single
write at the end of the event-loop turn; replies, parsed by hiredis in
``data_received``, resolve the futures in order.  Redis runs pipelined
commands in order and each script atomically, so nothing changes but cost.

Failures look like redis-py's, so callers handle one kind of error:

* no connection (refused, lost, not answering within ``timeout``):
  ``redis.exceptions.ConnectionError`` / ``TimeoutError`` for every call in
  flight -- a send whose reply was lost may have run, which is what the
  senders' refs and the scripts' dedupe are for;
* an error reply: the exception redis-py would raise for it (``ResponseError``,
  ``BusyLoadingError`` while Redis loads its data...) for that call only.
  ``NOSCRIPT`` (Redis restarted or flushed its script cache) is retried once
  with ``EVAL``, which also reloads the script.

``evalsha(..., replicas=n)`` (``--durability replica``) writes ``WAIT n
<wait_timeout>`` right behind the script, in the same write on the same
connection, and answers only if ``WAIT`` says ``n`` replicas have every write
of this connection so far (the script's included); else it raises
:class:`NotReplicated`, a ``RedisError`` that is not a ``ResponseError``, so
the caller answers ``unavailable`` and the client retries with its ref (the
script's dedupe stores that retry once).  A script answered ``NOSCRIPT`` is sent
again as ``EVAL`` *after* the ``WAIT``, so that ``WAIT``'s answer is thrown
away and a new ``WAIT`` follows the ``EVAL``.

On a Redis Cluster, gateway/cluster_pipeline.py keeps one of these per master
and sends each command to the master owning its first key's slot.

There is no background reconnect loop: the next call after a failure
connects again (one attempt at a time, bounded by ``connect_timeout``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol, cast

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.runtime import retrieve

log = logging.getLogger("chinwag.pipeline")

Arg = bytes | str | int | float


_LENGTHS = [b"$%d\r\n" % n for n in range(512)]  # the RESP length line of a short argument, made once


def pack(args: Sequence[Arg]) -> bytes:
    """One RESP command (this runs for every send: no formatting for arguments under 512 bytes)."""
    out = [b"*%d\r\n" % len(args)]
    add = out.append
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif not isinstance(arg, bytes):
            arg = repr(arg).encode()
        n = len(arg)
        add(_LENGTHS[n] if n < 512 else b"$%d\r\n" % n)
        add(arg)
        add(b"\r\n")
    return b"".join(out)


class Script(Protocol):
    """A script called by SHA, with its body for the ``NOSCRIPT`` fallback (redis-py's
    ``register_script`` objects are such)."""

    sha: str
    script: str | bytes


_Eval = tuple[Script, Sequence[Arg], Sequence[Arg]]  # an EVALSHA's script, keys and args


class NotReplicated(RedisError):
    """``WAIT`` said fewer replicas than asked have the script's writes: the send is not acked
    (a ``RedisError`` but no ``ResponseError``, so callers answer ``unavailable``)."""


class _Wait:
    """Marks a ``WAIT`` written right behind an EVALSHA (see ``_resend_as_eval``)."""

    def __init__(self, command: bytes) -> None:
        self.command = command


_Entry = tuple[asyncio.Future[Any], float, _Eval | _Wait | None]


class Pipeline(Protocol):
    """What the send path needs: :class:`AutoPipeline` on one Redis, ``ClusterAutoPipeline`` on a cluster."""

    @property
    def batches(self) -> int: ...

    @property
    def commands(self) -> int: ...

    def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg],
                replicas: int = 0) -> Awaitable[Any]: ...

    async def call(self, args: Sequence[Arg]) -> Any: ...

    async def aclose(self) -> None: ...


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: AutoPipeline) -> None:
        self.owner = owner
        self.reader = hiredis.Reader()
        self.transport: asyncio.Transport | None = None
        self.lost = False  # closed; may happen before the pipeline has adopted the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.owner._waiting
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError:
                log.error("unparseable data from Redis; reconnecting")
                self.owner._drop(self, RedisConnectionError("unparseable reply from Redis"))
                return
            if reply is False:
                return
            if not waiting:
                log.error("a Redis reply nobody asked for; reconnecting")
                self.owner._drop(self, RedisConnectionError("unexpected reply from Redis"))
                return
            fut, _sent_at, script = waiting.popleft()
            if not fut.done():
                if (isinstance(reply, hiredis.ReplyError) and isinstance(script, tuple)
                        and str(reply).startswith("NOSCRIPT")):
                    self.owner._resend_as_eval(fut, script)  # Redis lost its script cache (restart, SCRIPT FLUSH)
                elif isinstance(reply, hiredis.ReplyError):  # as redis-py maps it: LOADING is BusyLoadingError...
                    fut.set_exception(BaseParser.parse_error(str(reply)))  # type: ignore[no-untyped-call]
                else:
                    fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.owner._drop(self, RedisConnectionError("Redis closed the connection"))


class AutoPipeline:
    """Commands from many coroutines, written together and answered in order."""

    def __init__(self, redis_url: str, *, timeout: float = 5.0, connect_timeout: float = 2.0,
                 wait_timeout: float = 1.0) -> None:
        self._params: dict[str, Any] = dict(parse_url(redis_url))
        self.timeout = timeout
        self.wait_timeout = wait_timeout  # seconds a ``WAIT`` may take (``replicas=``); under ``timeout``
        self.connect_timeout = connect_timeout
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._buffer: list[bytes] = []
        # One entry per command written or buffered, in order: its future, when it was queued, and
        # for an EVALSHA the (script, keys, args) to send again as EVAL if Redis answers NOSCRIPT.
        self._waiting: deque[_Entry] = deque()
        self._flush_scheduled = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False
        self.batches = 0  # writes made, for the metrics: commands / batches is the batching factor
        self.commands = 0

    def evalsha(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg], replicas: int = 0, *,
                body: bool = False) -> Awaitable[Any]:
        """Run a script; sent again as EVAL (by the reader, see ``_resend_as_eval``) if Redis no longer has it.

        Not a coroutine: when connected it returns the reply's future itself, so a send awaits one
        frame less (this runs for every message).  ``replicas``: answer only once that many replicas
        have the script's writes (``WAIT``), else raise :class:`NotReplicated`.  ``body``: send EVAL
        with the script's body at once (after a cluster's ``ASKING``, which covers one command only)."""
        if replicas or body:
            return self._eval_then_wait(script, keys, args, replicas, body)
        return self.submit([b"EVALSHA", script.sha, len(keys), *keys, *args], (script, keys, args))

    async def _eval_then_wait(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg], replicas: int,
                              body: bool) -> Any:
        """The script, then ``WAIT replicas`` in the same write: its reply only if ``WAIT`` reached ``replicas``."""
        await self.connect()
        if body:
            reply = self._queue(pack([b"EVAL", script.script, len(keys), *keys, *args]), None)
        else:
            reply = self._queue(pack([b"EVALSHA", script.sha, len(keys), *keys, *args]), (script, keys, args))
        if not replicas:
            return await reply
        marker = _Wait(pack([b"WAIT", replicas, int(self.wait_timeout * 1000)]))
        wait = self._queue(marker.command, marker)
        wait.add_done_callback(retrieve)  # not awaited when the script fails
        result = await reply
        acked = await wait
        if int(acked) < replicas:
            raise NotReplicated(f"WAIT: {int(acked)} of {replicas} replica(s) acknowledged within "
                                f"{self.wait_timeout:g}s; not acked")
        return result

    async def connect(self) -> None:
        """Connected from here on until the next await (so commands queued now go out in one write)."""
        proto = self._proto
        if proto is None or proto.lost:
            await self._connect()

    async def call(self, args: Sequence[Arg]) -> Any:
        """Queue one command; its reply (or its error) comes back here."""
        return await self.submit(args)

    def submit(self, args: Sequence[Arg], script: _Eval | None = None) -> Awaitable[Any]:
        """Queue one command and return what resolves to its reply (connecting first if need be)."""
        proto = self._proto
        if proto is None or proto.lost:
            return self._submit_connected(args, script)
        return self._queue(pack(args), script)

    async def _submit_connected(self, args: Sequence[Arg], script: _Eval | None) -> Any:
        await self._connect()
        return await self._queue(pack(args), script)

    def _queue(self, command: bytes, script: _Eval | _Wait | None) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((fut, loop.time(), script))
        self._buffer.append(command)
        self.commands += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _resend_as_eval(self, fut: asyncio.Future[Any], script: _Eval) -> None:
        """An EVALSHA came back NOSCRIPT: send the script's body with EVAL, answering the same future.
        Queued after every command already waiting, whose replies come first, so the order holds.

        If a ``WAIT`` followed the EVALSHA (next in line), its answer would come before the EVAL ran:
        that answer goes to a throwaway future and the ``WAIT`` is written again after the EVAL."""
        s, keys, args = script
        loop = asyncio.get_running_loop()
        self._append(fut, pack([b"EVAL", s.script, len(keys), *keys, *args]), None, loop)
        if self._waiting and isinstance(self._waiting[0][2], _Wait):
            wait_fut, queued, marker = self._waiting[0]
            assert isinstance(marker, _Wait)
            self._waiting[0] = (loop.create_future(), queued, None)
            self._append(wait_fut, marker.command, marker, loop)

    def _append(self, fut: asyncio.Future[Any], command: bytes, script: _Eval | _Wait | None,
                loop: asyncio.AbstractEventLoop) -> None:
        self._waiting.append((fut, loop.time(), script))
        self._buffer.append(command)
        self.commands += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    async def aclose(self) -> None:
        self._closed = True
        if self._proto is not None:
            self._drop(self._proto, RedisConnectionError("the gateway is closing"))

    # -- internals ----------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        proto = self._proto
        if proto is None or proto.lost or proto.transport is None or proto.transport.is_closing():
            lost = RedisConnectionError("the Redis connection was lost")
            if proto is not None:
                self._drop(proto, lost)  # and the next call connects again
            self._fail_all(lost)
            return
        self.batches += 1
        proto.transport.write(data)

    async def _connect(self) -> _Protocol:
        if self._closed:
            raise RedisConnectionError("the gateway is closing")
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        factory = lambda: _Protocol(self)  # noqa: E731
        try:
            if "path" in self._params:
                _, proto = await asyncio.wait_for(
                    loop.create_unix_connection(factory, self._params["path"]), self.connect_timeout
                )
            else:
                host, port = self._params.get("host", "localhost"), int(self._params.get("port", 6379))
                _, proto = await asyncio.wait_for(loop.create_connection(factory, host, port), self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {type(exc).__name__}") from None
        if proto.lost:  # closed again before we got here: its connection_lost found nothing to drop
            raise RedisConnectionError("Redis closed the connection")
        self._proto = proto
        self._arm_watchdog()
        handshake: list[list[Arg]] = []
        password = self._params.get("password")
        if password:
            username = self._params.get("username")
            handshake.append([b"AUTH", username, password] if username else [b"AUTH", password])
        if int(self._params.get("db", 0) or 0):
            handshake.append([b"SELECT", int(self._params["db"])])
        for command in handshake:
            fut: asyncio.Future[Any] = loop.create_future()
            self._waiting.append((fut, loop.time(), None))
            assert proto.transport is not None
            proto.transport.write(pack(command))
            try:
                await fut
            except RedisError:  # AUTH refused (AuthenticationError), SELECT out of range...
                self._drop(proto, RedisConnectionError("Redis refused the handshake"))
                raise RedisConnectionError("Redis refused the handshake") from None
        return proto

    def _arm_watchdog(self) -> None:
        if self._watchdog is None:
            loop = asyncio.get_running_loop()
            self._watchdog = loop.call_later(self.timeout / 4, self._check_stalled)

    def _check_stalled(self) -> None:
        """A connection that leaves the oldest command unanswered for ``timeout`` is dead."""
        self._watchdog = None
        proto = self._proto
        if proto is None:
            return
        if self._waiting and asyncio.get_running_loop().time() - self._waiting[0][1] > self.timeout:
            log.warning("Redis did not answer within %.1fs; reconnecting", self.timeout)
            self._drop(proto, RedisTimeoutError("Redis did not answer in time"))
            return
        self._arm_watchdog()

    def _drop(self, proto: _Protocol, exc: Exception) -> None:
        if self._proto is not proto:
            return
        self._proto = None
        if proto.transport is not None:
            proto.transport.close()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._buffer.clear()
        self._fail_all(exc)

    def _fail_all(self, exc: Exception) -> None:
        waiting, self._waiting = self._waiting, deque()
        for fut, _, _ in waiting:
            if not fut.done():
                fut.set_exception(exc)
