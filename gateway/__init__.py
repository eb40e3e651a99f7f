"""The Chinwag WebSocket gateway: a stateless node relaying chat through Redis."""
