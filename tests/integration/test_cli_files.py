"""``/send`` and ``/get`` in the ``chinwag`` CLI, as real processes against two real gateways."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from protocol import frames as f
from tests.helpers import Processes, RedisServer
from tests.integration.test_cli import TIME, Cli


@pytest.fixture
def two_gateways(redis_server: RedisServer, processes: Processes, tmp_path: Path) -> tuple[str, str]:
    args = ["--blob-dir", str(tmp_path / "blobs")]
    return (processes.gateway(redis_server.url, args=args).url,
            processes.gateway(redis_server.url, args=args).url)


@pytest.fixture
def cli() -> Iterator[Callable[..., Cli]]:
    started: list[Cli] = []

    def start(server: str, user: str) -> Cli:
        proc = Cli(server, user)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.mark.skipif("file" not in f.Send.__struct_fields__, reason="send/message frames have no 'file' yet")
def test_send_a_file_and_get_it_on_another_gateway(
    two_gateways: tuple[str, str], cli: Callable[..., Cli], tmp_path: Path
) -> None:
    url1, url2 = two_gateways
    bob = cli(url2, "bob").logged_in()
    alice = cli(url1, "alice").logged_in()
    bob.wait_for(r"^\* alice is online$")
    source = tmp_path / "out" / "cat picture.png"
    source.parent.mkdir()
    source.write_bytes(os.urandom(700_000))

    alice.send(f"/send bob {source}")
    alice.wait_for(r"^\* uploading cat picture\.png \(683\.6 KiB\)…$")
    mine = alice.wait_for(rf"^{TIME} <alice→bob> \[file cat picture\.png 683\.6 KiB image/png id=[0-9a-f]{{12}}…\]$")
    line = bob.wait_for(rf"^{TIME} <alice> \[file cat picture\.png 683\.6 KiB image/png id=[0-9a-f]{{12}}…\]$")
    match = re.search(r"id=([0-9a-f]{12})…", line)
    assert match and match.group(1) in mine

    target = tmp_path / "bob downloads"
    bob.send(f"/get {match.group(1)[:8]} '{target}'")
    saved = bob.wait_for(r"^\* saved cat picture\.png \(683\.6 KiB\) to ")
    assert saved.endswith(str(target / "cat picture.png"))
    assert (target / "cat picture.png").read_bytes() == source.read_bytes()
    bob.send(f"/get {match.group(1)} '{target}'")  # again: a new name, never over the first
    bob.wait_for(r"^\* saved cat picture \(1\)\.png ")

    alice.send("/send bob /no/such/file", "/get 0123456789ab")
    alice.wait_for(r"^! no_file: /no/such/file is not a file$")
    alice.wait_for(r"^! not_found: no file starting with 0123456789ab was shown here")
    assert alice.finish() == 4  # scripted mode: some commands failed
    assert bob.finish() == 0
