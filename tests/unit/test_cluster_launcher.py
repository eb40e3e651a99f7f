"""chinwag-cluster's plan, without processes: what it starts for one Redis and for a Redis Cluster (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chinwag.cluster import Cluster, main

CLUSTER_URL = "redis+cluster://127.0.0.1:20001,127.0.0.1:20002,127.0.0.1:20003"


class Planned(Cluster):
    """A Cluster that records what it would spawn, and whose Redis is pretend."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.spawned: list[tuple[str, list[str]]] = []

    def _spawn(self, name: str, args: list[str]) -> None:
        self.spawned.append((name, args))

    def _wait(self, ready: object, timeout: float, what: str) -> None:
        pass

    def start_redis_cluster(self) -> str:
        return CLUSTER_URL


def _urls(plan: Planned) -> set[str]:
    return {args[args.index("--redis-url") + 1] for _, args in plan.spawned}


@pytest.mark.parametrize("how", ["shards", "url"])
def test_presence_and_gateways_are_started_on_a_redis_cluster(how: str, tmp_path: Path) -> None:
    if how == "shards":
        plan = Planned(gateways=3, redis_shards=3, data_dir=tmp_path, presence_http_port=1)
    else:
        plan = Planned(gateways=3, redis_url=CLUSTER_URL, data_dir=tmp_path, presence_http_port=1)
    assert plan.up() == CLUSTER_URL
    assert [name for name, _ in plan.spawned] == ["presence", "gateway 1", "gateway 2", "gateway 3"]
    assert _urls(plan) == {CLUSTER_URL}
    text = plan.describe()
    assert "gateway 3" in text and "presence" in text and "NOT started" not in text


def test_redis_shards_does_not_go_with_a_redis_url(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["up", "--redis-shards", "3", "--redis-url", CLUSTER_URL])
    assert "does not go with --redis-url" in capsys.readouterr().err
