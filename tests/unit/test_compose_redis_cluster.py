"""docker-compose.cluster.yml checked without Docker: the Redis Cluster topology of issue 15.

Six ``--cluster-enabled`` nodes with the settings docs/cluster.md explains, a one-shot
redis-init that forms 3 masters + 3 replicas and is idempotent, presence and gateways
given a ``redis+cluster://`` URL naming every node, and the same HAProxy front as
docker-compose.yml.  tests/deploy/test_compose_redis_cluster.py runs the file itself.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.config import OPTIONS, Settings
from common.redis import parse_cluster_url

ROOT = Path(__file__).resolve().parents[2]
NODES = [f"redis-{n}" for n in range(1, 7)]


def _load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    svcs = _load("docker-compose.cluster.yml")["services"]
    assert isinstance(svcs, dict)
    return svcs


def _env(svc: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (svc.get("environment") or {}).items()}


def _init_script(services: dict[str, dict[str, Any]]) -> str:
    """redis-init's shell script as the container runs it (compose turns ``$$`` into ``$``)."""
    init = services["redis-init"]
    assert init["entrypoint"] == ["sh", "-c"]
    (script,) = init["command"]
    return str(script).replace("$$", "$")


def test_the_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {*NODES, "redis-init", "presence", "gateway", "lb"}


def test_each_node_is_a_cluster_node_with_the_settings_the_failover_needs(
        services: dict[str, dict[str, Any]]) -> None:
    for name in NODES:
        node = services[name]
        assert node["image"] == "redis:7-alpine", name
        argv = [str(a) for a in node["command"]]
        assert argv[0] == "redis-server"
        options = dict(zip(argv[1::2], argv[2::2], strict=False))
        assert options["--cluster-enabled"] == "yes"
        assert options["--repl-diskless-sync-delay"] == "0"
        assert options["--cluster-node-timeout"] == "2000"
        assert options["--cluster-require-full-coverage"] == "no"
        assert options["--appendonly"] == "yes"
        assert not node.get("ports"), f"{name}: a Redis node is never published to the host"
        assert "redis-cli ping" in " ".join(node["healthcheck"]["test"])


def test_redis_init_forms_three_masters_with_a_replica_each_once(services: dict[str, dict[str, Any]]) -> None:
    script = _init_script(services)
    assert re.search(r"redis-cli --cluster create \S+ --cluster-replicas 1 --cluster-yes", script)
    assert "cluster_slots_assigned:16384" in script  # an existing cluster is left alone
    assert "cluster_state:ok" in script  # done means usable
    assert all(node in script for node in NODES)
    assert services["redis-init"]["restart"] == "no"
    assert set(services["redis-init"]["depends_on"]) == set(NODES)
    subprocess.run(["sh", "-n", "-c", script], check=True, timeout=10)  # valid shell


def test_presence_and_gateways_get_a_cluster_url_naming_every_node(services: dict[str, dict[str, Any]]) -> None:
    urls = {name: _env(services[name])["CHINWAG_REDIS_URL"] for name in ("presence", "gateway")}
    assert len(set(urls.values())) == 1
    url = urls["gateway"]
    assert parse_cluster_url(url).nodes == tuple((node, 6379) for node in NODES)
    for role in ("presence", "gateway"):
        assert Settings.from_args(role, [], env=_env(services[role])).redis_url == url
        assert services[role]["depends_on"]["redis-init"]["condition"] == "service_completed_successfully"


def test_gateways_and_lb_are_as_in_the_single_redis_file(services: dict[str, dict[str, Any]]) -> None:
    single = _load("docker-compose.yml")["services"]
    assert services["lb"] == single["lb"]  # the same HAProxy, deploy/haproxy.cfg
    gw, one = services["gateway"], single["gateway"]
    for key in ("command", "expose", "deploy", "healthcheck", "volumes", "build", "image"):
        assert gw[key] == one[key], key
    assert not gw.get("ports")
    env, one_env = _env(gw), _env(one)
    one_env.pop("REDIS_URL")
    env.pop("CHINWAG_REDIS_URL")
    assert env == one_env


def test_env_vars_are_ones_the_programs_read_and_documented(services: dict[str, dict[str, Any]]) -> None:
    known = {opt.env for opt in OPTIONS} | {"CHINWAG_REDIS_URL"}
    docs = (ROOT / "deploy" / "README.md").read_text(encoding="utf-8")
    for name, svc in services.items():
        for key in _env(svc):
            assert key in known, f"{name}: {key}"
            assert f"`{key}`" in docs, f"{name}: {key} is not in deploy/README.md"


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), name
