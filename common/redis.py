"""Creating Redis command clients the same way everywhere.

Two kinds of URL: a single Redis (``redis://``, ``rediss://``, ``unix://``), and
a Redis Cluster, ``redis+cluster://[user:password@]host:port[,host:port…]``
(``rediss+cluster://`` for TLS), naming one or more seed nodes; the client
learns the rest of the cluster from them.  A cluster URL gets redis-py's
asyncio ``RedisCluster`` (see docs/cluster.md for why that client), from
``connect_redis_cluster``.  ``connect_redis`` serves single-Redis URLs as it
always did and refuses a cluster URL with a clear error, so code that only
knows one Redis (the embedded server, a single-Redis tool) never gets a
cluster client by accident.  The programs that run on either (the gateway,
presence, ``chinwag-admin``, the load tester) call ``connect_any``, which picks
by the URL's scheme, and type what they pass down as ``RedisClient``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError

# What "Redis is away" looks like to a caller: redis-py's own errors, the socket's, and a
# ``wait_for`` around a command running out.  Loops catch exactly these, back off and retry.
REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


def is_closed_transport(exc: BaseException) -> bool:
    """uvloop's way of saying "this socket is closed": ``RuntimeError('unable to perform operation on
    <TCPTransport closed=True ...>; the handler is closed')``, raised by a write to a connection whose
    peer went away (a killed cluster master).  Only that message: any other RuntimeError is a bug."""
    text = str(exc)
    return type(exc) is RuntimeError and text.startswith("unable to perform operation on") and "closed" in text


class TranslatingConnection(Connection):
    """redis-py's connection, with uvloop's closed-transport RuntimeError turned into the ConnectionError it is.

    redis-py turns a write's OSError into ConnectionError but re-raises anything else as is, and
    uvloop (unlike asyncio's own transports) raises RuntimeError for a write to a closed transport.
    Translating it here, where redis-py raises it, is the one place that covers every caller: every
    ``except REDIS_ERRORS`` in the programs, and redis-py's own cluster client, whose retry and slot-map
    refresh after a failover react to ConnectionError only.  Safe because the test is narrow (the
    exact uvloop message, see ``is_closed_transport``) and redis-py has already dropped the connection
    (its ``except BaseException`` disconnects before re-raising), so what follows is what follows any
    lost connection: the next command connects again.
    """

    async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except RuntimeError as exc:
            if not is_closed_transport(exc):
                raise
            raise ConnectionError(f"Error writing to socket: the connection is closed ({exc})") from exc


def _use_translating_connections(cluster: RedisCluster) -> RedisCluster:
    """Make every node connection of ``cluster`` a TranslatingConnection (RedisCluster takes no
    ``connection_class``: it fixes its own in the kwargs it hands each ClusterNode, so set it there,
    for the nodes it has made already and those it will make on learning the slot map)."""
    if cluster.nodes_manager.connection_kwargs.get("connection_class", Connection) is not Connection:
        return cluster  # TLS (SSLConnection): left as redis-py made it
    cluster.nodes_manager.connection_kwargs["connection_class"] = TranslatingConnection
    for node in cluster.nodes_manager.startup_nodes.values():
        node.connection_class = TranslatingConnection
    return cluster


# What the programs pass down: one Redis or a cluster client.  Both carry the same command methods
# (get, hset, evalsha, pipeline(transaction=False), ...); what differs is which scripts and
# multi-key commands each may run (docs/cluster.md: one slot per script).
RedisClient = Redis | RedisCluster

CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    """A parsed ``redis+cluster://`` URL: the seed nodes and the credentials, if any."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES if "://" in url else False


def _host_port(part: str, url: str) -> tuple[str, int]:
    if part.startswith("["):  # [::1]:7000
        host, sep, rest = part[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad IPv6 address {part!r} in {redacted_url(url)!r}")
        port_text = rest[1:]
    else:
        if part.count(":") > 1:
            raise ValueError(f"IPv6 address {part!r} must be in brackets, e.g. [::1]:7000")
        host, _, port_text = part.partition(":")
    if not host:
        raise ValueError(f"empty host in {redacted_url(url)!r}")
    if not port_text:
        return host, 6379
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port {port_text!r} in {redacted_url(url)!r}")
    return host, int(port_text)


def parse_cluster_url(url: str) -> ClusterUrl:
    """``redis+cluster://[user:password@]host:port[,host:port…][/0]`` -> its parts; ValueError names the fault.

    A cluster has only database 0, so a path other than ``/`` or ``/0`` is an
    error, and so is a query string (no option is read from it yet, and
    silently dropping one would surprise).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in CLUSTER_SCHEMES:
        raise ValueError(f"not a cluster URL (redis+cluster:// or rediss+cluster://): {redacted_url(url)!r}")
    if "?" in rest or "#" in rest:
        raise ValueError(f"a cluster URL takes no query or fragment: {redacted_url(url)!r}")
    netloc, _, path = rest.partition("/")
    if path not in ("", "0"):
        raise ValueError(f"a cluster has only database 0, not {path!r}: {redacted_url(url)!r}")
    username = password = None
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    parts = netloc.split(",")
    if not netloc or any(not part for part in parts):
        raise ValueError(f"a cluster URL needs host:port[,host:port…]: {redacted_url(url)!r}")
    nodes = tuple(_host_port(part, url) for part in parts)
    return ClusterUrl(nodes, username, password, CLUSTER_SCHEMES[scheme.lower()])


def connect_redis_cluster(url: str, *, max_connections: int = 64) -> RedisCluster:
    """redis-py's asyncio cluster client for a ``redis+cluster://`` URL (connects on first use).

    ``require_full_coverage=False``: while one shard fails over, commands for
    the other shards' slots still run.  Socket timeouts as for a single Redis.
    ``max_connections`` is per node.
    """
    parsed = parse_cluster_url(url)
    return _use_translating_connections(RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in parsed.nodes],
        username=parsed.username,
        password=parsed.password,
        ssl=parsed.tls,
        require_full_coverage=False,
        max_connections=max_connections,
        decode_responses=False,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
    ))


def connect_redis(url: str, *, max_connections: int = 64, pool_timeout: float = 5.0) -> Redis:
    """A pooled client that fails fast when Redis is away, and queues when it is merely busy.

    At most ``max_connections`` commands are in flight; more wait up to
    ``pool_timeout`` for a free connection (a burst of logins or sends is
    queued, not answered ``unavailable``).  One immediate retry covers the
    stale pooled socket left by a Redis restart; anything longer is the
    caller's backoff loop.  A timeout is not retried: the script may have run,
    and running a send twice would store it twice.

    A ``redis+cluster://`` URL is refused here (ValueError): a caller that can
    take a cluster calls ``connect_any``; one that cannot must not get a
    client whose scripts would fail CROSSSLOT later, far from the cause.
    """
    if is_cluster_url(url):
        parse_cluster_url(url)  # a malformed one is reported as such first
        raise ValueError(
            f"{redacted_url(url)}: connect_redis takes a single Redis URL; a Redis Cluster needs "
            "connect_any or connect_redis_cluster (docs/cluster.md)"
        )
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        decode_responses=False,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        retry=Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
        health_check_interval=0,
        **_connection_class(url),
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() disconnects it


def _connection_class(url: str) -> dict[str, Any]:
    """TranslatingConnection for a plain TCP URL; TLS and unix sockets keep redis-py's own class."""
    return {"connection_class": TranslatingConnection} if url.lower().startswith("redis://") else {}


def connect_any(url: str, *, max_connections: int = 64) -> RedisClient:
    """The client a URL names: ``connect_redis_cluster`` for ``redis+cluster://``, else ``connect_redis``.

    ``max_connections`` is per node on a cluster, for the whole pool on one Redis.
    """
    if is_cluster_url(url):
        return connect_redis_cluster(url, max_connections=max_connections)
    return connect_redis(url, max_connections=max_connections)


def redacted_url(url: str | None) -> str:
    """A Redis URL fit for logs and windows: any credentials (user and password) become ``***``."""
    if not url:
        return ""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def publish_command(redis: object) -> str:
    """SPUBLISH on a Redis Cluster (sharded pub/sub), PUBLISH on one Redis (6.2 has no SPUBLISH)."""
    return "SPUBLISH" if isinstance(redis, RedisCluster) else "PUBLISH"
