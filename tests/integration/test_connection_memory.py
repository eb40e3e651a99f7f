"""What an idle gateway connection holds: websockets' key-sharing instance dict, no empty deques.

A ServerConnection's attributes share their dict's keys (a few hundred bytes); one
attribute added after ``__init__`` gave every connection a dict of its own (1.3 KiB more).
These run the gateway's connection class over real sockets on loopback, through login's
``set_write_bound``, control frames and a fragmented message, and check the layout holds.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque

from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from gateway.connection import BoundedConnection, FrameQueue, bounded_connection, set_write_bound
from tests.helpers import async_wait_until


async def test_a_connection_keeps_its_shared_dict_through_login_pings_and_fragments() -> None:
    conns: list[ServerConnection] = []

    async def echo(ws: ServerConnection) -> None:
        conns.append(ws)
        async for message in ws:
            await ws.send(message)

    cls = bounded_connection(1 << 20, 100.0, lambda *a: None)
    async with serve(echo, "127.0.0.1", 0, create_connection=cls, compression=None, ping_interval=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as client:
            await async_wait_until(lambda: len(conns) == 1, 5, "the server-side connection")
            ws = conns[0]
            assert isinstance(ws, BoundedConnection)
            fresh = sys.getsizeof(ws.__dict__)
            keys = set(ws.__dict__)
            set_write_bound(ws, 5_000)  # what a login does
            await asyncio.wait_for(await client.ping(), 5)  # spends the control-frame bucket
            await asyncio.wait_for(await ws.ping(), 5)
            await client.send(["frag", "mented"])  # a message in three frames goes through the queue
            assert await asyncio.wait_for(client.recv(), 5) == "fragmented"
            for i in range(40):  # more than max_queue (16) frames in flight
                await client.send(str(i))
            assert [await asyncio.wait_for(client.recv(), 5) for _ in range(40)] == [str(i) for i in range(40)]
            assert ws.write_bound == 5_000 and ws.control_tokens >= 0
            assert set(ws.__dict__) == keys  # nothing added after __init__ ...
            assert sys.getsizeof(ws.__dict__) == fresh  # ... so the dict was never made a dict of its own
            assert fresh < 1_000  # key-sharing: a private dict of these attributes is 1,584 bytes
            assert isinstance(ws.recv_messages.frames.queue, FrameQueue)
            assert not isinstance(ws.drain_waiters, deque)


@given(st.lists(st.tuples(st.sampled_from(["append", "popleft", "extendleft"]),
                          st.lists(st.integers(), max_size=4)), max_size=30))
def test_frame_queue_does_what_the_deque_did(ops: list[tuple[str, list[int]]]) -> None:
    ours: FrameQueue = FrameQueue()
    theirs: deque[int] = deque()
    for op, items in ops:
        if op == "append":
            ours.append(items)  # type: ignore[arg-type]  # any object stands for a frame here
            theirs.append(items)  # type: ignore[arg-type]
        elif op == "popleft" and theirs:
            assert ours.popleft() == theirs.popleft()  # type: ignore[comparison-overlap]
        elif op == "extendleft":
            ours.extendleft(reversed(items))  # type: ignore[arg-type]  # as SimpleQueue.put_back calls it
            theirs.extendleft(reversed(items))
        assert list(ours) == list(theirs)
