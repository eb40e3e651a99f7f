"""docker-compose.yml, the Dockerfile and deploy/haproxy.cfg, checked without Docker.

CI has no Docker engine, so the compose topology can't be started there; these
tests parse the files instead (no Docker, no network) and check that they hang
together with the code: every command is a real console script or a pinned
image, every env var is one the programs read, and ports, volumes and health
checks are where clients and the load balancer expect them.  The process
cluster (chinwag-cluster) is the tested twin of the same topology.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.config import OPTIONS, Settings
from gateway.client_ip import TrustedProxies, client_address

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
HAPROXY = ROOT / "deploy" / "haproxy.cfg"
REDIS_CONF = ROOT / "deploy" / "redis.conf"

# Added by work running alongside this file: the HTTP port for /healthz, /readyz
# and /metrics, and the file-sharing blob directory.  Accepted explicitly so this
# test doesn't depend on when each lands in OPTIONS.
PENDING_ENV = {"CHINWAG_HTTP_PORT", "CHINWAG_BLOB_DIR"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = compose["services"]
    assert isinstance(svcs, dict)
    return svcs


@pytest.fixture(scope="module")
def scripts() -> set[str]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return set(tomllib.load(fh)["project"]["scripts"])


def _argv(value: str | list[str]) -> list[str]:
    return value.split() if isinstance(value, str) else [str(v) for v in value]


def _env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):  # ["KEY=value", ...] form
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _defaults(text: str) -> str:
    """Compose's `${NAME:-default}` interpolation, with nothing set: the defaults."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)


def _published(svc: dict[str, Any]) -> list[str]:
    """Host-side port numbers of a service's `ports` (short or long syntax)."""
    out = []
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            out.append(_defaults(str(p.get("published", ""))))
        else:
            parts = _defaults(str(p)).split("/")[0].split(":")
            out.append(parts[-2] if len(parts) >= 2 else parts[0])
    return out


def _dockerfile_stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined, comments dropped), per stage."""
    stages: list[list[str]] = []
    logical = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        logical += line[:-1] + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        if logical.upper().startswith("FROM "):
            stages.append([])
        assert stages, f"instruction before FROM: {logical}"
        stages[-1].append(logical)
        logical = ""
    return stages


# -- services and commands ---------------------------------------------------


def test_the_four_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert {"redis", "presence", "gateway", "lb"} <= set(services)


def test_every_command_is_a_console_script_or_a_pinned_image(
    services: dict[str, dict[str, Any]], scripts: set[str]
) -> None:
    for name, svc in services.items():
        if "build" in svc:
            # Built from our Dockerfile: the command (or the image's default
            # CMD) must be one of our console scripts.
            argv = _argv(svc["command"]) if "command" in svc else _dockerfile_cmd()
            assert argv and argv[0] in scripts, f"{name}: {argv} is not in [project.scripts] {sorted(scripts)}"
        else:
            image = svc.get("image", "")
            repo, _, tag = image.rpartition(":")
            assert repo and "/" not in tag, f"{name}: image {image!r} has no tag"
            pinned = tag != "latest" and re.match(r"\d+", tag)
            assert pinned, f"{name}: image {image!r} is not pinned to a major version"


def _dockerfile_cmd() -> list[str]:
    cmds = [i for i in _dockerfile_stages()[-1] if i.upper().startswith("CMD ")]
    assert cmds, "final stage has no CMD"
    return [str(a) for a in yaml.safe_load(cmds[-1][4:])]  # exec form is a JSON (so YAML) list


def test_presence_and_gateway_run_the_right_programs(services: dict[str, dict[str, Any]]) -> None:
    assert _argv(services["presence"]["command"])[0] == "chinwag-presence"
    assert _argv(services["gateway"]["command"])[0] == "chinwag-gateway"
    assert _dockerfile_cmd() == ["chinwag-gateway"]


def test_built_services_use_the_repo_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    for name in ("presence", "gateway"):
        build = services[name]["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        assert (ROOT / context / "Dockerfile").resolve() == DOCKERFILE, name


# -- ports, scaling, volumes -------------------------------------------------


def test_gateway_has_three_replicas_and_no_published_ports(services: dict[str, dict[str, Any]]) -> None:
    gw = services["gateway"]
    assert gw["deploy"]["replicas"] == 3
    assert not gw.get("ports"), "published ports would stop `--scale gateway=N` (host port clash)"
    assert "container_name" not in gw, "a fixed container_name stops scaling"


def test_lb_publishes_9000(services: dict[str, dict[str, Any]]) -> None:
    assert "9000" in _published(services["lb"])
    assert "haproxy.cfg" in " ".join(str(v) for v in services["lb"]["volumes"])


def test_redis_has_a_named_volume_and_the_aof_config(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    redis = services["redis"]
    mounts = [str(v) for v in redis["volumes"]]
    named = set(compose.get("volumes") or {})
    assert any(m.split(":")[0] in named and m.split(":")[1] == "/data" for m in mounts), mounts
    conf_mounts = [m for m in mounts if m.split(":")[0] in ("./deploy/redis.conf", "deploy/redis.conf")]
    assert conf_mounts, "deploy/redis.conf is not mounted"
    target = conf_mounts[0].split(":")[1]
    assert target in _argv(redis["command"]), "redis-server is not started with the mounted config"
    conf = REDIS_CONF.read_text(encoding="utf-8")
    assert re.search(r"^appendonly yes$", conf, re.M)
    assert re.search(r"^appendfsync everysec$", conf, re.M)


def test_gateway_blob_volume_is_shared_and_named(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    gw = services["gateway"]
    blob_dir = _env(gw)["CHINWAG_BLOB_DIR"]
    assert f"blobs:{blob_dir}" in [str(v) for v in gw["volumes"]]
    assert "blobs" in compose["volumes"]


def test_every_named_volume_is_declared(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for v in svc.get("volumes") or []:
            source = v.get("source", "") if isinstance(v, dict) else str(v).split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source!r} not declared at the top level"


# -- health checks -----------------------------------------------------------


def test_every_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        hc = svc.get("healthcheck")
        assert hc and not hc.get("disable") and hc.get("test"), f"{name} has no healthcheck"
    assert "redis-cli ping" in " ".join(_argv(services["redis"]["healthcheck"]["test"]))
    # Gateways: readiness on the WebSocket port, the same check HAProxy makes.
    gw = services["gateway"]
    assert "/readyz" in " ".join(gw["healthcheck"]["test"])
    assert "CHINWAG_PORT" in " ".join(gw["healthcheck"]["test"])
    # Presence: its HTTP port, as in the Dockerfile's HEALTHCHECK.
    assert "CHINWAG_HTTP_PORT" in " ".join(services["presence"]["healthcheck"]["test"])
    # lb: HAProxy's monitor-uri on the stats port (503 when no gateway is up),
    # which must be the port it publishes and the URI haproxy.cfg serves.
    lb_test = " ".join(services["lb"]["healthcheck"]["test"])
    m = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*)", lb_test)
    assert m, lb_test
    cfg = HAPROXY.read_text(encoding="utf-8")
    assert re.search(rf"^\s*bind\s+\S*:{m.group(1)}\b", cfg, re.M)
    assert re.search(rf"^\s*monitor-uri\s+{re.escape(m.group(2))}\s*$", cfg, re.M)


def test_dependencies_wait_for_a_healthy_redis(services: dict[str, dict[str, Any]]) -> None:
    for name in ("presence", "gateway"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert "gateway" in services["lb"]["depends_on"]


# -- configuration by environment only -----------------------------------------


def test_env_vars_are_ones_the_programs_read(services: dict[str, dict[str, Any]]) -> None:
    known = {opt.env for opt in OPTIONS} | PENDING_ENV
    for name, svc in services.items():
        for key in _env(svc):
            if key.startswith("CHINWAG_") or key == "REDIS_URL":
                assert key in known, f"{name}: {key} is not in common/config.py OPTIONS"


def test_compose_env_vars_are_documented(services: dict[str, dict[str, Any]]) -> None:
    docs = "".join((ROOT / f).read_text(encoding="utf-8") for f in ("deploy/README.md", "README.md"))
    for name, svc in services.items():
        for key in _env(svc):
            if key.startswith("CHINWAG_") or key == "REDIS_URL":
                assert f"`{key}`" in docs, f"{name}: {key} is not in the env var table"


def test_services_reach_redis_by_service_name(services: dict[str, dict[str, Any]]) -> None:
    for name in ("presence", "gateway"):
        assert _env(services[name])["REDIS_URL"].startswith("redis://redis:"), name  # the compose service
    gw = _env(services["gateway"])
    assert gw["CHINWAG_HOST"] == "0.0.0.0"  # 127.0.0.1 would be unreachable from lb
    assert gw["CHINWAG_PORT"] == "9000"
    assert "CHINWAG_NODE_ID" not in gw  # replicas must not share a node id


# -- Dockerfile ----------------------------------------------------------------


def test_dockerfile_is_multistage_slim_nonroot_with_healthcheck() -> None:
    stages = _dockerfile_stages()
    assert len(stages) >= 2, "want a builder stage and a runtime stage"
    for stage in stages:
        base = stage[0].split()[1]
        assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), stage[0]
    final = stages[-1]
    users = [i.split()[1] for i in final if i.upper().startswith("USER ")]
    assert users, "final stage has no USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    assert any(i.upper().startswith("HEALTHCHECK ") and "/healthz" in i for i in final)
    assert any(i.upper().startswith("WORKDIR ") for i in final)
    assert any(i.upper().startswith("EXPOSE ") and "9000" in i for i in final)


def test_build_tools_stay_in_the_builder() -> None:
    builder, *_, final = _dockerfile_stages()
    assert "build-essential" in " ".join(builder) and "pip wheel" in " ".join(builder)
    runtime = " ".join(final)
    for tool in ("build-essential", "gcc", "g++", "make ", "apt-get install"):
        assert tool not in runtime, f"final stage installs {tool.strip()}"
    assert "--no-index" in runtime and "--find-links /wheels" in runtime


def test_dockerfile_health_port_matches_compose(services: dict[str, dict[str, Any]]) -> None:
    final = " ".join(_dockerfile_stages()[-1])
    m = re.search(r"CHINWAG_HTTP_PORT=(\d+)", final)
    assert m, "image sets no CHINWAG_HTTP_PORT default"
    assert "os.environ.get('CHINWAG_HTTP_PORT','9100')" in final
    assert m.group(1) == "9100"
    for name in ("presence", "gateway"):
        assert _env(services[name])["CHINWAG_HTTP_PORT"] == m.group(1), name
    assert re.search(r"CHINWAG_HOST=0\.0\.0\.0", final)


def test_dockerignore_keeps_the_context_small() -> None:
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert "*" in ignore and "!pyproject.toml" in ignore and "!README.md" in ignore


# -- HAProxy -------------------------------------------------------------------


def test_haproxy_routes_websockets_to_ready_gateways() -> None:
    cfg = HAPROXY.read_text(encoding="utf-8")
    directives = [line.split("#", 1)[0].strip() for line in cfg.splitlines()]
    directives = [d for d in directives if d]
    assert any(re.fullmatch(r"bind\s+\S*:9000", d) for d in directives)
    assert any(d.startswith("timeout tunnel ") for d in directives)
    assert any("/readyz" in d for d in directives if d.startswith(("option httpchk", "http-check send")))
    templates = [d for d in directives if d.startswith("server-template ")]
    assert templates, "no server-template: scaled replicas would not be discovered"
    _, _prefix, count, target, *opts = templates[0].split()
    assert target == "gateway:9000" and int(count) >= 3
    assert "check" in opts and "resolvers" in opts
    resolver = opts[opts.index("resolvers") + 1]
    assert f"resolvers {resolver}" in directives
    # The container's resolv.conf: Docker's 127.0.0.11, or Podman's aardvark-dns.
    assert "parse-resolv-conf" in directives
    assert "mode http" in directives
    assert "balance leastconn" in directives


def test_tls_override_terminates_tls_at_the_load_balancer() -> None:
    override = yaml.safe_load((ROOT / "docker-compose.tls.yml").read_text())
    lb = override["services"]["lb"]
    assert [("9443", 9443)] == [(_defaults(p["published"]), p["target"]) for p in lb["ports"]]
    mounts = _defaults(" ".join(lb["volumes"]))
    assert "./deploy/haproxy-tls.cfg:/usr/local/etc/haproxy/haproxy.cfg" in mounts and "./deploy/certs:" in mounts
    cfg = (ROOT / "deploy" / "haproxy-tls.cfg").read_text()
    assert re.search(r"bind :9443 ssl crt \S+chinwag\.pem", cfg)
    assert "ssl-min-ver TLSv1.2" in cfg and "server-template gw" in cfg and "timeout tunnel" in cfg
    assert (ROOT / "deploy" / "certs").is_dir() and not list((ROOT / "deploy" / "certs").glob("*.pem"))


def test_gateways_take_the_client_address_from_haproxys_header_and_only_from_it(
    services: dict[str, dict[str, Any]],
) -> None:
    """Per-IP limits behind lb count clients, not lb: gateways trust lb's X-Forwarded-For, one hop."""
    gw = services["gateway"]
    settings = Settings.from_args("gateway", [], env=_env(gw))
    trusted = TrustedProxies.parse(settings.trusted_proxies)
    assert trusted.any_peer and not trusted.networks, "compose addresses are dynamic: '*' and nothing else"
    # '*' is only sound while nothing but lb (and the project's own containers) can reach a gateway.
    assert not gw.get("ports") and gw.get("network_mode") is None and "networks" not in gw
    # One hop: lb's appended entry, never the client's own header line.
    assert client_address("172.18.0.5", ["6.6.6.6", "198.51.100.1"], trusted) == "198.51.100.1"
    override = yaml.safe_load((ROOT / "docker-compose.tls.yml").read_text())
    assert "gateway" not in override["services"], "the TLS overlay would need the same setting"
    for cfg_path in (HAPROXY, ROOT / "deploy" / "haproxy-tls.cfg"):
        cfg = cfg_path.read_text(encoding="utf-8")
        chat = cfg[cfg.index("frontend chat") : cfg.index("backend gateways")]
        directives = [line.split("#", 1)[0].strip() for line in chat.splitlines()]
        # Plain forwardfor appends lb's entry; "if-none" would pass a client's header on as the only one.
        assert "option forwardfor" in directives, cfg_path.name
        assert not any("if-none" in d for d in directives), cfg_path.name
