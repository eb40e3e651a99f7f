"""Router.before_message (the lease check before a live frame) failing must not stop delivery (issue 15).

It ran outside the handler's ``try``: an exception there escaped ``data_received``
and the frame was never handed on.  Now it is logged and the frame delivered;
the cluster router's twin is in test_cluster_transport.py.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from common.runtime import cancel_and_wait
from gateway.router import Router
from tests.helpers import RedisServer, async_wait_until


async def test_a_failing_before_message_is_logged_and_the_message_still_delivered(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    router = Router(redis_server.url)
    got: list[bytes] = []

    def broken() -> None:
        raise RuntimeError("lease check failed")

    router.before_message = broken
    router.set_handler("cw:test:c", got.append)
    runner = asyncio.create_task(router.run())
    publisher = aioredis.Redis.from_url(redis_server.url)
    try:
        await async_wait_until(lambda: router.live, 5, "the router subscribed")
        await publisher.publish("cw:test:c", b"one")
        await publisher.publish("cw:test:c", b"two")
        await async_wait_until(lambda: got == [b"one", b"two"], 5, "both messages delivered")
        assert router.live and router.reconnects == 0
        assert "before_message failed" in caplog.text
    finally:
        await publisher.aclose()
        await cancel_and_wait([runner])
