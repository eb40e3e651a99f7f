"""The scripted example in docs/cli.md prints what the document says it prints.

The commands and the expected ``bob.log`` are read from the document itself
and run against a real ``chinwag-server`` (embedded Redis).  One change for a
bounded, sleep-free test: instead of ``--wait 10 < /dev/null`` and ``sleep 1``,
bob's stdin stays open until his log is complete and alice starts once he has
logged in -- what he prints is the same.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.helpers import ROOT, Processes
from tests.integration.test_cli import Cli, run_cli

DOC = ROOT / "docs" / "cli.md"


def documented_example() -> tuple[str, list[str]]:
    """alice's script (the printf) and the lines shown after ``cat bob.log``."""
    text = DOC.read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if "cat bob.log" in b)
    printf = re.search(r"printf '([^']*)' \| chinwag --user alice", block)
    assert printf, "the example's alice line changed: update this test"
    expected = [line[2:] for line in block.split("cat bob.log\n", 1)[1].splitlines() if line.startswith("# ")]
    return printf.group(1).replace("\\n", "\n"), expected


def normalized(lines: list[str], url: str) -> list[str]:
    return [re.sub(r"^\[\d\d:\d\d:\d\d\]", "[TIME]", line.replace(url, "URL")) for line in lines]


def test_the_scripted_example_in_the_cli_docs(tmp_path: Path, processes: Processes) -> None:
    script, expected = documented_example()
    assert expected and expected[0].startswith("* logged in as bob on ws://127.0.0.1:9000")
    server = processes.server(args=["--data-dir", str(tmp_path / "data")])
    bob = Cli(server.url, "bob")
    try:
        bob.logged_in()
        alice = run_cli(server.url, "alice", script)
        assert alice.returncode == 0, alice.stdout + alice.stderr
        bob.wait_for(r"^\* alice is offline$")
        assert bob.finish() == 0
    finally:
        bob.kill()
    # Batched presence: a slow alice also shows as online (the document says so); a quick one does not.
    got = [line for line in bob.out if line != "* alice is online"]
    assert normalized(got, server.url) == normalized(expected, "ws://127.0.0.1:9000"), bob.transcript()
