"""Plumbing shared by every Chinwag service and program: settings, Redis keys and
connections, logging, backoff, metrics, the tiny HTTP server, the redis-server finder.

This layer sits just above ``protocol/`` and below ``gateway/``, ``presence/`` and
``client/``: it may import ``protocol`` and nothing else of Chinwag's
(tests/unit/test_layers.py holds every layer to that).
"""
