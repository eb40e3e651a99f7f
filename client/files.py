"""Sending and fetching files with a :class:`~client.chat.ChatClient` (CLI, Tk GUI, tests).

    ref = await upload(chat, "cat.png")                  # chunked, acked, resumed across reconnects
    ack, ref = await send_file(chat, "@bob", "cat.png")  # upload, then a message carrying it
    path = await download(chat, message.file, "~/Downloads")

:func:`upload` hashes the file, sends ``upload`` and streams binary chunks
(a few in flight), following the server's acks.  When the connection drops,
the chat client reconnects by itself; the upload then sends ``upload`` again
(to whichever gateway it reached) and goes on from the offset the server
reports, so nothing is sent twice.  :func:`download` fetches the file over
HTTP from the gateway the client is connected to, in ``Range`` pieces,
checks its SHA-256 and only then gives it its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mimetypes
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.backoff import Backoff
from protocol import frames as f
from protocol.errors import ChatError, NotFound, Unavailable
from protocol.files import DEFAULT_MIME, FileRef, check_mime, encode_chunk, is_sha256

from .chat import ChatClient
from .errors import Disconnected, FileTransferError, RequestTimeout

Progress = Callable[[int, int], None]  # (bytes done, total)
DOWNLOAD_PART_BYTES = 4 * 1024 * 1024


def guess_mime(name: str) -> str:
    """The media type for a file name (``image/png``), or ``application/octet-stream``."""
    mime = (mimetypes.guess_type(name, strict=False)[0] or DEFAULT_MIME).lower()
    try:
        check_mime(mime)
    except ChatError:
        return DEFAULT_MIME
    return mime


def hash_file(path: Path) -> tuple[int, str]:
    """``(size, sha256 hex)`` of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(1024 * 1024):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


async def upload(
    chat: ChatClient,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    mime: str | None = None,
    chunk_timeout: float = 30.0,
    resume_timeout: float = 60.0,
    window: int = 4,
    progress: Progress | None = None,
) -> FileRef:
    """Upload a file; returns its reference for :func:`send_file` (or ``send`` with ``file``).

    Raises the server's ChatError when it refuses (``too_large``,
    ``quota_exceeded``, ``bad_hash``, ...), RequestTimeout if no byte got
    through for ``resume_timeout`` seconds (reconnects included), and
    Disconnected if the chat client closed for good.
    """
    source = await asyncio.to_thread(lambda: Path(path).expanduser())
    size, sha = await asyncio.to_thread(hash_file, source)
    name = name or source.name
    mime = mime or guess_mime(name)
    loop = asyncio.get_running_loop()
    last_progress = loop.time()
    backoff = Backoff(base=0.1, cap=2.0)
    replies: asyncio.Queue[Any] = asyncio.Queue()
    unhook: Callable[[], None] | None = None
    fh = await asyncio.to_thread(open, source, "rb")
    try:
        with fh:
            while True:
                try:
                    ready = await chat.request(f.Upload(name=name, size=size, sha256=sha, mime=mime),
                                               timeout=chunk_timeout)
                except (TimeoutError, Disconnected, Unavailable):
                    if chat.state == "closed" or loop.time() - last_progress > resume_timeout:
                        raise
                    if chat.connected:  # answered "unavailable", or no answer on a live socket: wait a bit
                        await asyncio.sleep(backoff.next_delay())
                    continue  # otherwise the request waits for the reconnect by itself
                if isinstance(ready, f.Uploaded):
                    if progress is not None:
                        progress(size, size)
                    return ready.file
                assert isinstance(ready, f.UploadReady)
                if unhook is None:
                    unhook = chat.watch_upload(ready.upload, replies.put_nowait)
                # Replies to chunks sent before this `upload` came before its answer: stale now.
                while not replies.empty():
                    replies.get_nowait()
                before = ready.offset
                done = await _send_chunks(chat, fh, ready, size, replies, chunk_timeout, window, progress)
                if isinstance(done, FileRef):
                    return done
                if done > before:
                    last_progress = loop.time()
                    backoff.reset()
                elif loop.time() - last_progress > resume_timeout:
                    raise RequestTimeout(f"upload of {name} made no progress for {resume_timeout:g}s")
    finally:
        if unhook is not None:
            unhook()


async def _send_chunks(
    chat: ChatClient,
    fh: Any,
    ready: f.UploadReady,
    size: int,
    replies: asyncio.Queue[Any],
    chunk_timeout: float,
    window: int,
    progress: Progress | None,
) -> FileRef | int:
    """Stream chunks from ``ready.offset``; the file ref when stored, else the server's offset to resume from.

    Each chunk gets exactly one reply, in order.  A refused chunk that names an
    offset (the server has a different number of bytes) makes us wait for the
    replies still due and go on from there.
    """
    offset = server = ready.offset
    outstanding = 0
    resync = False
    while True:
        while not resync and outstanding < window and offset < size:
            data = await asyncio.to_thread(_read_at, fh, offset, min(ready.chunk, size - offset))
            if not data:
                raise FileTransferError("the file got shorter while it was being sent")
            try:
                await chat.send_binary(encode_chunk(ready.upload, offset, data))
            except Disconnected:
                return server
            offset += len(data)
            outstanding += 1
        if outstanding == 0:
            if not resync:  # every byte acked but no `uploaded`: ask again
                return server
            resync, offset = False, server
            continue
        try:
            reply = await asyncio.wait_for(replies.get(), chunk_timeout)
        except TimeoutError:
            return server
        if reply is None:  # the socket closed: the chat client reconnects, then we ask where we are
            return server
        outstanding -= 1
        if isinstance(reply, f.Uploaded):
            if progress is not None:
                progress(size, size)
            return reply.file
        if isinstance(reply, f.ChunkAck):
            server = max(server, reply.offset)
            if progress is not None:
                progress(server, size)
        elif isinstance(reply, f.Error):
            if reply.offset is not None:
                server, resync = reply.offset, True
            elif isinstance(reply.to_exception(), Unavailable | NotFound):
                return server  # ask again with `upload`: it re-creates an expired upload
            else:
                raise reply.to_exception()


async def send_file(
    chat: ChatClient,
    to: str,
    path: str | os.PathLike[str],
    body: str = "",
    *,
    progress: Progress | None = None,
    **upload_options: Any,
) -> tuple[f.Ack, FileRef]:
    """Upload a file, then send it to ``to`` (``"@user"``, ``"#group"`` or ``"*"``) with an optional text."""
    ref = await upload(chat, path, progress=progress, **upload_options)
    return await send_ref(chat, to, ref, body), ref


async def send_ref(chat: ChatClient, to: str, ref: FileRef, body: str = "") -> f.Ack:
    """Send a message carrying an already stored file (retried like any send)."""
    return await chat.send(to, body, file=ref)


def file_of(message: f.Message) -> FileRef | None:
    """The file a message carries, if any."""
    file = getattr(message, "file", None)
    return file if isinstance(file, FileRef) else None


# -- download -----------------------------------------------------------------


def http_base(ws_url: str) -> str:
    """``ws://h:9000/x`` -> ``http://h:9000`` (``wss`` -> ``https``): the gateway's own HTTP side."""
    parts = urllib.parse.urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme)
    return urllib.parse.urlunsplit((scheme, parts.netloc, "", "", ""))


def download_url(chat: ChatClient, sha256: str) -> str:
    """Where the connected gateway serves a file (authorise with the session token as a Bearer header)."""
    if chat.url is None or chat.user is None:
        raise Disconnected("not connected")
    return f"{http_base(chat.url)}/files/{sha256}?{urllib.parse.urlencode({'user': chat.user})}"


async def fetch(chat: ChatClient, file: FileRef | str, *, timeout: float = 30.0,
                part_bytes: int = DOWNLOAD_PART_BYTES, progress: Progress | None = None) -> bytes:
    """A file's bytes, in memory (checked against its id).  For images shown inline, say."""
    sha = file.id if isinstance(file, FileRef) else file
    chunks: list[bytes] = []

    def sink(data: bytes) -> None:
        chunks.append(data)

    await _fetch(chat, sha, sink, timeout, part_bytes, progress)
    data = b"".join(chunks)
    if hashlib.sha256(data).hexdigest() != sha:
        raise FileTransferError(f"the bytes received do not match the file's SHA-256 {sha[:12]}…")
    return data


async def download(
    chat: ChatClient,
    file: FileRef | str,
    dest_dir: str | os.PathLike[str] = ".",
    *,
    name: str | None = None,
    timeout: float = 30.0,
    part_bytes: int = DOWNLOAD_PART_BYTES,
    progress: Progress | None = None,
) -> Path:
    """Save a file (a FileRef, or just its id) into ``dest_dir``; returns the path written.

    The bytes go to a temporary file first and get their name only once their
    SHA-256 matches; an existing file is never overwritten (``cat (1).png``).
    """
    sha = file.id if isinstance(file, FileRef) else file
    if not is_sha256(sha):
        raise FileTransferError("a file id is 64 lowercase hex digits")
    folder, fd, temp = await asyncio.to_thread(_temp_in, dest_dir)
    digest = hashlib.sha256()
    served_name: list[str] = []
    try:
        with os.fdopen(fd, "wb") as out:
            def sink(data: bytes) -> None:
                out.write(data)
                digest.update(data)

            served_name.append(await _fetch(chat, sha, sink, timeout, part_bytes, progress))
        if digest.hexdigest() != sha:
            raise FileTransferError(f"the bytes received do not match the file's SHA-256 {sha[:12]}…")
        wanted = name or (file.name if isinstance(file, FileRef) else "") or served_name[0] or sha
        return await asyncio.to_thread(_claim_name, folder, _safe_name(wanted, sha), Path(temp))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


async def _fetch(chat: ChatClient, sha: str, sink: Callable[[bytes], None], timeout: float, part_bytes: int,
                 progress: Progress | None) -> str:
    """Feed the file to ``sink`` piece by piece; returns the name the server gave it."""
    offset, total, served = 0, None, ""
    while total is None or offset < total:
        token = chat.session
        if token is None:
            raise Disconnected("not logged in")
        url = download_url(chat, sha)
        last = offset + part_bytes - 1
        status, headers, data = await asyncio.to_thread(_get, url, token, f"bytes={offset}-{last}", timeout)
        if status == 404:
            raise FileTransferError(f"the server has no file {sha[:12]}…")
        if status == 401:
            raise FileTransferError("the server did not accept this connection's session for the download")
        if status not in (200, 206):
            raise FileTransferError(f"the server answered HTTP {status} to the download")
        if status == 200:  # the whole file at once
            if offset:
                raise FileTransferError("the server ignored the range of a resumed download")
            total = len(data)
        else:
            match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset or int(match.group(2)) != offset + len(data) - 1:
                raise FileTransferError("the server sent a part of the file that was not asked for")
            total = int(match.group(3))
        if not served:
            served = _disposition_name(headers.get("Content-Disposition", ""))
        sink(data)
        offset += len(data)
        if progress is not None:
            progress(offset, total)
        if not data and offset < total:
            raise FileTransferError("the download stopped short")
    return served


def _read_at(fh: Any, offset: int, length: int) -> bytes:
    fh.seek(offset)
    return bytes(fh.read(length))


def _temp_in(dest_dir: str | os.PathLike[str]) -> tuple[Path, int, str]:
    """The target folder (made if missing) and a new temporary file in it."""
    folder = Path(dest_dir).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".chinwag-", suffix=".part")
    os.chmod(temp, 0o644)  # a saved file, not a secret (mkstemp makes it 0600)
    return folder, fd, temp


def _get(url: str, token: str, byte_range: str, timeout: float) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}", "Range": byte_range})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return int(resp.status), dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return int(exc.code), dict(exc.headers.items()), b""
    except (urllib.error.URLError, OSError) as exc:
        raise FileTransferError(f"cannot reach {url.split('/files/')[0]}: {getattr(exc, 'reason', exc)}") from None


def _disposition_name(header: str) -> str:
    match = re.search(r"filename\*=UTF-8''([^;]+)", header, re.I)
    if match:
        return urllib.parse.unquote(match.group(1).strip())
    match = re.search(r'filename="([^"]*)"', header)
    return match.group(1) if match else ""


def _safe_name(name: str, sha: str) -> str:
    """A file name that stays inside the target folder."""
    name = name.replace("/", "_").replace("\\", "_").replace("\x00", "_").strip()
    if name in ("", ".", ".."):
        return sha
    return name


def _claim_name(folder: Path, name: str, temp: Path) -> Path:
    """Move ``temp`` to ``folder/name``, or ``name (1)``, ``name (2)``, ... : never over an existing file."""
    stem, dot, ext = name.rpartition(".")
    if not stem:  # no extension (or a dot file)
        stem, dot, ext = name, "", ""
    for n in range(1000):
        candidate = folder / (name if n == 0 else f"{stem} ({n}){dot}{ext}")
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        os.replace(temp, candidate)
        return candidate
    raise FileTransferError(f"too many files named like {name} in {folder}")
