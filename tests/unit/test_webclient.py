"""The gateway's web-client routes and Origin rule (gateway/webclient.py), without a server."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

from websockets.datastructures import Headers
from websockets.http11 import Request

from gateway.webclient import CSP, ROUTES, WebClient, origin_allowed, parse_origins


def get(path: str, *headers: tuple[str, str]) -> Request:
    return Request(path, Headers([("Host", "127.0.0.1:9000"), *headers]))


def test_every_route_is_shipped_and_served_with_its_type() -> None:
    web = WebClient()
    for path, (_, content_type) in ROUTES.items():
        response = web.respond(get(path))
        assert response is not None and response.status_code == 200, path
        assert response.headers["Content-Type"] == content_type
        assert response.headers["Content-Security-Policy"] == CSP
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert int(response.headers["Content-Length"]) == len(response.body) > 0


def test_only_the_listed_paths_are_served() -> None:
    web = WebClient()
    for path in ("/static/../pyproject.toml", "/static/", "/static/%2e%2e/webclient.py", "/index.html",
                 "/static/package.json", "/webclient.py", "/static//app.js", "/files/x", "/healthz"):
        assert web.respond(get(path)) is None, path


def test_a_websocket_upgrade_on_slash_is_left_to_websockets() -> None:
    assert WebClient().respond(get("/", ("Upgrade", "websocket"), ("Connection", "Upgrade"))) is None


def test_etag_revalidation_answers_304() -> None:
    web = WebClient()
    etag = web.respond(get("/static/app.js")).headers["ETag"]  # type: ignore[union-attr]
    response = web.respond(get("/static/app.js", ("If-None-Match", f'"other", {etag}')))
    assert response is not None and response.status_code == 304 and response.body == b""
    assert web.respond(get("/static/app.js", ("If-None-Match", '"stale"'))).status_code == 200  # type: ignore[union-attr]


def test_no_inline_script_or_style_in_the_page() -> None:
    html = WebClient().respond(get("/")).body.decode()  # type: ignore[union-attr]
    assert "<script>" not in html and "style=" not in html and "<style" not in html and "onclick" not in html
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP


def test_origin_rule() -> None:
    allowed = parse_origins("https://chat.example, https://other.example")
    assert allowed == {"https://chat.example", "https://other.example"}
    assert parse_origins("") is None and parse_origins(" , ") is None

    def ok(*headers: tuple[str, str], allow: frozenset[str] | None = allowed) -> bool:
        return origin_allowed(Headers(list(headers)), allow)

    assert ok(("Host", "gw:9000"))  # no Origin: not a browser
    assert ok(("Host", "gw:9000"), ("Origin", "https://chat.example"))
    assert ok(("Host", "gw:9000"), ("Origin", "http://gw:9000"))  # the page this gateway served
    assert ok(("Host", "GW:9000"), ("Origin", "https://gw:9000"))  # behind a TLS-terminating balancer
    assert not ok(("Host", "gw:9000"), ("Origin", "https://evil.example"))
    assert not ok(("Host", "gw:9000"), ("Origin", "http://gw:9001"))
    assert not ok(("Host", "gw:9000"), ("Origin", "null"))
    assert not ok(("Host", "gw:9000"), ("Origin", "http://gw:9000"), ("Origin", "http://gw:9000"))
    assert ok(("Host", "gw:9000"), ("Origin", "https://evil.example"), allow=None)  # no allow-list: anyone


def test_pyproject_ships_every_served_file() -> None:
    """``pip install .`` must carry the web client: each routed file matches a package-data glob."""
    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gateway"]
    for name, _ in ROUTES.values():
        assert any(fnmatch.fnmatch(f"web/{name}", g) for g in globs), name
