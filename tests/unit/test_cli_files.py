"""The CLI's file commands, parsed and formatted without any I/O."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from client.cli_commands import HELP, USAGE, CommandError, GetFile, SendFile, parse_line
from client.cli_format import format_file, format_message
from protocol import frames as f
from protocol.files import FileRef

SHA = "ab12cd34ef56" + "0" * 52


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/send bob cat.png", SendFile("@bob", "cat.png")),
        ("/send @Bob   my holiday.jpg", SendFile("@Bob", "my holiday.jpg")),
        ("/send bob 'a b.txt'", SendFile("@bob", "a b.txt")),
        ('/send bob "~/x y.pdf"', SendFile("@bob", "~/x y.pdf")),
        ("/send all notes.txt", SendFile("*", "notes.txt")),
        ("/send * notes.txt", SendFile("*", "notes.txt")),
        ("/send #devs build.log", SendFile("#devs", "build.log")),
        ("/SEND bob x", SendFile("@bob", "x")),
        ("/get ab12cd", GetFile("ab12cd")),
        ("/get AB12CD34 /tmp/downloads", GetFile("ab12cd34", "/tmp/downloads")),
        (f"/get {SHA} 'my files'", GetFile(SHA, "my files")),
    ],
)
def test_parse_file_commands(line: str, expected: object) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("/send", "usage"),
        ("/send bob", "usage"),
        ("/send bad!name x", "invalid_username"),
        ("/send #bad!group x", "usage"),
        ("/get", "usage"),
        ("/get xyz", "usage"),
        ("/get ab12", "usage"),  # too short to pick a file
        ("/get " + "a" * 65, "usage"),
    ],
)
def test_bad_file_commands(line: str, code: str) -> None:
    with pytest.raises(CommandError) as exc:
        parse_line(line)
    assert exc.value.code == code


@pytest.mark.skipif("file" not in f.Message.__struct_fields__, reason="message frames have no 'file' yet")
def test_file_messages_print_on_one_line() -> None:
    ref = FileRef(id=SHA, name="cat.png", size=5 * 1024 * 1024, mime="image/png")
    assert format_file(ref) == "[file cat.png 5.0 MiB image/png id=ab12cd34ef56…]"
    fields: dict[str, Any] = {"id": "1-0", "from_": "alice", "to": "@bob", "body": "", "ts": 0, "file": ref}
    msg = f.Message(**fields)
    assert format_message(msg, "bob", dt.UTC) == "[--:--:--] <alice> [file cat.png 5.0 MiB image/png id=ab12cd34ef56…]"
    fields["body"] = "look\nhere"
    line = format_message(f.Message(**fields), "bob", dt.UTC)
    assert line.endswith("id=ab12cd34ef56…] look\\nhere")
    evil = FileRef(id=SHA, name="x\u202e.png", size=1, mime="image/png")
    assert "\u202e" not in format_file(evil)


def test_help_and_usage_mention_the_file_commands() -> None:
    assert "send" in USAGE and "get" in USAGE
    assert any(line.strip().startswith("/send") for line in HELP)
    assert any(line.strip().startswith("/get") for line in HELP)
