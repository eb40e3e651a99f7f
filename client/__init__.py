"""Chinwag clients: the asyncio client library and the ``chinwag`` CLI built on it."""

from .chat import ChatClient, Closed, Event, StateChanged
from .errors import ClientError, ConnectFailed, Disconnected, FileTransferError, RequestTimeout

__all__ = [
    "ChatClient", "ClientError", "Closed", "ConnectFailed", "Disconnected", "Event", "FileTransferError",
    "RequestTimeout", "StateChanged",
]
