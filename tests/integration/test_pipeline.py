"""gateway/pipeline.py against a real redis-server: batching, order, errors, reconnects."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.pipeline import AutoPipeline, pack
from tests.helpers import INCR, Lua, RedisServer, async_wait_until


@pytest.fixture
async def pipeline(redis_server: RedisServer) -> AsyncIterator[AutoPipeline]:
    pipe = AutoPipeline(redis_server.url, timeout=2.0)
    yield pipe
    await pipe.aclose()


def test_pack_is_resp() -> None:
    assert pack([b"SET", "k", 5, 0.5]) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n5\r\n$3\r\n0.5\r\n"
    # Lengths below 512 come from a table, longer ones are formatted: both are RESP.
    assert pack([b"", "é" * 255, b"x" * 512]) == (b"*3\r\n$0\r\n\r\n$510\r\n" + "é".encode() * 255 + b"\r\n$512\r\n"
                                                   + b"x" * 512 + b"\r\n")


async def test_concurrent_calls_share_writes_and_keep_their_order(pipeline: AutoPipeline) -> None:
    incr = INCR
    results = await asyncio.gather(*(pipeline.evalsha(incr, ["n"], []) for _ in range(500)))
    # Each call got its own reply, in the order the calls were made ...
    assert results == list(range(1, 501))
    # ... and 500 commands (plus the one EVAL after NOSCRIPT) went out in a handful of writes.
    assert pipeline.commands >= 500
    assert pipeline.batches <= 5, (pipeline.commands, pipeline.batches)


async def test_an_error_reply_fails_only_its_own_call(pipeline: AutoPipeline) -> None:
    results = await asyncio.gather(
        pipeline.call([b"SET", b"a", b"1"]),
        pipeline.call([b"INCR", b"a", b"extra"]),  # wrong number of arguments
        pipeline.call([b"GET", b"a"]),
        return_exceptions=True,
    )
    assert results[0] == b"OK"
    assert isinstance(results[1], ResponseError)
    assert results[2] == b"1"


async def test_a_flushed_script_cache_is_reloaded(pipeline: AutoPipeline, redis_server: RedisServer) -> None:
    echo = Lua("return ARGV[1]")
    assert await pipeline.evalsha(echo, [], ["one"]) == b"one"
    await pipeline.call([b"SCRIPT", b"FLUSH"])
    assert await pipeline.evalsha(echo, [], ["two"]) == b"two"
    # A script error is not a missing script: it is raised, not retried.
    with pytest.raises(ResponseError):
        await pipeline.evalsha(Lua("return redis.call('NOSUCHCOMMAND')"), [], [])


async def test_calls_in_flight_around_a_resent_script_keep_their_own_replies(pipeline: AutoPipeline) -> None:
    """An EVALSHA answered NOSCRIPT is sent again as EVAL behind the commands already queued:
    every caller still gets its own reply, and the script is cached again afterwards."""
    incr = INCR
    await pipeline.call([b"SCRIPT", b"FLUSH"])
    calls = []
    for i in range(50):
        calls.append(pipeline.evalsha(incr, ["counter"], []))
        calls.append(pipeline.call([b"SET", f"plain{i}".encode(), str(i).encode()]))
        calls.append(pipeline.call([b"GET", f"plain{i}".encode()]))
    results = await asyncio.gather(*calls)
    assert sorted(results[0::3]) == list(range(1, 51))  # each INCR ran once
    assert results[1::3] == [b"OK"] * 50
    assert results[2::3] == [str(i).encode() for i in range(50)]
    before = pipeline.commands
    assert await pipeline.evalsha(incr, ["counter"], []) == 51
    assert pipeline.commands == before + 1  # no NOSCRIPT any more: one command, no EVAL after it


async def test_a_lost_connection_fails_calls_in_flight_and_the_next_call_reconnects(
    pipeline: AutoPipeline, redis_server: RedisServer
) -> None:
    assert await pipeline.call([b"PING"]) == b"PONG"
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        blocked = asyncio.ensure_future(pipeline.call([b"BLPOP", b"never", b"0"]))  # parks on the server
        await async_wait_until(lambda: _blocked(admin), 5, "BLPOP to block on the server")
        await admin.client_kill_filter(_type="normal", skipme=True)
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(blocked, 5)
    finally:
        await admin.aclose()
    assert await pipeline.call([b"PING"]) == b"PONG"


async def test_redis_away_is_a_connection_error(redis_server: RedisServer) -> None:
    redis_server.stop()
    pipe = AutoPipeline(redis_server.url, connect_timeout=1.0)
    with pytest.raises(RedisConnectionError):
        await pipe.call([b"PING"])
    redis_server.start()
    assert await pipe.call([b"PING"]) == b"PONG"
    await pipe.aclose()


async def test_a_server_that_never_answers_times_out() -> None:
    """A peer that accepts and reads but never replies (a hung Redis) must not hang the sends."""
    received = bytearray()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1024):
                received.extend(data)
        finally:
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pipe = AutoPipeline(f"redis://127.0.0.1:{port}/0", timeout=0.4)
    try:
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(pipe.call([b"PING"]), 5)
        assert received.startswith(b"*1\r\n$4\r\nPING\r\n")
    finally:
        await pipe.aclose()
        server.close()
        await server.wait_closed()


async def test_database_number_and_closing(redis_server: RedisServer) -> None:
    pipe = AutoPipeline(redis_server.url.removesuffix("/0") + "/3")
    await pipe.call([b"SET", b"where", b"db3"])
    admin = aioredis.Redis.from_url(redis_server.url.removesuffix("/0") + "/3")
    try:
        assert await admin.get("where") == b"db3"
    finally:
        await admin.aclose()
    await pipe.aclose()
    with pytest.raises(RedisConnectionError):
        await pipe.call([b"PING"])


async def _blocked(admin: aioredis.Redis) -> bool:
    info = await admin.info("clients")
    return int(info.get("blocked_clients", 0)) >= 1


async def test_a_half_closed_connection_does_not_wedge_the_pipeline(redis_server: RedisServer) -> None:
    """Found by tests/chaos/test_nemesis.py (seed 1, a gateway behind a proxy through partitions
    and Redis restarts): the peer closed its side while the pipeline still had unsent bytes, so
    the transport was *closing* (waiting to flush) but not yet lost.  Every later call was failed
    at once without dropping that connection, and with no call left waiting the watchdog never
    fired: every send of that gateway was answered ``unavailable`` for good."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    port = listener.getsockname()[1]
    shut = threading.Event()
    done = threading.Event()

    def half_close() -> None:  # another thread, as another process would be: it never reads
        conn, _ = listener.accept()
        shut.wait(10)
        conn.shutdown(socket.SHUT_WR)  # FIN: "no more from me", while our unsent bytes pile up
        done.wait(20)
        conn.close()

    thread = threading.Thread(target=half_close, daemon=True)
    thread.start()
    pipe = AutoPipeline(f"redis://127.0.0.1:{port}/0", timeout=2.0)
    try:
        big = asyncio.ensure_future(pipe.call([b"SET", b"k", b"x" * 8_000_000]))  # cannot all be sent
        await async_wait_until(lambda: pipe._proto is not None, 5, "a connection")
        shut.set()
        await async_wait_until(lambda: pipe._proto is None or pipe._proto.transport.is_closing(), 5, "EOF seen")
        with pytest.raises(RedisConnectionError):
            await pipe.call([b"PING"])
        with pytest.raises((RedisConnectionError, RedisTimeoutError)):
            await big
        # The address leads to a working Redis again (the proxy's upstream is back): calls must work.
        pipe._params = dict(AutoPipeline(redis_server.url)._params)
        await async_wait_until(_answers(pipe), 8, "the pipeline to reach Redis again", interval=0.2)
    finally:
        done.set()
        thread.join(5)
        listener.close()
        await pipe.aclose()


def _answers(pipe: AutoPipeline) -> object:
    async def check() -> bool:
        try:
            return bool(await pipe.call([b"PING"]) == b"PONG")
        except (RedisConnectionError, RedisTimeoutError):
            return False

    return check
