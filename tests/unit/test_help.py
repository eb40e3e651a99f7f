"""Every program's --help mentions only options that program has.

``chinwag-gateway --help`` once described a default "in the data directory",
an option only chinwag-server has.  Each program's real ``--help`` is read: a
``--flag`` it mentions must be one it defines, and so must the option behind a
phrase like "data directory".
"""

from __future__ import annotations

import importlib
import re

import pytest

PROGRAMS = {  # program: (module with main(argv), arguments before --help)
    "chinwag-gateway": ("gateway.server", []),
    "chinwag-presence": ("presence.service", []),
    "chinwag-server": ("chinwag.server", []),
    "chinwag-cluster": ("chinwag.cluster", []),
    "chinwag-cluster up": ("chinwag.cluster", ["up"]),
    "chinwag-admin": ("chinwag.admin", []),
    "chinwag-loadtest": ("chinwag.loadtest", []),
    "chinwag-migrate": ("chinwag.migrate", []),
    "chinwag": ("client.cli", []),
    "chinwag-tk": ("client.gui", []),
}
# Phrases that point at an option: the program must have it.
CONCEPTS = {r"data[ -]dir": "--data-dir", r"WebSocket port": "--port"}


def help_text(program: str, capsys: pytest.CaptureFixture[str]) -> str:
    module, before = PROGRAMS[program]
    if module == "client.gui":
        pytest.importorskip("tkinter")
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main([*before, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def defined_flags(text: str) -> set[str]:
    """The flags argparse lists as options: '  --port PORT', '  -u USER, --user USER', '  --x, --no-x'."""
    flags: set[str] = set()
    for line in text.splitlines():
        if re.match(r" {2,4}-", line):  # an option's own line; wrapped help text is indented further
            column = line.strip().split("  ")[0]  # the flags, before the help text
            flags.update(re.findall(r"(?<![\w-])--[a-z][\w-]*", column))
    return flags


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_help_mentions_only_options_the_program_has(program: str, capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(program, capsys)
    defined = defined_flags(text)
    assert "--help" in defined
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", text))
    assert mentioned <= defined, f"{program} --help mentions {sorted(mentioned - defined)}"
    for phrase, option in CONCEPTS.items():
        if re.search(phrase, text, re.IGNORECASE):
            assert option in defined, f"{program} --help speaks of {phrase!r} but has no {option}"


def test_the_gateway_says_where_its_files_go(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(help_text("chinwag-gateway", capsys).split())
    assert "(default: ~/.local/share/chinwag/blobs)" in text
