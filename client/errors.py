"""Everything the client library raises when it could not get an answer, as one tree.

Two families reach a caller of :class:`~client.chat.ChatClient` and
:mod:`client.files`, and a front end catches exactly these two:

* :class:`protocol.errors.ChatError`: **the server answered no** (an ``error``
  frame, turned back into the class of its code; see protocol/errors.py);
* :class:`ClientError`: **there was no answer**: no connection, the
  connection ended, no reply in time, or a download that went wrong::

    ClientError                    base: the client could not get an answer
    ├── ConnectFailed              no connection: unreachable (the socket's error chained as the cause)
    │   ├── ConnectRefused         ... nothing listens there (also a ConnectionRefusedError)
    │   ├── ConnectTimeout         ... no answer while connecting (also a TimeoutError)
    │   ├── HandshakeFailed        ... something answered, but not as a WebSocket server
    │   └── BadURL                 ... not a ws:// or wss:// URL
    ├── Disconnected               the connection closed for good before the reply
    ├── RequestTimeout             no reply in time (also a TimeoutError)
    └── FileTransferError          a download failed: HTTP error, wrong size or hash; nothing was saved

The leaves also derive from the builtin exception they replace
(``ConnectionError``, ``ConnectionRefusedError``, ``TimeoutError``), so code
written against those keeps working.  Errors of the local file system (a file
to upload that cannot be read) stay ``OSError``: they are not about the
server.
"""

from __future__ import annotations

from websockets.exceptions import InvalidURI


class ClientError(Exception):
    """The client could not get an answer from the server."""


class ConnectFailed(ClientError, ConnectionError):
    """No connection could be opened to ``url``; ``__cause__`` is what the socket or handshake raised."""

    def __init__(self, url: str, message: str) -> None:
        super().__init__(message)
        self.url = url
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConnectRefused(ConnectFailed, ConnectionRefusedError):
    """Nothing accepted a connection at that address."""


class ConnectTimeout(ConnectFailed, TimeoutError):
    """The server did not complete the connection (TCP, TLS, WebSocket handshake) in time."""


class HandshakeFailed(ConnectFailed):
    """The server answered, but refused or botched the WebSocket handshake (e.g. HTTP 404, not a gateway)."""


class BadURL(ConnectFailed):
    """The server address is not a ws:// or wss:// URL."""


class Disconnected(ClientError, ConnectionError):
    """The connection closed (for good) before the reply arrived."""


class RequestTimeout(ClientError, TimeoutError):
    """No reply to a request within its timeout (the connection may still be there)."""


class FileTransferError(ClientError):
    """A download failed (HTTP error, wrong size or hash); nothing was saved under the file's name."""


def connect_failed(url: str, exc: BaseException) -> ConnectFailed:
    """The :class:`ConnectFailed` for what opening a socket to ``url`` raised (raise it ``from exc``)."""
    why = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return ConnectTimeout(url, "no answer in time")
    if isinstance(exc, OSError):
        why = exc.strerror or why
        return ConnectRefused(url, why) if isinstance(exc, ConnectionRefusedError) else ConnectFailed(url, why)
    if isinstance(exc, InvalidURI):
        return BadURL(url, why)
    return HandshakeFailed(url, why)  # any other WebSocketException: the handshake went wrong
