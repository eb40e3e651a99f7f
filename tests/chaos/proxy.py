"""A small TCP proxy between one gateway and Redis, so a test can cut or slow that one link.

The nemesis also puts one in front of each gateway, on a port it holds for
the whole run: the clients' address of that gateway.  A restarted gateway
binds whatever port was free (a fixed one can be taken while the gateway is
down, by any bind or by an outgoing connection's local end) and the proxy is
pointed at it (``upstream = None`` while there is no gateway: a connection is
then closed at once, as a refused one would be).

Modes: flowing (bytes pass), *partitioned* (nothing passes either way; new
connections are accepted and hang, like a network that drops packets, so
clients see timeouts, not refusals), and an added latency per chunk.  Healing
a partition either lets the frozen connections carry on (a short outage TCP
rides out) or resets them (a long one), as chosen by the caller.
"""

from __future__ import annotations

import asyncio
import contextlib


class Proxy:
    def __init__(self, upstream_port: int | None, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = None if upstream_port is None else (upstream_host, upstream_port)
        self.latency = 0.0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def retarget(self, port: int | None) -> None:
        """Send new connections to ``port`` (None: close them at once); open ones are left alone."""
        self.upstream = None if port is None else (self.upstream[0] if self.upstream else "127.0.0.1", port)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.flowing.set()
        self.reset()  # every pump then ends by itself

    def partition(self) -> None:
        self.flowing.clear()

    def heal(self, reset: bool) -> None:
        if reset:
            self.reset()
        self.flowing.set()

    def reset(self) -> None:
        """Drop every proxied connection at once (both ends see the connection die)."""
        for writer in list(self._writers):
            transport = writer.transport
            transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.flowing.wait()  # a partitioned network: the connect "succeeds", nothing answers
            if self.upstream is None:
                return  # nothing behind it now
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 3)
            except (OSError, TimeoutError):
                return  # Redis is down: the client sees its connection close
            self._writers.add(up_writer)
            try:
                await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
                up_writer.transport.abort()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
            self._tasks.discard(task)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                if self.latency:
                    await asyncio.sleep(self.latency)
                await self.flowing.wait()
                if dst.transport.is_closing():
                    return
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.transport.abort()
