"""The presence service: frees the names of gateways that died (``chinwag-presence``).

Gateways renew a lease in Redis every third of its TTL.  This service sweeps
expired leases every ``reap_interval`` seconds; a gateway killed with ``kill -9``
has its users shown offline and its names freed within ``lease_ttl +
reap_interval`` seconds (11 s with the defaults).

After losing Redis the reaper waits one full TTL of good connection before it
reaps again, so gateways get the chance to renew leases that ran out while
Redis itself was away, instead of having all their users kicked at once.
Several presence services may run: each step of a sweep is a check-and-act in
one slot (presence/registry.py), so they never double-free, and a sweep that
dies midway is finished by the next one (the lease it took away stays listed
as being reaped until every name is freed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from redis.exceptions import RedisError

from common.backoff import Backoff
from common.config import Settings
from common.http import health_routes, serve_http
from common.layout import OldLayout, require_new_layout
from common.metrics import Metrics
from common.redis import REDIS_ERRORS, connect_any
from common.runtime import cancel_and_wait, end_if_cancelled, service_main

from .registry import Registry

log = logging.getLogger("chinwag.presence")


class Reaper:
    """Background loop that frees expired gateways' names; survives Redis outages."""

    def __init__(self, registry: Registry, settings: Settings, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.settings = settings
        self._clock = clock
        self._grace_until: float | None = None  # None while Redis is unreachable
        self.sweeps = 0
        self.reaped_gateways = 0
        self.freed_names = 0

    @property
    def redis_up(self) -> bool:
        return self._grace_until is not None

    async def sweep_once(self) -> list[str]:
        """One sweep; returns the gateway ids reaped."""
        reaped: list[str] = []
        while True:
            end_if_cancelled()  # back-to-back redis-py calls: a swallowed cancel would otherwise run on
            ids, freed = await self.registry.reap_expired()
            if not ids:
                break
            reaped.extend(ids)
            self.reaped_gateways += len(ids)
            self.freed_names += len(freed)
            log.warning("reaped gateways %s (lease expired): freed %d names", ",".join(ids), len(freed))
        self.sweeps += 1
        return reaped

    async def run(self) -> None:
        backoff = Backoff(base=0.1, cap=5.0)
        lost_redis = False
        while True:
            end_if_cancelled()  # redis-py's wait_for may have swallowed a cancel during the last turn
            try:
                await self.registry.redis.ping()
                now = self._clock()
                if self._grace_until is None:
                    grace = self.settings.lease_ttl if lost_redis else 0.0
                    self._grace_until = now + grace
                    log.info("connected to Redis; reaping in %.1fs", grace)
                if now >= self._grace_until:
                    await self.sweep_once()
                backoff.reset()
                end_if_cancelled()
                await asyncio.sleep(self.settings.reap_interval)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self._grace_until is not None:
                    log.warning("lost Redis (%s); reconnecting", type(exc).__name__)
                self._grace_until = None
                lost_redis = True
                await asyncio.sleep(backoff.next_delay())
            except Exception:
                log.exception("reaper sweep failed; retrying")
                await asyncio.sleep(backoff.next_delay())


def add_metrics(metrics: Metrics, reaper: Reaper) -> None:
    """The reaper's work as Prometheus series (also merged into chinwag-server's /metrics)."""
    metrics.gauge("chinwag_presence_sweeps_total", "Reaper sweeps done", lambda: reaper.sweeps, kind="counter")
    metrics.gauge("chinwag_presence_reaped_gateways_total", "Gateways reaped after their lease expired",
                  lambda: reaper.reaped_gateways, kind="counter")
    metrics.gauge("chinwag_presence_freed_names_total", "Names freed by reaping", lambda: reaper.freed_names,
                  kind="counter")
    metrics.gauge("chinwag_presence_redis_up", "1 while the reaper reaches Redis", lambda: float(reaper.redis_up))


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run the reaper (and its HTTP endpoints) until ``stop`` is set."""
    redis = connect_any(settings.redis_url or "redis://127.0.0.1:6379/0")  # one Redis or a cluster, by scheme
    try:
        await require_new_layout(redis)  # the previous release's data: chinwag-migrate first
    except REDIS_ERRORS:
        pass  # unreachable: the reaper waits for it like any outage
    except OldLayout:
        await redis.aclose()
        raise
    reaper = Reaper(Registry(redis, settings.lease_ttl), settings)
    task = asyncio.create_task(reaper.run(), name="presence-reaper")
    metrics = Metrics()
    add_metrics(metrics, reaper)
    http: asyncio.Server | None = None
    if port := settings.http_port_for("presence"):
        http = await serve_http(settings.host, port, health_routes(lambda: reaper.redis_up, metrics.render))
    log.info("presence service running (lease ttl %.1fs, sweep every %.1fs)", settings.lease_ttl,
             settings.reap_interval)
    try:
        await stop.wait()
    finally:
        if http is not None:
            http.close()
        await cancel_and_wait([task])
        await redis.aclose()
        log.info("presence service stopped")


def main(argv: list[str] | None = None) -> None:
    service_main("presence", argv, "Chinwag presence service: frees the usernames of gateways that died.", serve)


if __name__ == "__main__":
    main()
