"""gateway.connection.text_frame: the bytes websockets itself would write for a server's text message."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from gateway.connection import text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65_535, 65_536, 70_000])
def test_a_text_frame_is_what_websockets_serialises(size: int) -> None:
    payload = b"x" * size
    expected = Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    assert text_frame(payload) == expected


def test_the_length_field_grows_at_126_and_65536_bytes() -> None:
    assert text_frame(b"hi") == b"\x81\x02hi"
    assert text_frame(b"a" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert text_frame(b"a" * 65_536)[:10] == b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"
