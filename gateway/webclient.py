"""The browser client every gateway serves on its WebSocket port (``GET /``), and the Origin check.

The web client is a handful of static files shipped inside the package
(``gateway/web/``, package data in pyproject.toml): plain JavaScript modules
and CSS, no build step, nothing fetched from elsewhere.  They are read once,
at start, into memory, and served only by exact path from a fixed table, so
no request path ever reaches the file system (no traversal, no listing).

Every answer carries a strict Content-Security-Policy (scripts and styles
from this origin only, no inline code; WebSocket connections to any
``ws:``/``wss:`` origin, so a page can fail over to another gateway),
``X-Content-Type-Options: nosniff``, and an ``ETag``; files are revalidated
on every load (``Cache-Control: no-cache``, 304 when unchanged), so an
upgraded gateway never leaves a browser on stale code.

A request for ``/`` that asks for a WebSocket upgrade is the chat itself
(every client connects to ``ws://host:port/``) and is left to websockets.

**Origins.**  With ``--allowed-origins`` unset, any Origin may open the
WebSocket (as before).  When it is set, browsers must come from one of those
Origins -- **or from the gateway's own origin**: an Origin whose host:port
equals the request's ``Host`` is the page this gateway (or the load balancer
in front of it) served, so the built-in client keeps working under an
allow-list.  Clients that send no Origin (the CLI, the Tk client) are always
let in.  websockets' own ``origins=`` cannot see the ``Host`` header, so the
check runs here, in ``process_request``.
"""

from __future__ import annotations

import hashlib
import http
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

WEB_DIR = Path(__file__).with_name("web")

# Request path -> (file under WEB_DIR, Content-Type).  Nothing else is served.
ROUTES: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/core.js": ("core.js", "text/javascript; charset=utf-8"),
    "/static/ui.js": ("ui.js", "text/javascript; charset=utf-8"),
    "/static/files.js": ("files.js", "text/javascript; charset=utf-8"),
    "/static/controls.js": ("controls.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
    "/static/icon.svg": ("icon.svg", "image/svg+xml"),
}

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob:; connect-src 'self' ws: wss:; manifest-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'; object-src 'none'"
)
_SECURITY_HEADERS = (
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets(directory: Path = WEB_DIR) -> dict[str, Asset]:
    """Read every routed file once; a missing one is a broken install and fails the gateway's start."""
    assets = {}
    for path, (name, content_type) in ROUTES.items():
        body = (directory / name).read_bytes()
        assets[path] = Asset(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return assets


class WebClient:
    """Answers ``GET`` of the web client's paths; None for anything else (a WebSocket, a download, ...)."""

    def __init__(self, assets: dict[str, Asset] | None = None) -> None:
        self.assets = load_assets() if assets is None else assets

    def respond(self, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        asset = self.assets.get(path)
        if asset is None or is_upgrade(request.headers):
            return None
        headers = Headers(_SECURITY_HEADERS)
        headers["Cache-Control"] = "no-cache"
        headers["ETag"] = asset.etag
        if asset.etag in _etags(request.headers.get_all("If-None-Match")):
            headers["Content-Length"] = "0"
            return Response(http.HTTPStatus.NOT_MODIFIED.value, "Not Modified", headers, b"")
        headers["Content-Type"] = asset.content_type
        headers["Content-Length"] = str(len(asset.body))
        return Response(http.HTTPStatus.OK.value, "OK", headers, asset.body)


def is_upgrade(headers: Headers) -> bool:
    return any("websocket" in value.lower() for value in headers.get_all("Upgrade"))


def _etags(values: list[str]) -> set[str]:
    return {tag.strip().removeprefix("W/") for value in values for tag in value.split(",")}


def origin_allowed(headers: Headers, allowed: frozenset[str] | None) -> bool:
    """Whether a browser's WebSocket handshake may proceed (see the module docstring)."""
    origins = headers.get_all("Origin")
    if not origins:
        return True  # not a browser: the CLI, the Tk client, the load tester
    if len(origins) > 1:
        return False
    if allowed is None or origins[0] in allowed:
        return True
    hosts = headers.get_all("Host")
    if len(hosts) != 1:
        return False
    parts = urllib.parse.urlsplit(origins[0])
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc.lower() == hosts[0].lower()


def parse_origins(setting: str | None) -> frozenset[str] | None:
    """``--allowed-origins`` as a set; None (any Origin) when unset or empty."""
    if not setting:
        return None
    allowed = frozenset(o.strip() for o in setting.split(",") if o.strip())
    return allowed or None
