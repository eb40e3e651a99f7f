"""Chinwag clients: the asyncio client library and the ``chinwag`` CLI built on it."""

from .chat import ChatClient, Closed, Disconnected, Event

__all__ = ["ChatClient", "Closed", "Disconnected", "Event"]
