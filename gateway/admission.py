"""What happens on the WebSocket port before a socket is accepted.

``process_request`` (websockets calls it with each handshake request) turns a
client away early -- too many connection attempts from its address (429,
shared by the cluster in Redis, gateway/limits.py), this gateway full (503) --
and answers the plain HTTP paths the port also serves: the web client
(gateway/webclient.py), file downloads (gateway/files.py) and the
``/healthz`` and ``/readyz`` probes.  It also checks a browser's Origin
(``--allowed-origins``, plus the gateway's own origin: webclient.py says
why).  TLS comes from the settings here too.
"""

from __future__ import annotations

import http
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from websockets.asyncio.server import Server, ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Origin

from common.config import Settings
from common.http import Route
from common.metrics import Counter

from .client_ip import client_ip
from .limits import SharedIpLimiter
from .webclient import WebClient, origin_allowed, parse_origins


@dataclass
class Admission:
    settings: Settings
    ip_connections: SharedIpLimiter
    server: Callable[[], Server | None]
    download: Callable[[Request], Awaitable[Response | None]]
    probes: Callable[[], dict[str, Route]]
    m_errors: Counter
    web: WebClient = field(default_factory=WebClient)

    def __post_init__(self) -> None:
        self.web_origins = parse_origins(self.settings.allowed_origins)

    async def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        """A response to send instead of accepting the WebSocket, or None to go on."""
        if wait := await self.ip_connections.take(client_ip(conn)):
            self.m_errors.inc("ip_connections")
            response = _text(http.HTTPStatus.TOO_MANY_REQUESTS, "too many connections from your address\n")
            response.headers["Retry-After"] = str(max(1, round(wait)))
            return response
        server = self.server()
        if server is not None and _open_at_least(server, self.settings.max_connections):
            self.m_errors.inc("max_connections")
            return _text(http.HTTPStatus.SERVICE_UNAVAILABLE, "too many connections\n")
        if (page := self.web.respond(request)) is not None:
            return page
        path = request.path.split("?", 1)[0]
        if path.startswith("/files/"):
            return await self.download(request)
        if path in ("/healthz", "/readyz"):  # the probes answer on the WebSocket port too
            status, _, body = self.probes()[path]()
            return _text(http.HTTPStatus(status), body.decode())
        if not origin_allowed(request.headers, self.web_origins):  # a WebSocket from a browser
            self.m_errors.inc("origin")
            return _text(http.HTTPStatus.FORBIDDEN, "Failed to open a WebSocket connection: invalid Origin header.\n")
        return None

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.settings.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        return context

    def origins(self) -> list[Origin | None] | None:
        """None: websockets checks no Origin, :meth:`process_request` does (it must also see ``Host``)."""
        return None


def _open_at_least(server: Server, limit: int) -> bool:
    """Whether ``limit`` sockets or more are open (past their handshake, not closing).

    ``server.connections`` builds that set from every socket on each call: asked at every
    handshake it made a login storm O(n²) (a sixth of a gateway's CPU while 3,000 clients
    logged in).  Every open socket is in ``all_connections`` (sockets join it after their
    handshake, and leave when their handler ends), so while that set is smaller than the
    limit the answer is no without looking further."""
    if len(server.all_connections) < limit:
        return False
    return len(server.connections) >= limit


def _text(status: http.HTTPStatus, body: str) -> Response:
    headers = Headers([("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return Response(status.value, status.phrase, headers, body.encode())
