"""The file-sharing wire format (protocol/files.py, the upload frames) and the gateway's pure helpers."""

from __future__ import annotations

import hashlib
import json

import pytest

from client.files import _claim_name, _disposition_name, _safe_name, guess_mime, http_base
from gateway.files import _disposition, _parse_range
from protocol import frames as f
from protocol.errors import ChatError, InvalidFrame
from protocol.files import (
    CHUNK_HEADER_BYTES,
    FileRef,
    check_file_ref,
    decode_chunk,
    encode_chunk,
    human_size,
    is_chunk,
    upload_id,
)

SHA = hashlib.sha256(b"x").hexdigest()
UID = "0123456789abcdef0123456789abcdef"


def test_chunk_layout() -> None:
    frame = encode_chunk(UID, 2**40 + 5, b"data")
    assert frame[:4] == b"CWU1" and frame[4:20] == bytes.fromhex(UID)
    assert frame[20:28] == (2**40 + 5).to_bytes(8, "big") and frame[28:] == b"data"
    assert CHUNK_HEADER_BYTES == 28
    uid, offset, data = decode_chunk(frame)
    assert (uid, offset, bytes(data)) == (UID, 2**40 + 5, b"data")
    assert is_chunk(frame) and not is_chunk(frame.decode("latin-1")) and not is_chunk(b'{"type":"ping"}')


@pytest.mark.parametrize("bad", [b"CWU1", b"CWU1" + b"\x00" * 23, b"XXXX" + b"\x00" * 30])
def test_short_or_foreign_chunks_are_invalid(bad: bytes) -> None:
    with pytest.raises(InvalidFrame):
        decode_chunk(bad)


def test_upload_ids_are_per_user_and_file_and_stable() -> None:
    assert upload_id("alice", SHA) == upload_id("alice", SHA)
    assert upload_id("alice", SHA) != upload_id("bob", SHA)
    assert len(upload_id("alice", SHA)) == 32


def _upload(**fields: object) -> str:
    return json.dumps({"type": "upload", "name": "a.png", "size": 3, "sha256": SHA, **fields})


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (_upload(name=""), "invalid_frame"),
        (_upload(name="../etc/passwd"), "invalid_frame"),
        (_upload(name="a\\b"), "invalid_frame"),
        (_upload(name="line\nbreak"), "invalid_frame"),
        (_upload(name=".."), "invalid_frame"),
        (_upload(name="x" * 256), "invalid_frame"),
        (_upload(size=-1), "invalid_frame"),
        (_upload(size="3"), "invalid_frame"),
        (_upload(sha256=SHA.upper()), "invalid_frame"),
        (_upload(sha256=SHA[:-1]), "invalid_frame"),
        (_upload(mime="image"), "invalid_frame"),
        (_upload(mime="text/plain; charset=utf-8"), "invalid_frame"),
        (_upload(extra=1), "invalid_frame"),
        (json.dumps({"type": "upload", "name": "a", "size": 1}), "invalid_frame"),
    ],
)
def test_bad_upload_frames(raw: str, code: str) -> None:
    with pytest.raises(ChatError) as exc:
        f.FrameParser().parse(raw)
    assert exc.value.code.value == code


def test_good_upload_frame_defaults() -> None:
    frame = f.FrameParser().parse(_upload(name="caf\u00e9 \U0001f431.png"))
    assert frame == f.Upload(name="caf\u00e9 \U0001f431.png", size=3, sha256=SHA, mime="application/octet-stream")


def test_server_file_frames_round_trip() -> None:
    ref = FileRef(id=SHA, name="a.png", size=3, mime="image/png")
    for frame in (f.UploadReady(upload=UID, offset=0, chunk=262144, ref="u1"), f.ChunkAck(upload=UID, offset=7),
                  f.Uploaded(upload=UID, file=ref), f.Error(code="bad_hash", message="m", upload=UID, offset=3)):
        assert f.parse_server_frame(f.encode(frame)) == frame
    assert f.encode(f.Error(code="x", message="y")) == b'{"type":"error","code":"x","message":"y"}'
    # Unknown fields inside a file reference are ignored (lenient out).
    raw = json.dumps({"type": "uploaded", "upload": UID, "file": {"id": SHA, "name": "a", "size": 1, "x": 2}})
    assert f.parse_server_frame(raw) == f.Uploaded(upload=UID, file=FileRef(id=SHA, name="a", size=1))


def test_check_file_ref() -> None:
    check_file_ref(FileRef(id=SHA, name="a.png", size=0, mime="image/png"))
    for bad in (FileRef(id="abc", name="a", size=1), FileRef(id=SHA, name="a/b", size=1),
                FileRef(id=SHA, name="a", size=-1), FileRef(id=SHA, name="a", size=1, mime="nope")):
        with pytest.raises(InvalidFrame):
            check_file_ref(bad)


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, (0, 100, False)),
        ("bytes=0-9", 100, (0, 10, True)),
        ("bytes=90-", 100, (90, 100, True)),
        ("bytes=90-1000", 100, (90, 100, True)),
        ("bytes=-10", 100, (90, 100, True)),
        ("bytes=-1000", 100, (0, 100, True)),
        ("bytes=100-", 100, None),
        ("bytes=5-4", 100, None),
        ("bytes=-0", 100, None),
        ("bytes=0-1,5-6", 100, (0, 100, False)),
        ("items=0-1", 100, (0, 100, False)),
        ("bytes=x-y", 100, (0, 100, False)),
        ("bytes=-", 100, (0, 100, False)),
        ("bytes=0-", 0, (0, 0, False)),
    ],
)
def test_range_header(header: str | None, size: int, expected: tuple[int, int, bool] | None) -> None:
    assert _parse_range(header, size) == expected


def test_content_disposition_round_trips_any_name() -> None:
    for name in ("cat.png", 'quote" back\\slash.txt', "\u00e9t\u00e9 \U0001f431.jpg", "100% ;done.pdf"):
        header = _disposition(name)
        assert header.startswith("attachment; filename=\"") and header.isascii()
        assert _disposition_name(header) == name


def test_client_helpers(tmp_path: object) -> None:
    assert http_base("ws://127.0.0.1:9000") == "http://127.0.0.1:9000"
    assert http_base("wss://chat.example.org/ws?x=1") == "https://chat.example.org"
    assert guess_mime("a.PNG") == "image/png" and guess_mime("noext") == "application/octet-stream"
    assert _safe_name("../../x", SHA) == ".._.._x" and _safe_name("..", SHA) == SHA
    assert human_size(5 * 1024 * 1024) == "5.0 MiB" and human_size(12) == "12 B"


def test_saving_never_overwrites(tmp_path: object) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    (folder / "cat.png").write_bytes(b"mine")
    for n in (1, 2):
        temp = folder / f"t{n}"
        temp.write_bytes(b"new")
        assert _claim_name(folder, "cat.png", temp) == folder / f"cat ({n}).png"
    temp = folder / "t3"
    temp.write_bytes(b"x")
    assert _claim_name(folder, ".bashrc", temp) == folder / ".bashrc"
    assert (folder / "cat.png").read_bytes() == b"mine"
