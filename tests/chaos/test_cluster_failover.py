"""Chaos on a Redis Cluster (issue 15 acceptance): ``kill -9`` of a master mid-run loses and doubles nothing.

Three gateways with ``--durability replica`` (a send is acked only once
``WAIT 1`` says the shard's replica has it, so the replica promoted after a
crash holds every acked message) and a presence process run on a 3-master,
3-replica cluster of this test's own (it kills a node, so not the session's
``redis_cluster``).  20 clients, each given all three gateways, send numbered
DMs and broadcasts at a steady rate.  Once a quarter of them are acked the
master owning the broadcast stream's slot is killed with SIGKILL -- every
client receives broadcasts, and the DMs of the users stored there stall too;
its replica is promoted about 4 s later (docs/cluster.md), then the killed
node is started again and rejoins as a replica, all while sending goes on.
The verdict is tests/chaos/workload.py's: every acked message reached each of
its recipients exactly once, by its acked id, in order (per sender, and the
broadcast stream).

Size: 3,000 messages by default (CI; well under 90 s).  The acceptance run is
10,000::

    python -m pytest tests/chaos/test_cluster_failover.py --failover-messages 10000

(or ``CHINWAG_FAILOVER_MESSAGES=10000``).  2 % of them are broadcasts.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from common import keys
from common.redis_cluster import Failover, RedisCluster
from tests.chaos.workload import Tally, Workload, run, verdict, wait_acked
from tests.helpers import Processes

DEFAULT_MESSAGES = 3_000
RATE = 400.0  # messages per second offered: slow enough that the kill and the restart fall mid-run
CLIENTS = 20


def failover_load(config: pytest.Config) -> Workload:
    """The run's size: ``--failover-messages``, else ``CHINWAG_FAILOVER_MESSAGES``, else 3,000."""
    chosen = config.getoption("failover_messages", None) or os.environ.get("CHINWAG_FAILOVER_MESSAGES")
    total = int(chosen) if chosen else DEFAULT_MESSAGES
    broadcasts = max(1, total // 50)
    # Sending takes total/RATE seconds unhindered; the failover stalls a shard for ~4 s and the
    # restart for a few more.  The deadline is generous on top, and bounds a hung run.
    return Workload(CLIENTS, total - broadcasts, broadcasts, RATE, deadline=60 + 2 * total / RATE)


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    cluster = RedisCluster(masters=3, directory=tmp_path / "cluster").start()
    yield cluster
    cluster.stop()


@pytest.mark.cluster
@pytest.mark.timeout(600)  # the 10,000-message acceptance run too; the CI size takes well under 90 s
async def test_a_master_killed_mid_run_loses_duplicates_and_reorders_no_acked_message(
    own_cluster: RedisCluster, processes: Processes, request: pytest.FixtureRequest
) -> None:
    load = failover_load(request.config)
    processes.presence(own_cluster.url)
    gateways = [processes.gateway(own_cluster.url, args=["--durability", "replica"]) for _ in range(3)]
    victim = own_cluster.master_for_key(keys.BROADCAST_STREAM)
    seen: dict[str, object] = {}

    async def fault(tally: Tally) -> None:
        await wait_acked(tally, load.total // 4, load.deadline)
        seen["acked_at_kill"] = tally.acked
        failover: Failover = await asyncio.to_thread(own_cluster.kill_master, victim)
        seen["promotion_s"] = round(failover.seconds, 2)
        seen["acked_at_promotion"] = tally.acked
        await asyncio.to_thread(own_cluster.restart, failover.killed)  # back as the new master's replica
        seen["acked_at_rejoin"] = tally.acked

    tally, clients = await run([g.url for g in gateways], fault, load)
    print(f"\nfailover of {victim.address} (broadcast slot): {seen}; messages={load.total}")
    verdict(tally, clients, load)
    assert isinstance(seen["acked_at_kill"], int) and seen["acked_at_kill"] < load.total  # killed mid-run
    assert not victim.is_master() and victim.replica_link_up()  # the killed master rejoined as a replica
    assert all(not g.exited() for g in gateways)  # the gateways rode the failover out
