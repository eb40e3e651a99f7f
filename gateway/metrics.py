"""The gateway's metrics (``/metrics``): every counter and gauge it exports, named once here.

Counters are incremented where things happen (dispatch, login, fan-out, the
session's writes); gauges read the live state through the callables given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from common.metrics import Counter, Histogram, Metrics


@dataclass(frozen=True)
class GatewayMetrics:
    registry: Metrics
    accepted: Counter
    logins: Counter
    messages_in: Counter
    messages_out: Counter
    errors: Counter
    publish: Histogram
    replayed: Counter
    slow: Counter

    @classmethod
    def create(
        cls, *, connections: Callable[[], float], reconnects: Callable[[], float],
        pipelined_commands: Callable[[], float], pipelined_writes: Callable[[], float],
        channels: Callable[[], float], ready: Callable[[], float],
    ) -> GatewayMetrics:
        m = Metrics()
        made = cls(
            registry=m,
            accepted=m.counter("chinwag_connections_total", "WebSocket connections accepted"),
            logins=m.counter("chinwag_logins_total", "Login attempts by result", ("result",)),
            messages_in=m.counter("chinwag_messages_in_total", "Messages accepted from clients by kind", ("kind",)),
            messages_out=m.counter("chinwag_messages_out_total", "Messages written to clients by kind", ("kind",)),
            errors=m.counter("chinwag_errors_total", "Error frames sent, by code", ("code",)),
            publish=m.histogram("chinwag_redis_publish_seconds", "Duration of the store-and-publish Lua call"),
            replayed=m.counter("chinwag_replayed_messages_total", "Messages replayed from streams", ("reason",)),
            slow=m.counter("chinwag_slow_consumers_total", "Clients cut off for not reading"),
        )
        m.gauge("chinwag_connections", "Logged-in connections on this gateway", connections)
        m.gauge("chinwag_redis_reconnects_total", "Reconnects of the pub/sub connection", reconnects, kind="counter")
        m.gauge("chinwag_redis_pipelined_commands_total", "Send-path commands written to Redis", pipelined_commands,
                kind="counter")
        m.gauge("chinwag_redis_pipelined_writes_total", "Writes that carried them (commands / writes = batching)",
                pipelined_writes, kind="counter")
        m.gauge("chinwag_pubsub_channels", "Redis channels subscribed", channels)
        m.gauge("chinwag_ready", "1 when Redis is reachable and subscriptions are live", ready)
        return made
