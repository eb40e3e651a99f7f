"""The client's address from X-Forwarded-For: only trusted peers are believed, only from the right."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from common.config import Settings
from gateway.client_ip import MAX_HOPS, NOBODY, ClientAddressConnection, TrustedProxies, client_address, parse_address
from gateway.connection import bounded_connection
from tests.helpers import free_port

LB = TrustedProxies.parse("10.0.0.7")
CHAIN = TrustedProxies.parse("10.0.0.0/24, 192.0.2.10")  # an internal LB network and an outer proxy
ANY = TrustedProxies.parse("*")


def test_an_untrusted_peers_header_is_ignored() -> None:
    assert client_address("203.0.113.9", ["198.51.100.1"], NOBODY) == "203.0.113.9"
    assert client_address("203.0.113.9", ["198.51.100.1"], LB) == "203.0.113.9"  # not the configured LB
    assert client_address("10.0.0.7", [], LB) == "10.0.0.7"  # a trusted peer with no header: the peer


def test_a_trusted_peer_names_the_client() -> None:
    assert client_address("10.0.0.7", ["198.51.100.1"], LB) == "198.51.100.1"
    assert client_address("10.0.0.7", [" 198.51.100.1 "], LB) == "198.51.100.1"


def test_spoofed_leftmost_entries_are_ignored() -> None:
    # The client wrote "1.1.1.1, 2.2.2.2"; the LB appended the address it saw.
    assert client_address("10.0.0.7", ["1.1.1.1, 2.2.2.2, 198.51.100.1"], LB) == "198.51.100.1"
    # HAProxy's option forwardfor adds its own header line after the client's: one list, in order.
    assert client_address("10.0.0.7", ["1.1.1.1", "198.51.100.1"], LB) == "198.51.100.1"
    # Garbage to the left of the first untrusted address is never read.
    assert client_address("10.0.0.7", ["<script>, unknown", "198.51.100.1"], LB) == "198.51.100.1"


def test_a_chain_of_trusted_proxies_is_walked_from_the_right() -> None:
    # client -> outer proxy 192.0.2.10 -> LB 10.0.0.5 -> LB 10.0.0.6 -> gateway
    xff = ["6.6.6.6, 198.51.100.1, 192.0.2.10, 10.0.0.5"]
    assert client_address("10.0.0.6", xff, CHAIN) == "198.51.100.1"
    # A proxy not listed ends the walk: whatever it claims is not believed.
    assert client_address("10.0.0.6", ["198.51.100.1, 192.0.2.99, 10.0.0.5"], CHAIN) == "192.0.2.99"
    # Every entry a trusted proxy: the leftmost connected on its own behalf.
    assert client_address("10.0.0.6", ["10.0.0.9, 10.0.0.5"], CHAIN) == "10.0.0.9"


def test_star_trusts_any_peer_for_one_hop_only() -> None:
    assert client_address("172.18.0.4", ["198.51.100.1"], ANY) == "198.51.100.1"
    # The rightmost entry, never one the client wrote: the leftmost would be a spoof.
    assert client_address("172.18.0.4", ["6.6.6.6, 198.51.100.1"], ANY) == "198.51.100.1"
    assert client_address("172.18.0.4", ["6.6.6.6", "10.1.2.3"], ANY) == "10.1.2.3"


@pytest.mark.parametrize(
    "header",
    [[""], [" , "], ["unknown"], ["198.51.100.1, not-an-ip"], ["1.2.3.4:99999"], ["[2001:db8::1"], ["1.2.3.4/24"],
     ["_hidden"], ["2001:db8::1]:80"], ["1.2.3.4:80:80"]],
)
def test_malformed_values_fall_back_to_the_peer(header: list[str]) -> None:
    assert client_address("10.0.0.7", header, LB) == "10.0.0.7"


def test_a_header_longer_than_max_hops_of_trusted_proxies_falls_back_to_the_peer() -> None:
    proxies = ", ".join(f"10.0.0.{i}" for i in range(1, MAX_HOPS + 3))
    assert client_address("10.0.0.250", ["198.51.100.1, " + proxies], CHAIN) == "10.0.0.250"
    within = ", ".join(f"10.0.0.{i}" for i in range(1, MAX_HOPS))
    assert client_address("10.0.0.250", ["6.6.6.6, 198.51.100.1, " + within], CHAIN) == "198.51.100.1"


def test_ports_ipv6_and_mapped_ipv4() -> None:
    assert client_address("10.0.0.7", ["198.51.100.1:5555"], LB) == "198.51.100.1"
    assert client_address("10.0.0.7", ["[2001:db8::1]:443"], LB) == "2001:db8::1"
    assert client_address("10.0.0.7", ["2001:DB8:0::1"], LB) == "2001:db8::1"
    assert client_address("10.0.0.7", ["::ffff:198.51.100.1"], LB) == "198.51.100.1"
    # A dual-stack socket shows the IPv4 LB as ::ffff:10.0.0.7: still the trusted LB.
    assert client_address("::ffff:10.0.0.7", ["198.51.100.1"], LB) == "198.51.100.1"
    assert client_address("::ffff:203.0.113.9", [], NOBODY) == "203.0.113.9"
    v6 = TrustedProxies.parse("fd00::/8")
    assert client_address("fd00::1", ["2001:db8::2, fd00::5"], v6) == "2001:db8::2"
    assert client_address("fd01::1", ["2001:db8::2"], LB) == "fd01::1"
    assert client_address("/tmp/gw.sock", ["198.51.100.1"], ANY) == "/tmp/gw.sock"  # not an address: as given
    assert parse_address("fe80::1%eth0") is not None


def test_the_setting_is_checked_at_start() -> None:
    assert Settings.from_args("gateway", [], env={}).trusted_proxies == ""
    env = {"CHINWAG_TRUSTED_PROXIES": " 10.0.0.0/8 ,*, ::1 "}
    assert Settings.from_args("gateway", [], env=env).trusted_proxies == "10.0.0.0/8,*,::1"
    parsed = TrustedProxies.parse("10.0.0.0/8,*,::1")
    assert parsed.any_peer and len(parsed.networks) == 2 and not NOBODY and TrustedProxies.parse(" , ") == NOBODY
    for bad in ("10.0.0.5/8", "lb", "10.0.0.0/33"):
        with pytest.raises(SystemExit):
            Settings.from_args("gateway", [], env={"CHINWAG_TRUSTED_PROXIES": bad})
        with pytest.raises(ValueError):
            TrustedProxies.parse(bad)


async def test_the_connection_keeps_the_address_after_the_handshake_headers_are_emptied() -> None:
    """A real websockets server with the gateway's connection class; loopback is the trusted proxy."""
    seen: dict[str, str] = {}
    done: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    def process_request(conn: ServerConnection, request: Request) -> Response | None:
        assert isinstance(conn, ClientAddressConnection)
        seen["request"] = conn.client_ip
        return None

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        ws.request.headers.clear()  # as Gateway._handle does
        assert isinstance(ws, ClientAddressConnection)
        await done.put((ws.client_ip, ws.proxy))
        await ws.close()

    for trusted, headers, expected in [
        ("127.0.0.1", [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "198.51.100.1")], ("198.51.100.1", True)),
        ("", [("X-Forwarded-For", "198.51.100.1")], ("127.0.0.1", False)),
        ("10.0.0.7", [("X-Forwarded-For", "198.51.100.1")], ("127.0.0.1", False)),
    ]:
        cls = bounded_connection(64 * 1024, 10.0, lambda *_: None, TrustedProxies.parse(trusted))
        port = free_port()
        async with serve(handler, "127.0.0.1", port, create_connection=cls, process_request=process_request):
            async with connect(f"ws://127.0.0.1:{port}", additional_headers=headers) as ws:
                client, proxy = await asyncio.wait_for(done.get(), 10)
                await ws.wait_closed()
        assert (client, proxy.startswith("127.0.0.1") if proxy else False) == expected, trusted
        assert seen["request"] == client
