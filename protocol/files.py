"""File sharing on the wire, sans-I/O: file references, upload ids, the binary chunk layout.

A file is named by the SHA-256 of its bytes (64 lowercase hex digits): that is
its id everywhere, in the blob store, in ``message.file`` and in the download
URL.  A client uploads it in chunks over the WebSocket:

* a text ``upload`` frame declares name, size, media type and SHA-256 and gets
  ``upload_ready`` (the upload id, how many bytes the server already has, and
  the largest chunk it takes), or ``uploaded`` at once if the file is stored;
* then binary frames, each :data:`CHUNK_MAGIC`, the 16 raw bytes of the upload
  id, the offset as an 8-byte big-endian unsigned integer, and the data; each is
  answered ``chunk_ack`` (the last one ``uploaded`` or ``bad_hash``).

The upload id is derived from the user and the file's hash
(:func:`upload_id`), so sending ``upload`` again after a reconnect, to any
gateway, finds the bytes already received and the client resumes there.
docs/protocol.md ("Files") is the reference.
"""

from __future__ import annotations

import hashlib
import re
import struct
import unicodedata
from typing import TypeGuard

import msgspec

from .errors import InvalidFrame

CHUNK_MAGIC = b"CWU1"
_HEADER = struct.Struct(">4s16sQ")
CHUNK_HEADER_BYTES = _HEADER.size  # 28
DEFAULT_CHUNK_BYTES = 256 * 1024
MAX_FILE_NAME_CHARS = 255
DEFAULT_MIME = "application/octet-stream"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_SHA256 = re.compile(r"[0-9a-f]{64}")
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
# RFC 6838 type "/" subtype, restricted-name characters; no parameters.
_MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")


class FileRef(msgspec.Struct, kw_only=True):
    """A stored file as messages carry it: ``{"id","name","size","mime"}``.

    ``id`` is the SHA-256 of the bytes (64 lowercase hex); ``name`` a bare file
    name (no directories); ``size`` in bytes; ``mime`` a media type such as
    ``image/png``.  Unknown fields are ignored (the server always re-encodes
    the four it knows).
    """

    id: str
    name: str
    size: int
    mime: str = DEFAULT_MIME


def is_sha256(value: str) -> bool:
    return _SHA256.fullmatch(value) is not None


def is_upload_id(value: str) -> bool:
    return _UPLOAD_ID.fullmatch(value) is not None


def upload_id(user_key: str, sha256: str) -> str:
    """The id of ``user_key``'s upload of the file ``sha256``: the same on every gateway, every time."""
    return hashlib.sha256(f"{user_key}:{sha256}".encode()).hexdigest()[:32]


def check_file_name(name: str) -> None:
    """A bare file name: 1-255 characters, no path separators, no control characters, not ``.``/``..``."""
    if not 1 <= len(name) <= MAX_FILE_NAME_CHARS:
        raise InvalidFrame(f"a file name is 1-{MAX_FILE_NAME_CHARS} characters")
    if name in (".", "..") or any(c in "/\\" or unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise InvalidFrame("a file name cannot contain '/', '\\' or control characters")


def check_mime(mime: str) -> None:
    if _MIME.fullmatch(mime) is None:
        raise InvalidFrame(f"{mime[:40]!r} is not a media type like 'image/png'")


def check_sha256(value: str) -> None:
    if not is_sha256(value):
        raise InvalidFrame("sha256 must be 64 lowercase hex digits")


def check_file_ref(ref: FileRef) -> None:
    """Syntax of a file reference in a ``send`` (the gateway then checks it against the store)."""
    if not is_sha256(ref.id):
        raise InvalidFrame("file id must be the file's SHA-256: 64 lowercase hex digits")
    check_file_name(ref.name)
    check_mime(ref.mime)
    if ref.size < 0:
        raise InvalidFrame("file size must be 0 or more")


def encode_chunk(upload: str, offset: int, data: bytes) -> bytes:
    """One binary upload frame: magic, upload id (16 raw bytes), offset (8 bytes, big-endian), data."""
    return _HEADER.pack(CHUNK_MAGIC, bytes.fromhex(upload), offset) + data


def is_chunk(frame: str | bytes) -> TypeGuard[bytes]:
    return isinstance(frame, bytes) and frame[:4] == CHUNK_MAGIC


def decode_chunk(frame: bytes) -> tuple[str, int, memoryview]:
    """``(upload id, offset, data)`` of a binary upload frame, or InvalidFrame."""
    if len(frame) < CHUNK_HEADER_BYTES or frame[:4] != CHUNK_MAGIC:
        raise InvalidFrame(f"an upload chunk starts with a {CHUNK_HEADER_BYTES}-byte header")
    _, raw_id, offset = _HEADER.unpack_from(frame)
    return raw_id.hex(), offset, memoryview(frame)[CHUNK_HEADER_BYTES:]


def human_size(size: int) -> str:
    """``512 B``, ``1.5 KiB``, ``5.0 MiB``, ``2.0 GiB``: for people, never parsed."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"
