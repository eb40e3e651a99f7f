"""Test helpers: real redis-server and Chinwag processes, deadline-polling waits.

Nothing here touches a Redis it did not start: every server gets a free
loopback port and its own directory.  Waiting is always on a condition with a
deadline, never a bare sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis as redis_sync

from client import ChatClient
from client.chat import Event
from common.http import http_status
from common.redis_binary import redis_server_binary
from protocol import frames as f

ROOT = Path(__file__).resolve().parent.parent

# Cheap password hashing keeps tests fast; production defaults are tested in unit tests.
FAST_ENV = {
    "CHINWAG_ARGON2_MEMORY_KIB": "1024",
    "CHINWAG_ARGON2_TIME_COST": "1",
    "CHINWAG_LOG_LEVEL": "INFO",
    "CHINWAG_RATE_MESSAGES": "0",  # tests that are about rate limits set their own
    "CHINWAG_RATE_REQUESTS": "0",
    "CHINWAG_IP_CONNECTIONS": "0",  # every test client comes from 127.0.0.1
    "CHINWAG_IP_LOGINS": "0",
}


@dataclass(frozen=True)
class Lua:
    """A script for the gateway's pipelines (gateway.pipeline.Script): called by SHA, its body sent on NOSCRIPT."""

    script: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.script.encode()).hexdigest()


INCR = Lua("return redis.call('INCR', KEYS[1])")


def free_port() -> int:
    """A loopback port free right now.  Only a hint: it is released before the caller's process
    binds it, so another bind, or an outgoing connection given it as its local port, can take it
    meanwhile.  Processes.gateway (start_bound) notices that and retries."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, and SIGKILL if it has not exited within ``timeout`` seconds (then reaped)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def restart_safe_port(rng: random.Random | None = None) -> int:
    """A free loopback port below the kernel's ephemeral range, for a server restarted on its port.

    Ports from ``free_port()`` come from the ephemeral range, which every
    ``bind(port 0)`` on the machine draws from (Linux gives those odd ports,
    and outgoing connections even ones): while a server is down for a restart,
    another test's ``free_port()`` or server can be given its port.  Below the
    range only a bind naming that very port can take it.  Where the range
    cannot be read, a ``free_port()``.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return free_port()
    rng = rng or random.Random()
    for _ in range(100):
        port = rng.randrange(10_000, low)
        if port_bindable(port):
            return port
    return free_port()


def port_bindable(port: int) -> bool:
    """Whether a listener could bind ``port`` on loopback now (as the servers do, with SO_REUSEADDR:
    a TIME_WAIT left by an earlier run does not count, a connection using it as its local port does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


BIND_FAILED = "address already in use"  # how a server's "cannot start" log line reads when a port is taken
BIND_ATTEMPTS = 8


def wait_until(predicate: Callable[[], Any], timeout: float, what: str = "condition", interval: float = 0.05) -> Any:
    """Poll ``predicate`` until truthy or the deadline passes (then fail the test)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)  # the polling interval of this deadline-bounded wait


async def async_wait_until(
    predicate: Callable[[], Awaitable[Any] | Any], timeout: float, what: str = "condition", interval: float = 0.05
) -> Any:
    """Like wait_until, but the loop keeps running meanwhile; ``predicate`` may be async or plain."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)  # the polling interval of this deadline-bounded wait


def presence_changes(event: Event, user: str | None = None, status: str | None = None) -> list[tuple[str, str]]:
    """The (user, status) changes an event announces (one per ``presence``, any number per
    ``presence_batch``), keeping those that match ``user`` and ``status`` when given."""
    if isinstance(event, f.Presence):
        changes = [(event.user, event.status)]
    elif isinstance(event, f.PresenceBatch):
        changes = [(u, "online") for u in event.online] + [(u, "offline") for u in event.offline]
    else:
        return []
    return [(u, s) for u, s in changes if (user is None or u == user) and (status is None or s == status)]


async def wait_for_presence(
    client: ChatClient, user: str | None = None, status: str | None = None, timeout: float = 5.0
) -> list[tuple[str, str]]:
    """Wait for a presence event (single or batched) that matches; its matching changes."""
    event = await wait_for_event(client, lambda e: bool(presence_changes(e, user, status)), timeout)
    return presence_changes(event, user, status)


async def wait_for_event(client: ChatClient, predicate: Callable[[Event], bool], timeout: float = 5.0) -> Event:
    """Next event matching ``predicate`` (others are skipped), like redis-py's wait_for_message."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no matching event within {timeout}s")
        event = await client.next_event(timeout=remaining)
        if predicate(event):
            return event


class RedisServer:
    """A redis-server process of our own on a free loopback port (kept across restarts: see
    restart_safe_port; a restart still waits for it if another socket took it meanwhile)."""

    def __init__(self, directory: Path, appendonly: bool = True) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = restart_safe_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = redis_server_binary()  # the newest here, not the venv's bundled 6.2 first on PATH
        assert binary, "redis-server is not installed (.ci/run installs it)"
        args = [
            binary.path, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always", "--logfile", str(self.dir / "redis.log"),
        ]
        for attempt in range(1, BIND_ATTEMPTS + 1):
            said = self._start_once(args)
            if said is None:
                return
            # A restart on its port: another process, or a connection's local end, took it meanwhile.
            if BIND_FAILED not in said.lower() or attempt == BIND_ATTEMPTS:
                raise AssertionError(f"redis-server exited at start:\n{said[-2000:]}")
            wait_until(lambda: port_bindable(self.port), 20, f"port {self.port} free again")

    def _start_once(self, args: list[str]) -> str | None:
        """Start it; None once it answers, or what it logged if it exited instead."""
        log = self.dir / "redis.log"
        seen = log.stat().st_size if log.exists() else 0

        def said() -> str:  # this start's part of the log
            return log.read_bytes()[seen:].decode(errors="replace") if log.exists() else ""

        proc = self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        # Its own "ready" line first: a PONG alone could come from whoever took the port.
        wait_until(lambda: proc.poll() is not None or ("ready to accept" in said().lower() and self.ping()),
                   10, "redis-server to answer PING")
        return None if proc.poll() is None else said()

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None


class Proc:
    """A Chinwag program run as a real child process, with its log kept for failures."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path, port: int | None,
                 http_port: int | None = None) -> None:
        self.name = name
        self.http_port = http_port  # /healthz, /readyz, /metrics on a port of their own
        self.args = args
        self.env = env
        self.log_path = log_path
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        # A line the program logs once it has bound its ports; until it appears, whatever answers on
        # them (another process that took a port first) is not this process.
        self.listening_mark: str | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def listening(self) -> bool:
        return self.listening_mark is None or self.listening_mark in self.log()

    def ready(self) -> bool:
        """Running, its own ports bound, and /readyz says ready."""
        return not self.exited() and self.listening() and self.ready_status() == 200

    def wait_started(self, timeout: float) -> bool:
        """Wait until it is ready (True) or has exited (False); fail the test if neither within ``timeout``."""
        wait_until(lambda: self.exited() or self.ready(), timeout, f"{self.name} ready")
        return not self.exited()

    def bind_failed(self) -> bool:
        """Exited because a port it was given was taken between free_port() and its bind."""
        return self.exited() and BIND_FAILED in self.log().lower()

    def start(self, wait_ready: bool = True) -> Proc:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()
        if wait_ready and self.port is not None:
            assert self.wait_started(20), f"{self.name} exited early:\n{self.log()}"
        return self

    def http_status(self, path: str) -> int:
        return http_status(f"http://127.0.0.1:{self.port}{path}")

    def ready_status(self) -> int:
        """/readyz on the plain-HTTP port (the WebSocket port may speak TLS)."""
        port = self.http_port or self.port
        return http_status(f"http://127.0.0.1:{port}/readyz")

    def http_get(self, path: str) -> str:
        """Body of a GET on the process's own HTTP port (metrics and health)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as resp:
            return str(resp.read().decode())

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 15)


class Processes:
    """Factory for gateway, presence and embedded-server processes; all stopped at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[Proc] = []
        self.count = 0

    def _env(self, extra: dict[str, str] | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHINWAG_") and k != "REDIS_URL"}
        env.update(FAST_ENV)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def _make(self, name: str, module: str, args: list[str], env: dict[str, str] | None, port: int | None) -> Proc:
        self.count += 1
        log_path = self.tmp_path / f"{name}-{self.count}.log"
        http_port = free_port()
        argv = [sys.executable, "-m", module, *args, "--http-port", str(http_port)]
        proc = Proc(name, argv, self._env(env), log_path, port, http_port)
        self.procs.append(proc)
        return proc

    def gateway(self, redis_url: str, *, env: dict[str, str] | None = None, start: bool = True,
                args: list[str] | None = None, port: int | None = None) -> Proc:
        """A gateway process; started (and ready) unless ``start=False``.

        Started, a gateway whose port was taken before it could bind it is
        retried (start_bound): on new ports, or, when the caller fixed ``port``
        (a restart on the same address), on that port once it is free again.
        """
        def make() -> Proc:
            return self.gateway(redis_url, env=env, args=args, port=port, start=False)

        if start:
            return start_bound(make, fixed_port=port)
        chosen = port or free_port()
        proc = self._make("gateway", "gateway", ["--host", "127.0.0.1", "--port", str(chosen), "--redis-url",
                                                 redis_url, *(args or [])], env, chosen)
        proc.listening_mark = f"listening on ws://127.0.0.1:{chosen} "
        return proc

    def presence(self, redis_url: str, *, env: dict[str, str] | None = None, args: list[str] | None = None) -> Proc:
        proc = self._make("presence", "presence", ["--redis-url", redis_url, *(args or [])], env, None)
        return proc.start(wait_ready=False)

    def server(self, *, env: dict[str, str] | None = None, args: list[str] | None = None) -> Proc:
        port = free_port()
        proc = self._make("server", "chinwag.server", ["--port", str(port), *(args or [])], env, port)
        return proc.start()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def dump_logs(self) -> str:
        return "\n".join(f"===== {p.name} ({p.log_path.name})\n{p.log()[-4000:]}" for p in self.procs)


@contextlib.contextmanager
def subscriptions_cut(redis_url: str, frozen: Proc | None = None) -> Iterator[None]:
    """Every pub/sub connection killed (each gateway's at least), none back until the block ends:
    ``frozen`` (a gateway process) is stopped with SIGSTOP so it cannot resubscribe; without it,
    SUBSCRIBE is denied to everyone.  Other commands still work meanwhile."""
    admin = redis_sync.Redis.from_url(redis_url)
    try:
        if frozen is not None:
            assert frozen.proc is not None
            frozen.proc.send_signal(signal.SIGSTOP)
        else:
            admin.execute_command("ACL", "SETUSER", "default", "-subscribe")
        assert admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 2
        yield
    finally:
        if frozen is not None and frozen.proc is not None:
            frozen.proc.send_signal(signal.SIGCONT)
        else:
            admin.execute_command("ACL", "SETUSER", "default", "+subscribe")
        admin.close()


def start_bound(make: Callable[[], Proc], fixed_port: int | None = None, attempts: int = BIND_ATTEMPTS,
                port_wait: float = 20.0) -> Proc:
    """Start ``make()`` until one attempt binds its ports and is ready; that process.

    ``make`` builds a fresh, unstarted process each time (new free ports,
    except a ``fixed_port`` the caller chose).  An attempt that exits because a
    port was taken is retried, at most ``attempts`` times; with a fixed port,
    once that port can be bound again (bounded by ``port_wait``).  Any other
    early exit, or no readiness within 20 s, fails at once with the log.
    """
    for attempt in range(1, attempts + 1):
        proc = make()
        proc.start(wait_ready=False)
        if proc.wait_started(20):
            return proc
        if not proc.bind_failed():
            raise AssertionError(f"{proc.name} exited early:\n{proc.log()}")
        if fixed_port is not None and attempt < attempts:
            wait_until(lambda: port_bindable(fixed_port), port_wait, f"port {fixed_port} free again")
    raise AssertionError(f"{proc.name}: a port was taken at each of {attempts} starts:\n{proc.log()}")


class Clients:
    """Opens ChatClients and closes them all at teardown."""

    def __init__(self) -> None:
        self.clients: list[ChatClient] = []

    async def login(self, url: str | list[str], user: str, password: str = "pw", **kwargs: Any) -> ChatClient:
        """A logged-in client; it does not reconnect unless ``reconnect=True`` is passed."""
        kwargs.setdefault("reconnect", False)
        client = await ChatClient.open(url, user, password, **kwargs)
        self.clients.append(client)
        return client

    async def raw(self, url: str) -> ChatClient:
        client = ChatClient(url, reconnect=False)
        await client.connect()
        self.clients.append(client)
        return client

    async def close_all(self) -> None:
        for client in self.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5)


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate (and its key) for 127.0.0.1 made by the test itself with openssl."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key
