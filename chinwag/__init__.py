"""Chinwag's programs: ``chinwag-server`` (one embedded node), ``chinwag-admin`` (the
server window), ``chinwag-cluster`` and ``chinwag-loadtest``.

The top layer: it wires ``gateway/``, ``presence/`` and ``client/`` together and
nothing below imports it (tests/unit/test_layers.py).
"""
