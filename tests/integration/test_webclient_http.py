"""The web client's files over real HTTP from a real gateway process, and the chat still on ``/``.

Raw sockets and http.client (which send the path exactly as given: no
client-side ``..`` clean-up) against the WebSocket port.
"""

from __future__ import annotations

import http.client

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from protocol import frames as f
from tests.helpers import Clients, Processes, RedisServer


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


async def test_the_page_and_its_assets_with_their_headers(
    redis_server: RedisServer, processes: Processes, clients: Clients
) -> None:
    gw = processes.gateway(redis_server.url)
    status, headers, body = get(gw.port, "/")
    assert status == 200 and body.startswith(b"<!doctype html>")
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-content-type-options"] == "nosniff"
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self' ws: wss:" in csp
    for asset, kind in (("/static/app.js", "text/javascript"), ("/static/core.js", "text/javascript"),
                        ("/static/style.css", "text/css")):
        status, headers, body = get(gw.port, asset)
        assert status == 200 and headers["content-type"].startswith(kind) and body, asset
        again, _, empty = get(gw.port, asset, {"If-None-Match": headers["etag"]})
        assert (again, empty) == (304, b""), asset
    # Only the listed files: no traversal, no listing, no source.
    for path in ("/static/../admission.py", "/static/%2e%2e/admission.py", "/static/", "/static/package.json",
                 "/../pyproject.toml", "/webclient.py", "/index.html"):
        status, _, body = get(gw.port, path)
        assert status != 200 and b"import" not in body and b"<html" not in body, path
    # The chat itself is still a WebSocket on "/".
    chat = await clients.login(gw.url, "alice")
    assert chat.user == "alice"


async def test_an_allow_list_still_admits_pages_from_the_gateway_itself(
    redis_server: RedisServer, processes: Processes
) -> None:
    gw = processes.gateway(redis_server.url, args=["--allowed-origins", "https://chat.example"])
    for origin in ("https://chat.example", f"http://127.0.0.1:{gw.port}"):
        async with connect(gw.url, origin=origin) as ws:  # type: ignore[arg-type]
            await ws.send(f.encode(f.Login(v=1, user="alice", password="pw")), text=True)
            assert b'"welcome"' in await ws.recv(decode=False)
    for origin in ("https://evil.example", f"http://127.0.0.1:{gw.port + 1}", f"http://localhost:{gw.port}"):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(gw.url, origin=origin):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403, origin
