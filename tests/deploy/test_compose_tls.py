"""The TLS overlay (docker-compose.tls.yml): HAProxy serves wss:// with a test certificate."""

from __future__ import annotations

import http.client
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client import ChatClient
from protocol import frames as f
from tests.deploy.harness import Cluster, Podman, running_cluster
from tests.helpers import free_port, wait_for_event
from tests.web.steps import dm_round_trip, log_in

# Generous: the first test also waits for the session's image builds (cold: minutes).
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def tls(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Path, int]]:
    certs = tmp_path_factory.mktemp("certs")
    certs.chmod(0o755)  # HAProxy runs as an unprivileged user inside the container
    key, cert = certs / "key.pem", certs / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    bundle = certs / "chinwag.pem"
    bundle.write_text(cert.read_text() + key.read_text())
    bundle.chmod(0o644)
    port = free_port()
    env = {"CHINWAG_TLS_PORT": str(port), "CHINWAG_CERTS_DIR": str(certs)}
    with running_cluster(podman, ["docker-compose.yml", "docker-compose.tls.yml"], env) as cluster:
        yield cluster, cert, port


async def test_wss_through_haproxy_with_a_test_certificate(tls: tuple[Cluster, Path, int]) -> None:
    _, cert, port = tls
    url = f"wss://127.0.0.1:{port}"
    alice = await ChatClient.open(url, "tlsalice", "pw-alice", ca_file=str(cert), request_timeout=60)
    bob = await ChatClient.open(url, "tlsbob", "pw-bob", ca_file=str(cert), request_timeout=60)
    try:
        ack = await alice.send("@tlsbob", "over wss")
        got = await wait_for_event(bob, lambda e: isinstance(e, f.Message) and e.id == ack.id, 30)
        assert isinstance(got, f.Message) and got.body == "over wss"
    finally:
        await alice.close()
        await bob.close()


async def test_the_web_client_over_https_and_wss(tls: tuple[Cluster, Path, int], pages: Any) -> None:
    _, cert, port = tls
    # The test certificate is not in Chromium's trust store: the page is taken over https
    # anyway (the Python client below verifies the same certificate).
    page = await pages(f"https://127.0.0.1:{port}/", ignore_https_errors=True)
    await log_in(page, "tlsweb", "pw-web")
    carol = await ChatClient.open(f"wss://127.0.0.1:{port}", "tlscarol", "pw-carol", ca_file=str(cert),
                                  request_timeout=60)
    try:
        await dm_round_trip(page, "tlsweb", carol, "over wss to a browser", "and back from https")
    finally:
        await carol.close()


def test_overlay_containers_resolve_only_inside_the_project_network(tls: tuple[Cluster, Path, int]) -> None:
    cluster, _, _ = tls
    assert cluster.foreign_nameservers() == {}  # as in test_compose_cluster.py


def test_plain_port_redirects_to_https(tls: tuple[Cluster, Path, int]) -> None:
    cluster, _, _ = tls
    conn = http.client.HTTPConnection("127.0.0.1", cluster.lb_port, timeout=10)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 308
        assert (response.getheader("Location") or "").startswith("https://")
    finally:
        conn.close()


async def test_certificate_is_verified(tls: tuple[Cluster, Path, int]) -> None:
    _, _, port = tls
    # Without the test CA the client refuses the self-signed certificate: TLS is really on.
    with pytest.raises(Exception, match=r"(?i)certificate|ssl"):
        client = await ChatClient.open(f"wss://127.0.0.1:{port}", "tlsmallory", "pw", reconnect=False)
        await client.close()
