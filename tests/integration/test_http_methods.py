"""The WebSocket port answers a request that is not a GET with HTTP 405, never a silent close.

Raw sockets on loopback against a real gateway process: websockets' parser used
to drop a POST with a body without a word (gateway/handshake.py).
"""

from __future__ import annotations

import socket
import time

from tests.helpers import Processes, RedisServer


def exchange(port: int, *pieces: bytes, timeout: float = 10) -> bytes:
    """Send the request in ``pieces`` and read the answer until the server closes (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            s.sendall(piece)
        answer = b""
        while time.monotonic() < deadline:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                chunk = s.recv(4096)
            except TimeoutError:
                break
            if not chunk:
                return answer  # closed after answering
            answer += chunk
    raise AssertionError(f"the server did not close within {timeout}s; got {answer!r}")


def status_and_headers(answer: bytes) -> tuple[str, str]:
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status, _, headers = head.partition("\r\n")
    return status, headers


def test_post_with_a_body_gets_405(redis_server: RedisServer, processes: Processes) -> None:
    gw = processes.gateway(redis_server.url)
    body = b'{"type":"login","v":1,"user":"alice","password":"pw"}'
    answer = exchange(gw.port, b"POST / HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    status, headers = status_and_headers(answer)
    assert status == "HTTP/1.1 405 Method Not Allowed"
    assert "Allow: GET" in headers.split("\r\n")


def test_chunked_post_and_a_method_split_across_packets_get_405(
    redis_server: RedisServer, processes: Processes
) -> None:
    gw = processes.gateway(redis_server.url)
    chunked = exchange(gw.port, b"PUT /files/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"5\r\nhello\r\n0\r\n\r\n")
    assert status_and_headers(chunked)[0] == "HTTP/1.1 405 Method Not Allowed"
    split = exchange(gw.port, b"PO", b"ST /healthz HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nhi")
    assert status_and_headers(split)[0] == "HTTP/1.1 405 Method Not Allowed"


def test_get_is_still_answered(redis_server: RedisServer, processes: Processes) -> None:
    gw = processes.gateway(redis_server.url)
    answer = exchange(gw.port, b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert status_and_headers(answer)[0] == "HTTP/1.1 200 OK"
    assert answer.endswith(b"ok\n")
    answer = exchange(gw.port, b"G", b"ET /nowhere HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert status_and_headers(answer)[0] == "HTTP/1.1 426 Upgrade Required"
