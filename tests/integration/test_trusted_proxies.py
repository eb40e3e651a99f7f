"""Behind a trusted proxy the client is the address in X-Forwarded-For, for the per-IP limits and the lockout.

Every test client connects from 127.0.0.1; a gateway configured with
``CHINWAG_TRUSTED_PROXIES=127.0.0.1`` treats it as the load balancer, so the
X-Forwarded-For each connection carries stands for a different client, as
behind the shipped HAProxy.
"""

from __future__ import annotations

from typing import Any

import msgspec
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from protocol import frames as f
from tests.helpers import Proc, Processes, RedisServer, wait_until

TRUST_LOOPBACK = {"CHINWAG_TRUSTED_PROXIES": "127.0.0.1"}
ONE_CONNECTION = {"CHINWAG_IP_CONNECTIONS": "0.2"}  # burst 1, a refill 5 s away: 1 attempt per address in a test
A, B = "198.51.100.1", "203.0.113.7"


async def _connect_status(gateway: Proc, *forwarded: str) -> int:
    """101 if the WebSocket opened, else the HTTP status; one X-Forwarded-For line per value."""
    try:
        async with connect(gateway.url, additional_headers=[("X-Forwarded-For", v) for v in forwarded]):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code


async def _login(gateway: Proc, user: str, password: str, forwarded: str) -> dict[str, Any]:
    async with connect(gateway.url, additional_headers=[("X-Forwarded-For", forwarded)]) as ws:
        await ws.send(f.encode(f.Login(v=1, user=user, password=password, ref="l")), text=True)
        answer: dict[str, Any] = msgspec.json.decode(await ws.recv(decode=False))
        return answer


async def test_each_forwarded_address_has_its_own_connection_budget_shared_by_the_gateways(
    redis_server: RedisServer, processes: Processes
) -> None:
    gw = [processes.gateway(redis_server.url, env=ONE_CONNECTION | TRUST_LOOPBACK) for _ in range(2)]
    statuses = [
        await _connect_status(gw[0], A),
        await _connect_status(gw[1], B),  # another client behind the same proxy: its own budget
        await _connect_status(gw[1], A),  # A again, on the other gateway: A's budget is spent cluster-wide
        await _connect_status(gw[0], B),
        # A writing its own header (a spoofed leftmost entry) in front of the one the proxy appends.
        await _connect_status(gw[0], "192.0.2.99", A),
    ]
    # Taken from the TCP peer, both clients would be 127.0.0.1: [101, 429, 429, 429, 429].
    assert statuses == [101, 101, 429, 429, 429], statuses


async def test_a_gateway_that_does_not_trust_the_peer_ignores_its_header(
    redis_server: RedisServer, processes: Processes
) -> None:
    # Trusting nobody, and trusting a proxy elsewhere (not this peer): both limit the peer, 127.0.0.1.
    gw = [processes.gateway(redis_server.url, env=ONE_CONNECTION | {"CHINWAG_TRUSTED_PROXIES": trusted})
          for trusted in ("", "10.0.0.7")]
    # Each attempt claims another address, alternating between the gateways.
    statuses = [await _connect_status(gw[i % 2], f"192.0.2.{i}") for i in range(4)]
    assert statuses == [101, 429, 429, 429], statuses


async def test_login_budget_and_log_line_follow_the_forwarded_address(
    redis_server: RedisServer, processes: Processes
) -> None:
    env = {"CHINWAG_IP_LOGINS": "0.2"} | TRUST_LOOPBACK  # burst 1 per address
    gw = [processes.gateway(redis_server.url, env=env) for _ in range(2)]
    first = await _login(gw[0], "ann", "pw", A)
    again = await _login(gw[1], "bea", "pw", A)
    other = await _login(gw[1], "cat", "pw", B)
    assert first["type"] == "welcome" and other["type"] == "welcome", (first, other)
    assert again["type"] == "error" and again["code"] == "rate_limited", again
    wait_until(lambda: f"login ann from {A} via 127.0.0.1:" in gw[0].log(), 10, "login logged with the client address")


async def test_a_strangers_failures_behind_the_proxy_do_not_lock_out_the_owners_address(
    redis_server: RedisServer, processes: Processes
) -> None:
    """The lockout keeps a separate budget for the address of the account's last successful login."""
    gateway = processes.gateway(redis_server.url, env={"CHINWAG_LOGIN_FAILURES": "3"} | TRUST_LOOPBACK)
    assert (await _login(gateway, "dora", "right", A))["type"] == "welcome"  # dora's address is now A
    answers = [(await _login(gateway, "dora", "guess", B)).get("code") for _ in range(4)]
    assert answers == ["bad_password"] * 3 + ["rate_limited"], answers  # the strangers' budget is spent
    # Were the stranger taken for 127.0.0.1, dora's own address, those guesses would have spent her budget.
    owner = await _login(gateway, "dora", "right", A)
    assert owner["type"] == "welcome", owner
