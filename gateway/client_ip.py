"""The client's address: the TCP peer, or what a trusted proxy says in ``X-Forwarded-For``.

The per-IP limits (gateway/limits.py) and the lockout's "address of the last
successful login" (gateway/accounts.py) key on the client's address.  Behind a
load balancer the TCP peer is the balancer, so every client would share its
one budget.  With ``--trusted-proxies`` (``CHINWAG_TRUSTED_PROXIES``) a gateway
believes ``X-Forwarded-For`` from the peers listed there, and only from them.

The rule (:func:`client_address`) is the spoof-resistant one: a client can
write any ``X-Forwarded-For`` it likes, but each proxy *appends* the address it
saw, so only the right end of the list is vouched for.  Walk it from the
right, skipping addresses that are themselves trusted proxies (a chain of
them), and the first untrusted address is the client; whatever a client
wrote further left is never read.  Several ``X-Forwarded-For`` lines count as
one list in order (HAProxy's ``option forwardfor`` adds its own line after the
client's).  Anything unparsable where the walk needs an address makes the
peer the client, as without a proxy.

``*`` trusts any peer, but for **one hop only**: the peer is believed about the
address that connected to it (the rightmost entry), and no entry of the header
is itself trusted.  Treating every entry as trusted would leave only the
leftmost one to believe, which the client wrote.  For a chain (a CDN in front
of HAProxy) list the proxies' addresses instead.

IPv4-mapped IPv6 addresses (``::ffff:a.b.c.d``, a dual-stack socket's view of
an IPv4 peer) count as the IPv4 address, matching limits.py's buckets.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request
from websockets.protocol import Event

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

HEADER = "X-Forwarded-For"
MAX_HOPS = 16  # entries read from the right; a walk needing more gives up (the peer is the client)
_PORT = re.compile(r":[0-9]{1,5}")


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """Who may say who the client is: any peer (``*``, one hop), and/or these networks."""

    any_peer: bool = False
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, spec: str | None) -> TrustedProxies:
        """``"10.0.0.7, 172.16.0.0/12, 2001:db8::/32"`` or ``"*"``; empty: nobody.  ValueError if malformed."""
        any_peer = False
        networks: list[Network] = []
        for raw in (spec or "").split(","):
            entry = raw.strip()
            if not entry:
                continue
            if entry == "*":
                any_peer = True
                continue
            try:
                networks.append(ipaddress.ip_network(entry))  # strict: 10.0.0.5/8 is a typo, not 10/8
            except ValueError as exc:
                raise ValueError(f"not an IP address or network: {entry!r} ({exc})") from None
        return cls(any_peer, tuple(networks))

    def __bool__(self) -> bool:
        return self.any_peer or bool(self.networks)

    def listed(self, addr: Address) -> bool:
        """Is ``addr`` in one of the networks (a proxy that may appear inside a chain)?"""
        return any(addr in net for net in self.networks)

    def trusts_peer(self, addr: Address) -> bool:
        return self.any_peer or self.listed(addr)


NOBODY = TrustedProxies()


def parse_address(text: str) -> Address | None:
    """One address as proxies write it: ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``, ``[2001:db8::1]:443``.

    IPv4-mapped IPv6 comes back as IPv4; anything else (``unknown``, an
    obfuscated name, garbage) is None.
    """
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (text[end + 1 :] and not _port(text[end + 1 :])):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # an IPv4 address with a port (an IPv6 one has at least two colons)
        host, _, port = text.partition(":")
        if not _port(":" + port):
            return None
        text = host
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _port(text: str) -> bool:
    return _PORT.fullmatch(text) is not None and int(text[1:]) <= 65535


def client_address(peer: str, forwarded: Sequence[str], trusted: TrustedProxies) -> str:
    """The client's address for a connection from ``peer`` carrying these ``X-Forwarded-For`` values.

    ``forwarded`` is every ``X-Forwarded-For`` line of the request, in order.
    The peer itself (normalised) unless it is a trusted proxy and the header
    names someone: then the first address from the right that is not a listed
    proxy (with ``*`` alone: the rightmost).  If every entry is a listed proxy,
    the leftmost (a proxy connecting on its own behalf).  An unparsable entry
    reached by the walk, an empty header, or more than ``MAX_HOPS`` proxies:
    the peer.
    """
    peer_addr = parse_address(peer)
    if peer_addr is None:
        return peer  # a unix socket or the like: as given, never a trusted proxy
    if not forwarded or not trusted.trusts_peer(peer_addr):
        return str(peer_addr)
    # rsplit bounds the work: the leftmost piece keeps any further commas and so does not parse.
    entries = ",".join(forwarded).rsplit(",", MAX_HOPS)
    last: Address | None = None
    for entry in reversed(entries):
        addr = parse_address(entry)
        if addr is None:
            return str(peer_addr)
        if not trusted.listed(addr):
            return str(addr)
        last = addr
    return str(last) if last is not None else str(peer_addr)


def peer_host(ws: ServerConnection) -> str:
    """The TCP peer's address without the port."""
    addr = ws.remote_address
    return str(addr[0]) if isinstance(addr, tuple) else str(addr)


class ClientAddressConnection(ServerConnection):
    """Knows its client's address from the handshake, before the gateway empties the request's headers.

    ``client_ip`` is set as the request arrives (before ``process_request``).
    The gateway's subclass sets ``trusted_proxies``.  ``proxy`` is worked out when
    asked (logs only) rather than stored: one attribute more per connection costs
    every connection a dict of its own (see connection.BoundedConnection).
    """

    trusted_proxies: TrustedProxies = NOBODY
    client_ip = ""  # class default: nothing per connection until the request arrives

    @property
    def proxy(self) -> str:
        """The peer when the client's address came from a trusted proxy's header (for logs), else ""."""
        peer = peer_host(self)
        return peer if self.client_ip and self.client_ip != client_address(peer, (), NOBODY) else ""

    def process_event(self, event: Event) -> None:
        first = self.request is None
        super().process_event(event)
        if first and isinstance(event, Request):
            peer = peer_host(self)
            forwarded = event.headers.get_all(HEADER) if self.trusted_proxies else []
            self.client_ip = client_address(peer, forwarded, self.trusted_proxies)


def client_ip(ws: ServerConnection) -> str:
    """The connection's client address: from the handshake if known, else the TCP peer."""
    if isinstance(ws, ClientAddressConnection) and ws.client_ip:
        return ws.client_ip
    return peer_host(ws)


def peer(ws: ServerConnection) -> str:
    """For logs: ``ip:port``, or ``client via proxy:port`` behind a trusted proxy."""
    addr = ws.remote_address
    where = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
    if isinstance(ws, ClientAddressConnection) and ws.proxy:
        return f"{ws.client_ip} via {where}"
    return where
