"""Shared fixtures: a real redis-server per test, real gateway and presence processes.

Nothing here touches a Redis it did not start: every server gets a free
loopback port and its own directory (see tests/helpers.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from common.redis_binary import redis_server_binary
from common.redis_cluster import RedisCluster
from tests.backends import BACKENDS, RedisBackend, reset_cluster, start_single
from tests.helpers import Clients, Proc, Processes, RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One real 3-master + 3-replica Redis Cluster for the whole session (it starts in about 2 s).

    A test that kills a node restarts it before returning (``RedisCluster.restart``),
    so the next test finds every shard with a linked replica again; ``redis_backend``
    also repairs and empties it before each ``[cluster]`` test (tests/backends.py).
    """
    cluster = RedisCluster(masters=3, directory=tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisBackend]:
    """The Redis of a test parametrised over backends (tests/backends.py): ``[single]`` a redis-server
    of its own, ``[cluster]`` the session's cluster, emptied (and made whole again) before the test."""
    if request.param == "single":
        yield from start_single(tmp_path / "redis")
        return
    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    reset_cluster(cluster)
    yield RedisBackend("cluster", cluster.url, cluster=cluster)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that uses ``redis_backend`` once per backend chosen by ``--backend``; ``[cluster]``
    ones carry the ``cluster`` mark, and are skipped for ``single_redis("why")``-marked tests."""
    if "redis_backend" not in metafunc.fixturenames:
        return
    chosen = metafunc.config.getoption("backend")
    only_single = metafunc.definition.get_closest_marker("single_redis")
    params = []
    for kind in (k for k in BACKENDS if chosen in ("both", k)):
        marks: list[pytest.MarkDecorator] = []
        if kind == "cluster":
            marks.append(pytest.mark.cluster)
            if only_single is not None:  # listed as skipped with its reason (-ra), so CI shows what is single-only
                marks.append(pytest.mark.skip(reason=f"single Redis only: {only_single.args[0]}"))
        params.append(pytest.param(kind, id=kind, marks=marks))
    metafunc.parametrize("redis_backend", params, indirect=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: runs on the 3-master Redis Cluster (deselect with -m 'not cluster')")
    config.addinivalue_line("markers", "single_redis(reason): needs one redis-server process; not run on the cluster")


@pytest.fixture
def processes(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    yield procs
    procs.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(procs.dump_logs())


@pytest.fixture
def gateway_pair(redis_server: RedisServer, processes: Processes) -> tuple[Proc, Proc]:
    """Two gateway processes on one Redis: what crosses between them went through Redis."""
    return processes.gateway(redis_server.url), processes.gateway(redis_server.url)


@pytest.fixture
def two_gateways(gateway_pair: tuple[Proc, Proc]) -> tuple[str, str]:
    """The URLs of :func:`gateway_pair`, for tests that only connect to them."""
    return gateway_pair[0].url, gateway_pair[1].url


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    registry = Clients()
    yield registry
    await registry.close_all()


def pytest_report_header() -> str:
    """Which Redis the tests run against (the newest redis-server here), at the top of every run."""
    return f"redis-server: {redis_server_binary() or 'none found'}"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("nemesis", "randomized fault injection (tests/chaos/test_nemesis.py)")
    group.addoption("--nemesis-seed", type=int, default=None,
                    help="replay this seed instead of the CI seeds (or CHINWAG_NEMESIS_SEED)")
    group.addoption("--nemesis-duration", type=float, default=None, help="seconds of faults per seed")
    backends = parser.getgroup("backends", "the Redis behind parametrised integration tests (tests/backends.py)")
    backends.addoption("--backend", choices=["both", *BACKENDS], default="both",
                       help="run [single] (one redis-server), [cluster] (3-master Redis Cluster) or both (default)")
    chaos = parser.getgroup("cluster failover chaos (tests/chaos/test_cluster_failover.py)")
    chaos.addoption("--failover-messages", type=int, default=None,
                    help="DMs + broadcasts sent across the master kill (or CHINWAG_FAILOVER_MESSAGES; default 3000)")
