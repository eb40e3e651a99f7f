"""A login whose claim failed midway never gets its user's retry refused ``username_taken`` (issue 15).

The sequence seen in a load test on a 1-master cluster: a claim writes the
session (step 2), a later step fails (Redis slow or away), the gateway answers
``unavailable`` and releases the session, but the release fails too and is
queued for the lease loop.  The client retries at once and, before the fix,
found that dead attempt holding the name: ``username_taken``, which clients
take as final.  Here the failures are injected between the claim's steps by a
test double of the Registry inside real gateways on a real Redis (one server,
and the 3-master cluster).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from websockets.asyncio.client import connect

from common import keys
from common.config import Settings
from gateway.server import Gateway
from presence.registry import Registry
from protocol import frames as f
from tests.backends import RedisBackend
from tests.helpers import async_wait_until


class FailingRegistry(Registry):
    """Claim step 4 fails once for the names in ``fail_claim``; releases of names in ``fail_release``
    fail (Redis does not answer this gateway about them) until the test clears the set."""

    fail_claim: set[str]
    fail_release: set[str]

    async def _add_online(self, node_id: str, epoch: int, sessions: list[tuple[str, str, str]],
                          limit: int) -> tuple[list[tuple[str, str]], list[str], int]:
        for key, _, _ in sessions:
            if key in self.fail_claim:
                self.fail_claim.discard(key)
                raise RedisConnectionError("injected: claim step 4 did not get through")
        return await super()._add_online(node_id, epoch, sessions, limit)

    async def release(self, key: str, node_id: str, token: str) -> bool:
        if key in self.fail_release:
            raise RedisConnectionError("injected: the release did not get through")
        return await super().release(key, node_id, token)


def _settings(backend: RedisBackend, tmp: Path, login_timeout: float = 10.0) -> Settings:
    return Settings(
        redis_url=backend.url, port=0, http_port=0, argon2_memory_kib=1024, argon2_time_cost=1,
        rate_messages=0, rate_requests=0, ip_connections=0, ip_logins=0, data_dir=str(tmp),
        login_timeout=login_timeout,
    )


async def _gateway(settings: Settings) -> tuple[Gateway, FailingRegistry]:
    gateway = Gateway(settings)
    registry = FailingRegistry(gateway.redis, settings.lease_ttl)
    registry.fail_claim, registry.fail_release = set(), set()
    gateway.registry = registry  # the logins and the lease loop use it
    await gateway.start()
    return gateway, registry


@pytest.fixture
async def gateways(redis_backend: RedisBackend, tmp_path: Path) -> AsyncIterator[list[tuple[Gateway, FailingRegistry]]]:
    """Two gateways; the second treats a session on hold 1 s after its claim as abandoned."""
    started = [await _gateway(_settings(redis_backend, tmp_path / "a")),
               await _gateway(_settings(redis_backend, tmp_path / "b", login_timeout=1.0))]
    yield started
    for gateway, registry in started:
        registry.fail_release.clear()
        await gateway.stop()


async def _login(gateway: Gateway, user: str, session: str | None = None) -> dict[str, Any]:
    """One login frame on a fresh socket: its answer (``welcome`` or ``error``) as a dict."""
    async with connect(f"ws://127.0.0.1:{gateway.port}", open_timeout=10) as ws:
        await ws.send(f.encode(f.Login(v=1, user=user, password="pw", session=session, ref="l")), text=True)
        answer: dict[str, Any] = msgspec.json.decode(await asyncio.wait_for(ws.recv(decode=False), 10))
        return answer


def _outcome(answer: dict[str, Any]) -> str:
    return "welcome" if answer["type"] == "welcome" else str(answer["code"])


async def _released(gateway: Gateway, user: str) -> None:
    async def gone() -> bool:
        return not await gateway.redis.exists(keys.session(user))

    await async_wait_until(gone, 5, f"{user}'s logout released the name")


async def _fail_a_login(gateway: Gateway, registry: FailingRegistry, user: str) -> None:
    """A login whose claim stops after writing the session, and whose release does not get through."""
    registry.fail_claim.add(user)
    registry.fail_release.add(user)
    assert _outcome(await _login(gateway, user)) == "unavailable"
    assert await gateway.redis.hget(keys.session(user), "hold") is not None  # the dead attempt holds the name


async def test_a_retry_on_the_same_gateway_gets_in(gateways: list[tuple[Gateway, FailingRegistry]]) -> None:
    """The retry comes while the failed attempt's release is still queued: the gateway finishes that
    release first (Redis answers again), so the retry is welcomed, not refused ``username_taken``."""
    (gw, registry), _ = gateways
    assert _outcome(await _login(gw, "dora")) == "welcome"  # registers dora, then she leaves
    await _released(gw, "dora")
    await _fail_a_login(gw, registry, "dora")
    registry.fail_release.clear()  # Redis answers again; the lease loop has not retried yet
    assert _outcome(await _login(gw, "dora")) == "welcome"


async def test_a_retry_on_another_gateway_waits_then_gets_in(
        gateways: list[tuple[Gateway, FailingRegistry]]) -> None:
    """The retry goes to another gateway, which cannot know the first one failed: while the dead attempt
    is young the answer is ``unavailable`` (its login has not completed), and once it is older than the
    login timeout the name is taken over.  Never ``username_taken``."""
    (gw_a, registry_a), (gw_b, _) = gateways
    assert _outcome(await _login(gw_a, "erin")) == "welcome"
    await _released(gw_a, "erin")
    await _fail_a_login(gw_a, registry_a, "erin")  # A's release keeps failing: it stays queued on A
    seen: list[str] = []

    async def welcomed() -> bool:
        seen.append(_outcome(await _login(gw_b, "erin")))
        return seen[-1] == "welcome"

    await async_wait_until(welcomed, 10, "erin's retry welcomed", interval=0.2)
    assert set(seen) <= {"unavailable", "welcome"}, seen


async def test_a_completed_session_is_still_refused(gateways: list[tuple[Gateway, FailingRegistry]]) -> None:
    """The seed rule stands: a name held by a live session whose login completed (settled, no longer on
    hold) is refused ``username_taken``, however old, and taken over only with its token."""
    (gw_a, _), (gw_b, _) = gateways
    async with connect(f"ws://127.0.0.1:{gw_a.port}", open_timeout=10) as ws:
        await ws.send(f.encode(f.Login(v=1, user="fay", password="pw", ref="l")), text=True)
        welcome: dict[str, Any] = msgspec.json.decode(await asyncio.wait_for(ws.recv(decode=False), 10))
        assert welcome["type"] == "welcome"
        redis = gw_a.redis

        async def settled_and_old() -> bool:
            session = await redis.hgetall(keys.session("fay"))
            now = await redis.time()
            age_ms = now[0] * 1000 + now[1] // 1000 - int(session.get(b"since", b"0"))
            return b"hold" not in session and age_ms > 1500

        await async_wait_until(settled_and_old, 10, "fay's session settled and older than B's login timeout")
        assert _outcome(await _login(gw_b, "fay")) == "username_taken"
        assert _outcome(await _login(gw_b, "fay", session=str(welcome["session"]))) == "welcome"


async def test_a_live_session_whose_settle_failed_is_settled_later(
        gateways: list[tuple[Gateway, FailingRegistry]]) -> None:
    """A completed login whose settle Redis did not answer stays on hold, like an unfinished login (others
    would get ``unavailable``, and it could be taken over): the lease loop settles it later."""
    (gw_a, _), (gw_b, _) = gateways
    settle = gw_a.store.settle
    failed: list[str] = []

    async def settle_failing_once(key: str, token_hash: str, written_upto: str) -> None:
        if key == "gus" and not failed:
            failed.append(key)
            raise RedisConnectionError("injected: the settle did not get through")
        await settle(key, token_hash, written_upto)

    gw_a.store.settle = settle_failing_once  # type: ignore[method-assign]
    async with connect(f"ws://127.0.0.1:{gw_a.port}", open_timeout=10) as ws:
        await ws.send(f.encode(f.Login(v=1, user="gus", password="pw", ref="l")), text=True)
        welcome: dict[str, Any] = msgspec.json.decode(await asyncio.wait_for(ws.recv(decode=False), 10))
        assert welcome["type"] == "welcome"
        await async_wait_until(lambda: failed, 5, "gus's settle failed")

        async def settled() -> bool:
            return await gw_a.redis.hget(keys.session("gus"), "hold") is None

        await async_wait_until(settled, 3 * gw_a.settings.lease_ttl, "the lease loop settled gus")
        assert _outcome(await _login(gw_b, "gus")) == "username_taken"
