"""Per-IP limits hold for the cluster: attempts spread over two gateways spend one budget in Redis."""

from __future__ import annotations

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from protocol import frames as f
from tests.helpers import Processes, RedisServer

RATE = "0.2"  # per second, bursts of 5x: 1 token per attempt, none refilled within a fast test


async def test_connection_attempts_from_one_ip_share_one_budget_across_gateways(
    redis_server: RedisServer, processes: Processes
) -> None:
    env = {"CHINWAG_IP_CONNECTIONS": RATE}  # burst 1: as low as it goes, so a refill is 5 s away
    gateways = [processes.gateway(redis_server.url, env=env) for _ in range(2)]
    opened: list[ClientConnection] = []
    statuses: list[int] = []
    try:
        for i in range(4):  # alternate: gw0, gw1, gw0, gw1
            try:
                opened.append(await connect(gateways[i % 2].url))
                statuses.append(101)
            except InvalidStatus as refused:
                statuses.append(refused.response.status_code)
                assert int(refused.response.headers["Retry-After"]) >= 1
    finally:
        for ws in opened:
            await ws.close()
    # Per gateway, each would have let its first connection in; shared, only the very first gets in.
    assert statuses == [101, 429, 429, 429], statuses


async def test_login_attempts_from_one_ip_share_one_budget_across_gateways(
    redis_server: RedisServer, processes: Processes
) -> None:
    env = {"CHINWAG_IP_LOGINS": "1"}  # bursts of 5
    gateways = [processes.gateway(redis_server.url, env=env) for _ in range(2)]
    answers = []
    for i in range(12):  # alternate gateways, as fast as possible
        async with connect(gateways[i % 2].url) as ws:
            await ws.send(f.encode(f.Login(v=1, user=f"user{i}", password="pw", ref=f"l{i}")), text=True)
            answers.append(msgspec.json.decode(await ws.recv(decode=False)))
    welcomed = sum(a["type"] == "welcome" for a in answers)
    refused = [a for a in answers if a["type"] == "error"]
    print(f"\nlogins from one IP over two gateways: {welcomed} welcomed, {len(refused)} rate_limited")
    # The burst of 5, plus what refilled at 1/s while the test ran; per gateway it would be 10 or more.
    assert 5 <= welcomed <= 7, answers
    assert refused and all(a["code"] == "rate_limited" and a["retry_after"] > 0 for a in refused)
