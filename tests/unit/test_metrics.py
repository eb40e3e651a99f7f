"""Prometheus text exposition of the tiny metrics registry."""

from __future__ import annotations

from common.metrics import Metrics as Registry


def test_counters_gauges_and_histograms_render_in_prometheus_text_format() -> None:
    reg = Registry()
    sent = reg.counter("chinwag_messages_in_total", "Messages in", ("kind",))
    plain = reg.counter("chinwag_plain_total", "No labels")
    reg.gauge("chinwag_connections", "Connections", lambda: 3)
    hist = reg.histogram("chinwag_redis_publish_seconds", "Latency", buckets=(0.001, 0.01))
    sent.inc("dm")
    sent.inc("dm")
    sent.inc("broad\"cast")
    plain.inc(amount=2.5)
    for v in (0.0005, 0.005, 0.5):
        hist.observe(v)
    text = reg.render().decode()
    assert "# TYPE chinwag_messages_in_total counter" in text
    assert 'chinwag_messages_in_total{kind="dm"} 2' in text
    assert 'chinwag_messages_in_total{kind="broad\\"cast"} 1' in text  # label values escaped
    assert "chinwag_plain_total 2.5" in text
    assert "# TYPE chinwag_connections gauge\nchinwag_connections 3" in text
    assert 'chinwag_redis_publish_seconds_bucket{le="0.001"} 1' in text
    assert 'chinwag_redis_publish_seconds_bucket{le="0.01"} 2' in text  # cumulative
    assert 'chinwag_redis_publish_seconds_bucket{le="+Inf"} 3' in text
    assert "chinwag_redis_publish_seconds_count 3" in text
    assert text.endswith("\n")
    assert sent.get("dm") == 2 and sent.get("nope") == 0
