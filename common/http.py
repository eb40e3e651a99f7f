"""A minimal HTTP/1.1 server for health checks and metrics on a port of its own.

Only ``GET`` of a fixed set of paths; every request is read with a size and
time bound and answered with ``Connection: close``.  Enough for load
balancers, container health checks and Prometheus, and nothing an attacker
can keep open.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.error
import urllib.request
from collections.abc import Callable

from .metrics import CONTENT_TYPE

log = logging.getLogger("chinwag.http")

Route = Callable[[], tuple[int, str, bytes]]  # -> (status, content type, body)
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable", 400: "Bad Request"}


async def serve_http(host: str, port: int, routes: dict[str, Route]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, path, *_ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            route = routes.get(path.split("?", 1)[0])
            if method != "GET":
                status, ctype, body = 405, "text/plain", b"GET only\n"
            elif route is None:
                status, ctype, body = 404, "text/plain", b"not found\n"
            else:
                status, ctype, body = route()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            status, ctype, body = 400, "text/plain", b"bad request\n"
        except ConnectionError:
            writer.close()
            return
        except Exception:
            log.exception("HTTP handler failed")
            status, ctype, body = 503, "text/plain", b"error\n"
        head_out = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        try:
            writer.write(head_out.encode() + body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=8192)


def http_status(url: str, timeout: float = 1.0) -> int:
    """Status of a GET (0 if nothing answered): how launchers and tests probe /readyz."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def health_routes(ready: Callable[[], bool], metrics: Callable[[], bytes] | None = None) -> dict[str, Route]:
    """``/healthz`` (the process runs), ``/readyz`` (``ready()``: worth sending traffic to) and,
    given ``metrics``, ``/metrics`` in the Prometheus text format: one definition for every service."""
    def readyz() -> tuple[int, str, bytes]:
        return (200, "text/plain", b"ready\n") if ready() else (503, "text/plain", b"not ready\n")

    routes: dict[str, Route] = {"/healthz": lambda: (200, "text/plain", b"ok\n"), "/readyz": readyz}
    if metrics is not None:
        routes["/metrics"] = lambda: (200, CONTENT_TYPE, metrics())
    return routes
