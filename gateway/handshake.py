"""Requests other than ``GET`` on the WebSocket port get ``405 Method Not Allowed``, not a silent close.

websockets parses the request before ``process_request`` (``Admission.process_request``, gateway/admission.py)
sees it, and its parser turns away any request with a body (``Content-Length``
above 0, or ``Transfer-Encoding``) by closing the socket without a word: a
``POST`` with a body got no answer at all.  A bodyless one reached websockets'
own method check and got 405 -- after ``_http`` had answered it like a
``GET``.  :class:`GetOnlyConnection` reads the method as the first bytes
arrive, before the parser: a well-formed method other than ``GET`` is answered
405 with ``Allow: GET`` (the same response websockets gives), the rest of the
request is discarded, and the socket is half-closed as for websockets' own
rejections.  ``GET`` and anything unparseable go on to websockets unchanged.
"""

from __future__ import annotations

import http
import re
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import InvalidMethod

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token: what a method may be
_METHOD_MAX = 32  # bytes without a space: not a method worth waiting for


class GetOnlyConnection(ServerConnection):
    """A ServerConnection (``serve(create_connection=...)``) answering non-GET requests with 405."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head: bytes | None = b""  # the request's first bytes until the method is known; then None

    def data_received(self, data: bytes) -> None:
        if self._head is None:
            super().data_received(data)
            return
        head = self._head + data
        space = head.find(b" ")
        if space < 0 and len(head) < _METHOD_MAX:
            self._head = head  # the method is still arriving
            return
        self._head = None
        method = head[:space] if space > 0 else b""
        if method and method != b"GET" and _TOKEN.fullmatch(method):
            self._refuse(method.decode("ascii"))
        else:
            super().data_received(head)

    def _refuse(self, method: str) -> None:
        exc = InvalidMethod(method)
        response = self.protocol.reject(
            http.HTTPStatus.METHOD_NOT_ALLOWED, f"Failed to open a WebSocket connection: {exc}.\n"
        )
        response.headers["Allow"] = "GET"
        self.protocol.handshake_exc = exc
        self.protocol.send_response(response)  # then discards what else arrives, and sends EOF
        self.send_data()
