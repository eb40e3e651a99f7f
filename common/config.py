"""All configuration in one place: a frozen Settings built from flags and env vars.

Every option has a flag and an environment variable (``CHINWAG_*``, plus the
conventional ``REDIS_URL``); a flag beats the environment, which beats the
default.  Entry points build one Settings and pass it down; nothing below
reads ``os.environ``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from common.redis import is_cluster_url, parse_cluster_url


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def _networks(raw: str) -> str:
    """Comma-separated IP addresses/networks or ``*``, checked here so a typo stops the program at start."""
    entries = [e.strip() for e in raw.split(",") if e.strip()]
    for entry in entries:
        if entry != "*":
            try:
                ipaddress.ip_network(entry)
            except ValueError as exc:
                raise ValueError(f"not an IP address, network or '*': {entry!r} ({exc})") from None
    return ",".join(entries)


def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError(f"must be at least 1, not {value}")
    return value


DURABILITIES = ("memory", "replica")


def _durability(raw: str) -> str:
    """``memory`` (acked once the master has it) or ``replica`` (acked once a replica has it too: WAIT 1)."""
    value = raw.strip().lower()
    if value not in DURABILITIES:
        raise ValueError(f"must be one of {', '.join(DURABILITIES)}, not {raw!r}")
    return value


@dataclass(frozen=True, slots=True)
class Option:
    name: str  # Settings field
    env: str
    help: str
    roles: frozenset[str]  # which programs take it: gateway, presence, server
    parse: Callable[[str], Any] = str
    # Help for particular roles, when ``help`` would name an option or a default the program does not have.
    role_help: Mapping[str, str] = field(default_factory=dict)

    def help_for(self, role: str) -> str:
        return self.role_help.get(role, self.help)


_G, _P, _S = "gateway", "presence", "server"
_ALL = frozenset((_G, _P, _S))
_GW = frozenset((_G, _S))
_M = "migrate"  # chinwag-migrate (chinwag/migrate.py) takes only the Redis URL and the logging options
_ALL_M = _ALL | {_M}

OPTIONS: tuple[Option, ...] = (
    Option("host", "CHINWAG_HOST", "address to listen on", _ALL),
    Option("port", "CHINWAG_PORT", "WebSocket port", _GW, int),
    Option("redis_url", "REDIS_URL", "Redis URL (redis://, unix://), or a Redis Cluster's seed nodes: "
           "redis+cluster://host:port[,host:port...]", _ALL_M,
           role_help={_S: "Redis URL (redis://, unix://; one Redis, not a cluster); without it an embedded "
                          "Redis is started, its data in --data-dir",
                      _M: "URL of the one Redis to migrate (redis://, unix://)"}),
    Option("http_port", "CHINWAG_HTTP_PORT", "port for /healthz, /readyz and /metrics (default: the WebSocket "
           "port + 100; 0 turns it off)", _ALL, int,
           role_help={_P: "port for /healthz, /readyz and /metrics (default: 9190; 0 turns it off)"}),
    Option("node_id", "CHINWAG_NODE_ID", "this gateway's id in the cluster (default: random)", _GW),
    Option("data_dir", "CHINWAG_DATA_DIR", "where the embedded Redis keeps its data", frozenset((_S,))),
    Option("lease_ttl", "CHINWAG_LEASE_TTL", "seconds a gateway's lease lives without renewal", _ALL,
           float),
    Option("reap_interval", "CHINWAG_REAP_INTERVAL", "seconds between presence reaper sweeps",
           frozenset((_P, _S)), float),
    Option("max_frame_bytes", "CHINWAG_MAX_FRAME_BYTES", "largest client frame answered "
           "(larger ones get too_large)", _GW, int),
    Option("max_body_chars", "CHINWAG_MAX_BODY_CHARS", "longest message body", _GW, int),
    Option("stream_maxlen", "CHINWAG_STREAM_MAXLEN", "messages kept per conversation stream", _GW, int),
    Option("login_timeout", "CHINWAG_LOGIN_TIMEOUT", "seconds a new socket has to log in", _GW, float),
    Option("max_write_buffer", "CHINWAG_MAX_WRITE_BUFFER", "bytes queued to one client before it "
           "is cut off as a slow consumer", _GW, int),
    Option("login_write_buffer", "CHINWAG_LOGIN_WRITE_BUFFER", "bytes queued to a socket that has not logged "
           "in yet (pongs and error frames) before it is dropped", _GW, int),
    Option("control_frames", "CHINWAG_CONTROL_FRAMES", "pings and pongs per second one connection may send, "
           "bursts of 10x that (0: unlimited); more and it is dropped", _GW, float),
    Option("compression", "CHINWAG_COMPRESSION", "enable permessage-deflate", _GW, _bool),
    Option("tls_cert", "CHINWAG_TLS_CERT", "PEM certificate (chain) to serve wss:// with", _GW),
    Option("tls_key", "CHINWAG_TLS_KEY", "PEM private key of --tls-cert", _GW),
    Option("allowed_origins", "CHINWAG_ALLOWED_ORIGINS", "comma-separated Origin values browsers may connect "
           "from (clients sending no Origin are always allowed; default: any)", _GW),
    Option("rate_messages", "CHINWAG_RATE_MESSAGES", "sends per second per user, shared by every gateway "
           "(0: unlimited)", _GW, float),
    Option("rate_burst", "CHINWAG_RATE_BURST", "sends a user may make at once before the rate applies", _GW, int),
    Option("rate_requests", "CHINWAG_RATE_REQUESTS", "requests other than sends (history, who, group ops, "
           "uploads...) per second per user, shared by every gateway; ping is free (0: unlimited)", _GW, float),
    Option("rate_request_burst", "CHINWAG_RATE_REQUEST_BURST", "such requests a user may make at once before "
           "the rate applies", _GW, int),
    Option("rate_abuse_limit", "CHINWAG_RATE_ABUSE_LIMIT", "rate_limited answers in a row before the socket is "
           "closed with 4029", _GW, int),
    Option("login_failures", "CHINWAG_LOGIN_FAILURES", "password checks per account and kind of caller (stranger, "
           "session token, last IP) in one lockout window", _GW,
           int),
    Option("lockout_seconds", "CHINWAG_LOCKOUT_SECONDS", "how long those failures count, and the lock lasts", _GW,
           int),
    Option("login_token_days", "CHINWAG_LOGIN_TOKEN_DAYS", "how long a session token still proves its owner at "
           "login (the owner's own guess budget, docs/security.md)", _GW, float),
    Option("ip_connections", "CHINWAG_IP_CONNECTIONS", "connection attempts per second from one IP address "
           "(IPv6: /64), shared by every gateway, bursts of 5x that (0: unlimited); over it: HTTP 429", _GW, float),
    Option("ip_logins", "CHINWAG_IP_LOGINS", "login attempts per second from one IP address (IPv6: /64), shared "
           "by every gateway, bursts of 5x that (0: unlimited); over it: rate_limited", _GW, float),
    Option("trusted_proxies", "CHINWAG_TRUSTED_PROXIES", "comma-separated IP addresses or networks (CIDR) of "
           "load balancers whose X-Forwarded-For names the client, for the per-IP limits and the lockout; '*': "
           "any peer, for the last hop only (default: none, the TCP peer is the client)", _GW, _networks),
    Option("max_connections", "CHINWAG_MAX_CONNECTIONS", "open WebSocket connections per gateway; more are "
           "refused with HTTP 503", _GW, int),
    Option("ping_interval", "CHINWAG_PING_INTERVAL", "seconds between keepalive pings", _GW, float),
    Option("redis_ping_interval", "CHINWAG_REDIS_PING_INTERVAL", "seconds the pub/sub connection to Redis may be "
           "silent before it is PINGed; a PING unanswered this long makes /readyz 503", _GW, float),
    Option("redis_ping_timeout", "CHINWAG_REDIS_PING_TIMEOUT", "seconds a PING to Redis may go unanswered before "
           "the pub/sub connection is dropped and made again", _GW, float),
    Option("durability", "CHINWAG_DURABILITY", "when a send is acked: 'memory' once Redis (the slot's master) "
           "stored it; 'replica' only once a replica has it too (WAIT 1 after each send script; else the client "
           "gets unavailable and retries with its ref). 'replica' needs a Redis Cluster, or a Redis with a "
           "connected replica", _GW, _durability),
    Option("group_cursor_interval", "CHINWAG_GROUP_CURSOR_INTERVAL", "seconds between saves of the group "
           "positions that advanced (where a login without resume picks each group up)", _GW, float),
    Option("online_page", "CHINWAG_ONLINE_PAGE", "most names in welcome.online and in one answer to who "
           "(clients page through the rest)", _GW, _positive),
    Option("presence_batch", "CHINWAG_PRESENCE_BATCH", "seconds of presence changes coalesced into one "
           "presence_batch frame, for clients that log in with presence \"batched\"", _GW, float),
    Option("presence_batch_writes", "CHINWAG_PRESENCE_BATCH_WRITES", "most presence_batch frames written per "
           "second: with more \"batched\" sockets than this times the batch window, the window stretches to "
           "keep presence within that budget during login storms (0: never stretch)", _GW, float),
    Option("argon2_time_cost", "CHINWAG_ARGON2_TIME_COST", "argon2id iterations", _GW, int),
    Option("argon2_memory_kib", "CHINWAG_ARGON2_MEMORY_KIB", "argon2id memory in KiB", _GW, int),
    Option("argon2_parallelism", "CHINWAG_ARGON2_PARALLELISM", "argon2id lanes", _GW, int),
    Option("shutdown_timeout", "CHINWAG_SHUTDOWN_TIMEOUT", "seconds to drain on SIGTERM", _ALL, float),
    Option("blob_dir", "CHINWAG_BLOB_DIR", "directory of uploaded files, shared by every gateway of a cluster "
           "(default: blobs in --data-dir)", _GW,
           role_help={_G: "directory of uploaded files, shared by every gateway of a cluster "
                          "(default: ~/.local/share/chinwag/blobs)"}),
    Option("max_file_bytes", "CHINWAG_MAX_FILE_BYTES", "largest file a user can upload", _GW, int),
    Option("user_quota_bytes", "CHINWAG_USER_QUOTA_BYTES", "bytes of files each user can store", _GW, int),
    Option("log_level", "CHINWAG_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR", _ALL_M),
    Option("log_json", "CHINWAG_LOG_JSON", "log one JSON object per line", _ALL_M, _bool),
)


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 9000
    redis_url: str | None = None
    http_port: int | None = None
    node_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    data_dir: str = str(Path.home() / ".local" / "share" / "chinwag")
    lease_ttl: float = 10.0
    reap_interval: float = 1.0
    max_frame_bytes: int = 64 * 1024
    max_body_chars: int = 8000
    stream_maxlen: int = 10_000
    login_timeout: float = 10.0
    max_write_buffer: int = 4 * 1024 * 1024
    login_write_buffer: int = 64 * 1024
    control_frames: float = 10.0
    compression: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    allowed_origins: str | None = None
    max_connections: int = 10_000
    ip_connections: float = 20.0
    ip_logins: float = 10.0
    trusted_proxies: str = ""  # gateway/client_ip.py; "" trusts no peer's X-Forwarded-For
    rate_messages: float = 20.0
    rate_burst: int = 40
    rate_requests: float = 10.0
    rate_request_burst: int = 50
    rate_abuse_limit: int = 200
    login_failures: int = 5
    lockout_seconds: int = 300
    login_token_days: float = 30.0
    ping_interval: float = 20.0
    redis_ping_interval: float = 1.0
    redis_ping_timeout: float = 3.0
    durability: str = "memory"  # or "replica": gateway/pipeline.py (WAIT), docs/cluster.md
    group_cursor_interval: float = 2.0
    presence_batch: float = 0.25
    presence_batch_writes: float = 2_500.0
    online_page: int = 1000
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19_456
    argon2_parallelism: int = 1
    shutdown_timeout: float = 10.0
    blob_dir: str | None = None  # None: <data_dir>/blobs
    max_file_bytes: int = 25 * 1024 * 1024
    user_quota_bytes: int = 500 * 1024 * 1024
    log_level: str = "INFO"
    log_json: bool = False

    def http_port_for(self, role: str) -> int:
        """The HTTP port in effect: explicit, or derived from the role's default (0 = off)."""
        if self.http_port is not None:
            return self.http_port
        return 9190 if role == "presence" else self.port + 100

    @property
    def blob_path(self) -> str:
        """Where uploaded files live: ``blob_dir``, else ``blobs`` under the data directory."""
        return self.blob_dir or str(Path(self.data_dir) / "blobs")

    @property
    def hard_frame_bytes(self) -> int:
        """Frames past this are not read at all: the socket closes with 1009."""
        return max(1024 * 1024, 4 * self.max_frame_bytes)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @classmethod
    def from_args(
        cls,
        role: str,
        argv: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        prog: str | None = None,
        description: str | None = None,
    ) -> Settings:
        """Parse flags for one program (gateway, presence or server) over env and defaults."""
        env = os.environ if env is None else env
        parser = build_parser(role, prog, description)
        ns = parser.parse_args(argv)
        values: dict[str, Any] = {}
        for opt in OPTIONS:
            if role not in opt.roles:
                continue
            flag_value = getattr(ns, opt.name)
            if flag_value is not None:
                values[opt.name] = flag_value
            elif env.get(opt.env) not in (None, ""):
                try:
                    values[opt.name] = opt.parse(env[opt.env])
                except ValueError as exc:
                    parser.error(f"{opt.env}: {exc}")
        if "redis_url" not in values and env.get("CHINWAG_REDIS_URL"):
            values["redis_url"] = env["CHINWAG_REDIS_URL"]
        if problem := _redis_url_problem(role, values.get("redis_url")):
            parser.error(problem)
        return cls(**values)


def _redis_url_problem(role: str, url: str | None) -> str | None:
    """A malformed cluster URL, found at start so a typo never waits for the first command.

    Only for the programs that take a cluster (gateway, presence).
    ``chinwag-server`` refuses any cluster URL itself (chinwag/server.py); the
    check is not here because chinwag-admin builds "server" Settings from an
    environment whose REDIS_URL it then ignores.
    """
    if role == "server" or not url or not is_cluster_url(url):
        return None
    try:
        parse_cluster_url(url)
    except ValueError as exc:
        return f"--redis-url: {exc}"
    return None


def build_parser(role: str, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    defaults = {f.name: f.default for f in fields(Settings) if f.default is not MISSING}
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Every flag can also be set by the environment variable shown beside it.",
    )
    for opt in OPTIONS:
        if role not in opt.roles:
            continue
        flag = "--" + opt.name.replace("_", "-")
        default = defaults.get(opt.name)
        shown = "" if default in (None, "") or opt.name == "node_id" else f" (default: {default})"
        kwargs: dict[str, Any] = {"dest": opt.name, "default": None,
                                  "help": f"{opt.help_for(role)}{shown} [env: {opt.env}]"}
        if opt.parse is _bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = opt.parse
            kwargs["metavar"] = opt.name.split("_")[-1].upper()
        parser.add_argument(flag, **kwargs)
    return parser
