"""Starting a server on a port another socket took first (the nemesis CI failure of seed 3).

``free_port()`` releases the port before the server binds it, so another bind,
or an outgoing connection given it as its local end, can take it meanwhile; a
gateway or Redis restarted on its old port meets the same.  The helpers notice
the failed bind and retry: on new ports, or on the fixed one once it is free.
Here the port really is held by another socket.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from client import ChatClient
from tests.helpers import BIND_FAILED, Proc, Processes, RedisServer, async_wait_until, port_bindable, start_bound


@contextmanager
def connection_holding_a_port() -> Iterator[int]:
    """An established loopback connection; its client end's local port (a listener cannot bind it)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname()) as client:
            accepted, _ = server.accept()
            with accepted:
                yield int(client.getsockname()[1])


def test_a_gateway_whose_port_is_taken_starts_again_on_a_new_one(
    redis_server: RedisServer, processes: Processes
) -> None:
    with connection_holding_a_port() as taken:
        assert not port_bindable(taken)
        ports = iter([taken])  # the first start is given the taken port, the next ones free ports

        def make() -> Proc:
            return processes.gateway(redis_server.url, start=False, port=next(ports, None))

        gateway = start_bound(make)
        first = processes.procs[0]
        assert first.port == taken and first.bind_failed(), first.log()
        assert gateway is not first and gateway.port != taken and gateway.ready()

        async def log_in() -> None:
            client = await ChatClient.open(gateway.url, "alice", "pw", reconnect=False)
            await client.close()

        asyncio.run(log_in())


async def test_a_restart_on_a_fixed_port_waits_until_it_is_free(
    redis_server: RedisServer, processes: Processes
) -> None:
    holder = socket.create_server(("127.0.0.1", 0))
    port = int(holder.getsockname()[1])
    try:
        starting = asyncio.create_task(asyncio.to_thread(processes.gateway, redis_server.url, port=port))
        await async_wait_until(lambda: processes.procs and processes.procs[0].bind_failed(), 20,
                               "the first start to fail on the taken port")
        assert not starting.done()  # it waits for the port rather than failing the test
    finally:
        holder.close()
    gateway = await asyncio.wait_for(starting, 60)
    assert gateway.port == port and gateway.ready()
    assert BIND_FAILED in processes.procs[0].log().lower()


def test_redis_restarted_on_a_taken_port_waits_until_it_is_free(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    redis.stop()
    holder = socket.create_server(("127.0.0.1", redis.port))
    try:

        async def restart_once_blocked() -> None:
            starting = asyncio.create_task(asyncio.to_thread(redis.start))
            log = tmp_path / "redis" / "redis.log"
            await async_wait_until(lambda: BIND_FAILED in log.read_text(errors="replace").lower(), 20,
                                   "a start to fail on the taken port")
            assert not starting.done()
            holder.close()
            await asyncio.wait_for(starting, 60)

        asyncio.run(restart_once_blocked())
        assert redis.ping() and redis.proc is not None and redis.proc.poll() is None
    finally:
        holder.close()
        redis.stop()
