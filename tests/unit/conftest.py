"""Fixtures for pure unit tests: an in-memory fakeredis (with Lua) per test."""

from __future__ import annotations

from collections.abc import AsyncIterator

import fakeredis
import pytest


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
async def redis(server: fakeredis.FakeServer) -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    client = fakeredis.FakeAsyncRedis(server=server)
    yield client
    await client.aclose()
