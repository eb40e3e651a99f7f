"""chinwag-loadtest on a Redis Cluster of ONE master (and, unless ONE_MASTER_REPLICA=0, its
replica): the cluster client, cluster mode and replication without the split over shards
(an experiment for docs/benchmarks.md, issue 15).  redis-cli --cluster create wants 3 masters,
so the one master takes every slot itself (CLUSTER ADDSLOTSRANGE) and the replica MEETs it."""
import os
import sys
import tempfile
import time
from pathlib import Path

import chinwag.loadtest as lt
from chinwag.cluster import Cluster
from common.redis_binary import redis_server_binary
from common.redis_cluster import ClusterNode, RedisCluster, free_cluster_ports


def wait(pred, what, timeout=30.0):
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise RuntimeError(f"one-master cluster: {what}")
        time.sleep(0.05)


class OneMaster(Cluster):
    def start_redis(self) -> str:
        replica = os.environ.get("ONE_MASTER_REPLICA", "1") != "0"
        rc = RedisCluster(masters=1, host=self.host, appendonly=self.appendonly)
        rc.directory = Path(tempfile.mkdtemp(prefix="chinwag-one-master-"))
        rc._own_dir = True
        binary = redis_server_binary()
        rc.binary = binary
        for port in free_cluster_ports(self.host, 2 if replica else 1):
            d = rc.directory / str(port)
            node = ClusterNode(self.host, port, d, rc._args(binary.path, port, d))
            node.start()
            rc.nodes.append(node)
        wait(lambda: all(n.ask("PING") for n in rc.nodes), "PING")
        master = rc.nodes[0]
        master.ask("CLUSTER", "ADDSLOTSRANGE", "0", "16383")
        if replica:
            rep = rc.nodes[1]
            rep.ask("CLUSTER", "MEET", self.host, str(master.port))
            mid = master.ask("CLUSTER", "MYID")
            mid = mid.decode() if isinstance(mid, bytes) else str(mid)
            wait(lambda: mid.encode() in (rep.ask("CLUSTER", "NODES") or b""), "MEET")
            wait(lambda: rep.ask("CLUSTER", "REPLICATE", mid) is not None, "REPLICATE")
        wait(lambda: all(n.cluster_ok() for n in rc.nodes) and rc.healthy(), "cluster_state:ok")
        self.redis_cluster = rc
        self.redis_note = f"1 master{' + 1 replica' if replica else ''}"
        return rc.url


if __name__ == "__main__":
    lt.Cluster = OneMaster  # type: ignore[misc]
    raise SystemExit(lt.main(sys.argv[1:]))
