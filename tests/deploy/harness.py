"""Run the real Dockerfile and docker-compose.yml under Podman, for tests/deploy.

CI machines have no Docker engine and cannot pull images, so this harness:

* builds stand-ins for the three base images the project names
  (``python:3.11-slim``, ``redis:7-alpine``, ``haproxy:2.9-alpine``) from a
  ``debootstrap --variant=minbase bookworm`` root and Debian packages
  (tests/deploy/standins/*.Containerfile), tagged with those exact names, once
  per machine: Podman's image store persists, and each stand-in is also
  tagged with a hash of its Containerfile, so a changed one is rebuilt;
* builds ``chinwag:local`` from the project's own, unmodified ``Dockerfile``
  (Podman's layer cache makes an unchanged rebuild take seconds);
* runs the unmodified ``docker-compose.yml`` with podman-compose, under a
  project name unique to this run, publishing only on 127.0.0.1.

What the harness adds, and why (none of it reaches the files a user runs):

* a containers.conf: ``runc`` (Debian's default ``crun`` cannot set
  RLIMIT_NOFILE here) and default rlimits no higher than this sandbox's hard
  limits (it has no CAP_SYS_RESOURCE, and Podman's root defaults are higher);
* the build gets host networking, the host's CA bundle and a pip.conf naming
  it (``cert =``, i.e. PIP_CERT), bind-mounted for the RUN steps only;
* an override file lowering lb's ``ulimits`` to those same hard limits and
  giving every service ``dns:`` = the project network's aardvark-dns address
  only (see :meth:`Cluster.create_network`: Podman would also list the
  host's nameservers, and HAProxy queries every listed server, so the
  containers would send DNS to an address outside the test's network);
* ``up --no-deps`` (see :meth:`Cluster.up`), and removing scaled-up
  replicas that podman-compose's ``down`` leaves (see :meth:`Cluster.down`).

Podman without systemd runs no healthcheck timers, so a container's health
status stays "starting"; :meth:`Cluster.healthy` runs the compose file's own
healthcheck command once (``podman healthcheck run``) instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.helpers import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
STANDINS = Path(__file__).resolve().parent / "standins"
BASE = "localhost/chinwag-standin/bookworm:base"
# stand-in Containerfile -> the image names the Dockerfile and compose file use
STANDIN_TAGS = {
    "python": "docker.io/library/python:3.11-slim",
    "redis": "docker.io/library/redis:7-alpine",
    "haproxy": "docker.io/library/haproxy:2.9-alpine",
}
IMAGE = "chinwag:local"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")  # Debian's ca-certificates
PROJECT_PREFIX = "cwdeploy"
COMPOSE_TIMEOUT = 240.0  # one podman-compose command (down waits out stop_grace_period)
# Every service of docker-compose.yml (+ .tls.yml): each gets the network-only `dns:`.
# A service missing here would get the host's nameservers again, which
# test_containers_resolve_names_only_inside_the_project_network catches.
SERVICES = ("redis", "presence", "gateway", "lb")
# docker-compose.cluster.yml: six Redis Cluster nodes and the one-shot service that forms the cluster.
CLUSTER_REDIS = tuple(f"redis-{n}" for n in range(1, 7))
CLUSTER_SERVICES = (*CLUSTER_REDIS, "redis-init", "presence", "gateway", "lb")


class HarnessError(RuntimeError):
    """A podman / podman-compose step failed; the message carries its output."""


def run(args: list[str], *, timeout: float = 600.0, check: bool = True, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """One bounded command; a failure raises with its output (what a CI log needs)."""
    proc = subprocess.run(args, capture_output=True, timeout=timeout, env=env, cwd=cwd, text=True)
    if check and proc.returncode != 0:
        raise HarnessError(f"{' '.join(args)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def tools_missing() -> list[str]:
    """The host programs the harness needs that are not installed (.ci/run installs them)."""
    needed = ["podman", "runc", "debootstrap", "iptables"]  # iptables: netavark's bridge networks
    missing = [tool for tool in needed if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]
    if shutil.which("podman-compose", path=str(Path(sys.executable).parent)) is None:
        missing.append("podman-compose (pip: the dev extra)")
    return missing


class Podman:
    """podman with the harness's containers.conf (runc, rlimits within the host's hard limits)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        self.nofile = nofile if nofile != resource.RLIM_INFINITY else 65536
        # Podman cannot set RLIMIT_NPROC as high as this sandbox's hard limit
        # (96365 fails, 32768 works: measured); 32768 threads is plenty.
        self.nproc = min(nproc if nproc != resource.RLIM_INFINITY else 32768, 32768)
        self.conf = workdir / "containers.conf"
        self.conf.write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={self.nofile}:{self.nofile}", "nproc={self.nproc}:{self.nproc}"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            "[network]\n"
            'network_backend = "netavark"\n'  # with aardvark-dns: service names resolve
        )
        self.env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def __call__(self, *args: str, timeout: float = 600.0, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["podman", *args], timeout=timeout, check=check, env=self.env)

    def exists(self, image: str) -> bool:
        return self("image", "exists", image, check=False, timeout=60).returncode == 0

    # -- images ---------------------------------------------------------------

    def ensure_base(self) -> None:
        """The bookworm minbase root, imported as an image: once per machine."""
        if self.exists(BASE):
            return
        root = Path(tempfile.mkdtemp(prefix="chinwag-bookworm.", dir=self.workdir))
        try:
            run(["debootstrap", "--variant=minbase", "bookworm", str(root), "http://deb.debian.org/debian"],
                timeout=900)
            with subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE) as tar:
                imported = subprocess.run(["podman", "import", "-", BASE], stdin=tar.stdout, env=self.env,
                                          capture_output=True, timeout=300, check=False)
            if tar.returncode != 0 or imported.returncode != 0:
                raise HarnessError(f"importing the bookworm root failed: {imported.stderr.decode()[-3000:]}")
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def ensure_standins(self) -> None:
        """python / redis / haproxy stand-ins, rebuilt only when their Containerfile changes."""
        self.ensure_base()
        for name, tag in STANDIN_TAGS.items():
            containerfile = STANDINS / f"{name}.Containerfile"
            digest = hashlib.sha256(containerfile.read_bytes()).hexdigest()[:12]
            local = f"localhost/chinwag-standin/{name}:{digest}"
            if not self.exists(local):
                self("build", "--network", "host", "-f", str(containerfile), "-t", local, str(STANDINS),
                     timeout=900)
            self("tag", local, tag, timeout=60)

    def build_project(self) -> None:
        """chinwag:local from the real Dockerfile, as `docker compose build` would.

        --format docker keeps the Dockerfile's HEALTHCHECK (OCI images have no
        such field).  The CA bundle and a pip.conf naming it are mounted into
        the RUN steps only, never into a layer."""
        pip_conf = self.workdir / "pip.conf"
        pip_conf.write_text("[global]\ncert = /run/chinwag-ci/ca.crt\n")
        self("build", "--format", "docker", "--network", "host",
             "-v", f"{CA_BUNDLE}:/run/chinwag-ci/ca.crt:ro", "-v", f"{pip_conf}:/etc/pip.conf:ro",
             "-t", IMAGE, str(ROOT), timeout=1200)

    # -- leftovers ------------------------------------------------------------

    def remove_project(self, project: str) -> None:
        """Everything labelled with the compose project, whatever state it is in."""
        label = f"label=io.podman.compose.project={project}"
        ids = self("ps", "-a", "-q", "--filter", label, check=False, timeout=60).stdout.split()
        if ids:
            self("rm", "-f", "-t", "0", *ids, check=False, timeout=120)
        for kind in ("network", "volume"):
            names = self(kind, "ls", "-q", "--filter", label, check=False, timeout=60).stdout.split()
            if names:
                self(kind, "rm", "-f", *names, check=False, timeout=120)

    def remove_stale_projects(self) -> None:
        """Projects left by earlier runs whose pytest process is gone (a killed run)."""
        out = self("ps", "-a", "--format", "{{index .Labels \"io.podman.compose.project\"}}",
                   check=False, timeout=60).stdout.split()
        out += self("network", "ls", "--format", "{{.Name}}", check=False, timeout=60).stdout.split()
        for name in sorted(set(out)):
            if not name.startswith(PROJECT_PREFIX):
                continue
            project = name.removesuffix("_default")
            pid = project[len(PROJECT_PREFIX):].split("x")[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                self.remove_project(project)


class Cluster:
    """One compose project: the real compose file(s) plus the harness override."""

    _count = 0

    def __init__(self, podman: Podman, files: list[str], extra_env: dict[str, str] | None = None,
                 services: tuple[str, ...] = SERVICES, one_shot: tuple[str, ...] = ()) -> None:
        Cluster._count += 1
        self.podman = podman
        self.services = services  # every service of the compose file(s): each gets the network-only dns
        self.one_shot = one_shot  # services that run once and exit 0 (no healthcheck to wait for)
        self.project = f"{PROJECT_PREFIX}{os.getpid()}x{Cluster._count}"
        self.lb_port = free_port()
        self.stats_port = free_port()
        # podman-compose's name for the compose file's (implicit) default network.
        self.network = f"{self.project}_default"
        self.override = podman.workdir / f"{self.project}-override.yml"
        self.write_override(dns=[])
        self.files = [*files, str(self.override)]
        self.env = {
            **podman.env,
            "CHINWAG_LB_ADDR": "127.0.0.1",
            "CHINWAG_LB_PORT": str(self.lb_port),
            "CHINWAG_STATS_PORT": str(self.stats_port),
            **(extra_env or {}),
        }
        self.compose_bin = str(Path(sys.executable).parent / "podman-compose")

    def script_env(self) -> dict[str, str]:
        """Environment for deploy/*.sh: the docker CLI is podman, compose is podman-compose."""
        compose = [self.compose_bin, "-p", self.project]
        for file in self.files:
            compose += ["-f", file]
        return {**self.env, "DOCKER": "podman", "COMPOSE": " ".join(compose),
                "COMPOSE_PROJECT_NAME": self.project, "WAIT": "120"}

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.lb_port}"

    def compose(self, *args: str, timeout: float = COMPOSE_TIMEOUT) -> str:
        cmd = [self.compose_bin, "-p", self.project]
        for file in self.files:
            cmd += ["-f", file]
        return run([*cmd, *args], timeout=timeout, env=self.env, cwd=ROOT).stdout

    def up(self, *args: str) -> None:
        """`up -d` and wait until every container passes its healthcheck and lb sees the gateways."""
        # --no-deps: podman-compose turns depends_on into `podman --requires`
        # links, which forbid removing a gateway while lb exists (Docker has no
        # such link; deploy/rolling-restart.sh replace needs it gone).  The
        # containers are still created and started in dependency order.
        self.write_override(dns=self.create_network())
        self.compose("up", "-d", "--no-build", "--no-deps", *args)
        self.wait_healthy()

    def write_override(self, dns: list[str]) -> None:
        """The harness's compose override: lb's rlimits, and each service's DNS server(s).

        Written as JSON, which is YAML too."""
        services: dict[str, dict[str, Any]] = {service: {} for service in self.services}
        # Integers, as in the base file (podman-compose will not merge a str into an int).
        services["lb"]["ulimits"] = {"nofile": self.podman.nofile, "nproc": self.podman.nproc}
        if dns:
            for service in self.services:
                services[service]["dns"] = dns
        self.override.write_text(json.dumps({"services": {k: v for k, v in services.items() if v}}, indent=2))

    def create_network(self) -> list[str]:
        """Create the project's network as podman-compose would; return its aardvark-dns address(es).

        Podman 4.3 writes a container's /etc/resolv.conf as the network's
        aardvark-dns (its gateway address) *plus the host's nameservers*, and
        has no per-network DNS option (its `network create` has no `--dns`).  HAProxy
        (`parse-resolv-conf`) sends each query to every listed server, so lb
        would ask the host's resolver for "gateway" every second: traffic
        leaving the test's network.  A container's own `dns:` replaces the
        whole list, but the gateway address is known only once the network
        exists, so the harness creates it first (Podman picks a free subnet),
        with the labels podman-compose gives it: podman-compose then uses it,
        and `down` removes it as usual.  (aardvark-dns itself forwards only
        dotted names it does not know upstream; the services' names have no dot.)"""
        if self.podman("network", "exists", self.network, check=False, timeout=60).returncode != 0:
            self.podman("network", "create",
                        "--label", f"io.podman.compose.project={self.project}",
                        "--label", f"com.docker.compose.project={self.project}",
                        self.network, timeout=60)
        gateways = [str(subnet["gateway"]) for subnet in self.network_subnets_raw() if subnet.get("gateway")]
        if not gateways:
            raise HarnessError(f"network {self.network} has no gateway address for aardvark-dns")
        return gateways

    def network_subnets_raw(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = json.loads(
            self.podman("network", "inspect", self.network, timeout=60).stdout)
        return list(data[0].get("subnets") or [])

    def network_subnets(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(subnet["subnet"]) for subnet in self.network_subnets_raw()]

    def down(self, *args: str) -> None:
        """`down`: containers and network go, named volumes stay.

        podman-compose 1.6's down only removes the replicas the file asks for
        (3 gateways), not ones added by --scale, as `docker compose down`
        does: the harness removes those itself."""
        self.compose("down", *args)
        label = f"label=io.podman.compose.project={self.project}"
        left = self.podman("ps", "-a", "-q", "--filter", label, timeout=60).stdout.split()
        if left:
            self.podman("rm", "-f", "-t", "30", *left, timeout=120)

    def remove(self) -> None:
        """Bounded cleanup, also after a failure: `down -v`, then force-remove anything left."""
        with contextlib.suppress(Exception):
            self.compose("down", "-v", "-t", "5", timeout=120)
        self.podman.remove_project(self.project)

    # -- looking at it ----------------------------------------------------------

    def containers(self, service: str) -> list[str]:
        out = self.podman(
            "ps", "-a", "--filter", f"label=io.podman.compose.project={self.project}",
            "--filter", f"label=io.podman.compose.service={service}", "--format", "{{.Names}}", timeout=60,
        ).stdout.split()
        return sorted(out)

    def inspect(self, container: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(self.podman("inspect", container, timeout=60).stdout)
        return data[0]

    def ip(self, container: str) -> str:
        networks = self.inspect(container)["NetworkSettings"]["Networks"]
        return str(next(iter(networks.values()))["IPAddress"])

    def all_containers(self) -> list[str]:
        """Every container of the project, whatever service or state."""
        return sorted(self.podman("ps", "-a", "--filter", f"label=io.podman.compose.project={self.project}",
                                  "--format", "{{.Names}}", timeout=60).stdout.split())

    def nameservers(self, container: str) -> list[str]:
        """The nameservers the container's processes read (its /etc/resolv.conf)."""
        text = self.podman("exec", container, "cat", "/etc/resolv.conf", timeout=60).stdout
        return [line.split()[1] for line in text.splitlines() if line.split()[:1] == ["nameserver"]]

    def foreign_nameservers(self) -> dict[str, list[str]]:
        """Per running container: nameservers outside the project's network (must be none),
        or a marker if it lists none at all (then nothing would resolve)."""
        subnets = self.network_subnets()
        found: dict[str, list[str]] = {}
        for container in self.all_containers():
            if not self.running(container):
                continue
            servers = self.nameservers(container)
            foreign = [s for s in servers if not any(ipaddress.ip_address(s) in net for net in subnets)]
            if foreign or not servers:
                found[container] = foreign or ["<no nameserver>"]
        return found

    def healthy(self, container: str) -> bool:
        """The container's own healthcheck (from the compose file or the image) passes now."""
        return self.podman("healthcheck", "run", container, check=False, timeout=60).returncode == 0

    def running(self, container: str) -> bool:
        return bool(self.inspect(container)["State"]["Running"])

    def lb_table(self) -> list[dict[str, str]]:
        """HAProxy's CSV stats rows for the resolved gateway slots (addr, status, scur, stot...)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5) as response:
            lines = response.read().decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return [
            row for row in rows
            if row["pxname"] == "gateways" and row["svname"] not in ("FRONTEND", "BACKEND") and row.get("addr")
        ]

    def lb_servers(self) -> dict[str, str]:
        """HAProxy's view of the gateway slots: server address -> status (only resolved slots)."""
        return {row["addr"].split(":")[0]: row["status"] for row in self.lb_table()}

    def lb_idle(self) -> bool:
        """No client session is open through HAProxy (leastconn then starts every gateway equal)."""
        with contextlib.suppress(OSError):
            return all(row.get("scur", "0") in ("", "0") for row in self.lb_table())
        return False

    def lb_sees_all_gateways(self) -> bool:
        """Every running gateway is UP in HAProxy, and no other slot is."""
        ips = {self.ip(c) for c in self.containers("gateway") if self.running(c)}
        with contextlib.suppress(OSError):
            servers = self.lb_servers()
            return bool(ips) and {addr for addr, status in servers.items() if status == "UP"} == ips
        return False

    def exited_ok(self, container: str) -> bool:
        state = self.inspect(container)["State"]
        return not state["Running"] and int(state.get("ExitCode", -1)) == 0

    def wait_healthy(self, timeout: float = 180.0) -> None:
        for service in self.one_shot:
            for container in self.containers(service):
                wait_until(lambda c=container: self.exited_ok(c), timeout, f"{container} done", interval=1.0)
        everything = [c for s in self.services if s not in self.one_shot for c in self.containers(s)]
        for container in everything:
            wait_until(lambda c=container: self.healthy(c), timeout, f"{container} healthy", interval=1.0)
        wait_until(self.lb_sees_all_gateways, timeout, "HAProxy: every gateway UP", interval=0.5)

    def metrics(self, container: str, port: int = 9100) -> str:
        """GET /metrics from a container on the project's bridge network, as a scraper would."""
        with urllib.request.urlopen(f"http://{self.ip(container)}:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def kill_process(self, container: str) -> int:
        """SIGKILL the container's main process from the host: a crash, not a `docker stop`."""
        pid = int(self.inspect(container)["State"]["Pid"])
        os.kill(pid, 9)
        return pid

    def restart_count(self, container: str) -> int:
        return int(self.inspect(container).get("RestartCount", 0))

    def logs(self) -> str:
        parts = []
        for service in self.services:
            for container in self.containers(service):
                out = self.podman("logs", "--tail", "40", container, check=False, timeout=60)
                parts.append(f"--- {container}\n{out.stdout[-4000:]}{out.stderr[-4000:]}")
        return "\n".join(parts)


@contextlib.contextmanager
def running_cluster(podman: Podman, files: list[str], extra_env: dict[str, str] | None = None,
                    up_args: tuple[str, ...] = ()) -> Iterator[Cluster]:
    """A cluster that is up and healthy inside the block and gone after it, whatever happens."""
    with brought_up(Cluster(podman, files, extra_env), up_args) as cluster:
        yield cluster


@contextlib.contextmanager
def brought_up(cluster: Cluster, up_args: tuple[str, ...] = (), timing: str | None = None) -> Iterator[Cluster]:
    """``cluster`` up and healthy inside the block (its logs printed if it does not come up) and removed
    after it, whatever happens.  With ``timing``, the two steps are :func:`timed` as "compose up<timing>"
    and "compose down<timing>"."""

    def step(what: str) -> contextlib.AbstractContextManager[None]:
        return timed(f"compose {what}{timing}") if timing is not None else contextlib.nullcontext()

    try:
        with step("up"):
            try:
                cluster.up(*up_args)
            except BaseException:
                print(cluster.logs())
                raise
        yield cluster
    finally:
        with step("down"):
            cluster.remove()


def timed(what: str) -> contextlib.AbstractContextManager[None]:
    """Print how long a step took (the CI log shows cold and warm build times)."""

    @contextlib.contextmanager
    def block() -> Iterator[None]:
        start = time.monotonic()
        yield
        print(f"deploy harness: {what} took {time.monotonic() - start:.1f}s", file=sys.stderr)

    return block()
