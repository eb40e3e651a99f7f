"""Transport security and admission: TLS with verified certificates, Origin allow-list, max connections."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from client import ChatClient
from client.errors import ConnectFailed
from protocol import frames as f
from tests.helpers import Clients, Processes, RedisServer, self_signed_cert, wait_for_event


async def test_tls_gateway_with_a_verified_self_signed_certificate(
    tmp_path: Path, redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    cert, key = self_signed_cert(tmp_path)
    gw = processes.gateway(redis_server.url, args=["--tls-cert", str(cert), "--tls-key", str(key)])
    url = f"wss://127.0.0.1:{gw.port}"
    # Verified against the test's own CA file: chat works end to end over TLS.
    alice = await clients.login(url, "alice", ca_file=str(cert))
    bob = await clients.login(url, "bob", ca_file=str(cert))
    await alice.send("@bob", "over TLS")
    got = await wait_for_event(bob, lambda e: isinstance(e, f.Message))
    assert isinstance(got, f.Message) and got.body == "over TLS"
    # Without trusting it, the client refuses the certificate: verification is on by default.
    with pytest.raises(ConnectFailed) as refused:
        await ChatClient.open(url, "carol", "pw", reconnect=False)
    assert isinstance(refused.value.__cause__, ssl.SSLCertVerificationError)
    # And plaintext to a TLS port gets nowhere.
    with pytest.raises(Exception):  # noqa: B017 - any failure to handshake will do
        await ChatClient.open(f"ws://127.0.0.1:{gw.port}", "dave", "pw", reconnect=False, open_timeout=3)


async def test_origin_allow_list(redis_server: RedisServer, processes: Processes) -> None:
    gw = processes.gateway(redis_server.url, args=["--allowed-origins", "https://chat.example"])
    async with connect(gw.url, origin="https://chat.example") as ws:  # type: ignore[arg-type]
        await ws.send(f.encode(f.Login(v=1, user="alice", password="pw")), text=True)
        assert b'"welcome"' in await ws.recv(decode=False)
    with pytest.raises(InvalidStatus) as refused:
        async with connect(gw.url, origin="https://evil.example"):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403
    async with connect(gw.url) as ws:  # no Origin: not a browser, allowed
        await ws.send(f.encode(f.Ping(ref="p")), text=True)
        assert b"not_logged_in" in await ws.recv(decode=False)


async def test_connections_over_the_limit_are_refused(redis_server: RedisServer, processes: Processes) -> None:
    gw = processes.gateway(redis_server.url, args=["--max-connections", "2"])
    first = await connect(gw.url)
    second = await connect(gw.url)
    try:
        with pytest.raises(InvalidStatus) as refused:
            await connect(gw.url)
        assert refused.value.response.status_code == 503
        await first.close()
        third = await connect(gw.url)  # room again
        await third.close()
    finally:
        await first.close()
        await second.close()
