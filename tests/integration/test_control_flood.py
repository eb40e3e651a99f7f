"""Clients that stream pings and never read their pongs are dropped before they cost the gateway memory.

Each attacker is a raw TCP socket with a tiny receive buffer (so the kernel
absorbs little of what the gateway sends back) that completes the WebSocket
handshake, optionally logs in, and then writes ping frames as fast as it can
without ever reading.  The gateway must close it while its RSS stays within a
few MiB per attacker, and an honest client must log in quickly meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import threading
import time
import traceback

import psutil
import pytest

from protocol import frames as f
from tests.helpers import Clients, Processes, RedisServer

ATTACKERS = 3
ATTACK_SECONDS = 10.0  # how long an attacker keeps trying if the gateway never closes it


def _masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (clients must mask; an all-zero mask leaves the payload as it is)."""
    n = len(payload)
    if n < 126:
        header = bytes([0x80 | opcode, 0x80 | n])
    else:
        header = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    return header + b"\0\0\0\0" + payload


class PingFlood(threading.Thread):
    """One socket that streams pings and never reads (after the handshake and, if asked, the welcome)."""

    def __init__(self, port: int, user: str | None, payload: bytes) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.user = user
        self.blob = _masked(0x9, payload) * (64 * 1024 // (6 + len(payload)))
        self.ready = threading.Event()
        self.sent = 0
        self.dropped_after: float | None = None  # seconds of flooding until the gateway cut us off
        self.error: BaseException | None = None
        self.where = ""

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.where = traceback.format_exc()
        finally:
            self.ready.set()

    def _read_until(self, sock: socket.socket, marker: bytes) -> bytes:
        got = b""
        while marker not in got:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed before {marker!r}: {got[:200]!r}")
            got += chunk
        return got

    def _run(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
        sock.settimeout(10)
        sock.connect(("127.0.0.1", self.port))
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall(
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            assert self._read_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 101")
            if self.user is not None:
                sock.sendall(_masked(0x1, f.encode(f.Login(v=1, user=self.user, password="pw", presence="off"))))
                self._read_until(sock, b'"welcome"')
            self.ready.set()
            sock.settimeout(0.5)
            started = time.monotonic()
            while time.monotonic() - started < ATTACK_SECONDS:
                try:
                    self.sent += sock.send(self.blob)
                except TimeoutError:
                    continue
                except OSError:  # reset: the gateway dropped us
                    self.dropped_after = time.monotonic() - started
                    return
        finally:
            sock.close()


class Peak:
    """Samples a process's RSS every 20 ms in a thread of its own; keeps the highest."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


@pytest.mark.parametrize("logged_in", [False, True], ids=["before-login", "after-login"])
@pytest.mark.parametrize("guard", ["control-budget", "write-bound"])
async def test_ping_flood_without_reading_is_cut_off_and_honest_logins_stay_fast(
    redis_server: RedisServer, processes: Processes, clients: Clients, logged_in: bool, guard: str
) -> None:
    """Default bounds: 64 KiB unsent before login, 4 MiB after, 10 control frames/s (bursts of 100).

    ``write-bound`` turns the control-frame budget off, so the write bound alone must stop the
    flood: pongs count toward it like every other byte the gateway owes the peer.
    """
    env = {"CHINWAG_CONTROL_FRAMES": "0"} if guard == "write-bound" else {}
    gw = processes.gateway(redis_server.url, env=env)
    assert gw.proc is not None and gw.port is not None
    await clients.login(gw.url, "warmup", presence="off")  # imports, pools and the first hash are paid for
    baseline = psutil.Process(gw.proc.pid).memory_info().rss
    peak = Peak(gw.proc.pid)
    # Empty pings are the worst case per byte counted (a 2-byte pong each) and in CPU per byte;
    # 125-byte ones move the most data.  Without the budget, empty pings fill the kernel's
    # 4 MiB socket buffer only after two million pings: seconds of CPU for nothing.
    payloads = [b"p" * 125] * ATTACKERS if guard == "write-bound" else [b"", b"p" * 125, b""]
    attackers = [
        PingFlood(gw.port, f"attacker{i}" if logged_in else None, payloads[i]) for i in range(ATTACKERS)
    ]
    try:
        for attacker in attackers:
            attacker.start()
        for attacker in attackers:
            assert await asyncio.to_thread(attacker.ready.wait, 15)
        started = time.monotonic()
        try:
            honest = await clients.login(gw.url, "honest", presence="off")
            await honest.send("*", "still here")
            login_seconds = time.monotonic() - started
        except Exception as exc:  # what an overwhelmed gateway answers: reported below with the numbers
            login_seconds, failure = float("inf"), exc
        else:
            failure = None
        for attacker in attackers:
            await asyncio.to_thread(attacker.join, ATTACK_SECONDS + 10)
    finally:
        grown = (peak.stop() - baseline) / 2**20
    sent = [a.sent / 2**20 for a in attackers]
    dropped = [None if a.dropped_after is None else round(a.dropped_after, 2) for a in attackers]
    print(f"\nping flood ({guard}, {'after' if logged_in else 'before'} login): sent "
          f"{', '.join(f'{s:.1f}' for s in sent)} MiB; dropped after {dropped} s; gateway RSS peak +{grown:.1f} MiB;"
          f" honest login and send {login_seconds * 1000:.0f} ms")
    for attacker in attackers:  # each got through its handshake (and login) before flooding
        assert attacker.error is None, attacker.where
    assert all(d is not None for d in dropped), "the gateway kept serving a socket that never reads"
    per_socket = 4 if not logged_in else 4 + 4  # MiB: slack, plus the 4 MiB bound after login
    assert grown < ATTACKERS * per_socket, f"RSS grew {grown:.1f} MiB"
    # The budget stops attackers within a few thousand frames; the write bound alone lets each
    # parse a few MiB first (what the kernel's socket buffers absorb), which the honest login shares.
    slowest = 3 if guard == "control-budget" else 6
    assert login_seconds < slowest, f"an honest login took {login_seconds:.1f}s during the flood ({failure!r})"
    if guard == "write-bound":  # and by the bound for its state: a session's 4 MiB, else 64 KiB
        assert f"bound {4 * 2**20 if logged_in else 64 * 1024})" in gw.log()
    else:
        assert "sent control frames faster than 10/s" in gw.log()
