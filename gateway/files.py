"""File sharing on the gateway: chunked, resumable, hash-checked uploads into the blob store, and downloads.

Upload (docs/protocol.md, "Files"): ``upload`` declares a file and gets
``upload_ready`` with the upload id and the bytes already received; binary
chunks follow, each answered ``chunk_ack``; the last one is answered
``uploaded`` once the SHA-256 of everything received matches, or ``bad_hash``
(and the bytes are deleted).  Nothing about an upload lives in a gateway:

* its description (user, name, size, media type, hash) is a Redis hash with a
  one-day TTL, under an id derived from the user and the hash, so a client
  that reconnects, to this gateway or another, sends ``upload`` again and
  resumes;
* its bytes are a partial file in the shared blob store, and their length is
  the offset: what is on disk is the truth;
* the size limit is checked at ``upload``, before anything is stored, and so
  is the per-user quota: used bytes (each distinct file once) plus the sizes
  of the user's other uploads in progress (reserved at ``upload``) plus this
  one.  The charge itself is one Lua call just before the blob is committed.

Messages carry files as ``{"id","name","size","mime"}`` (:class:`FileRef`);
:meth:`FileService.check_ref` validates one against the store for the send
path.  Downloads are ``GET /files/<sha256>`` on the WebSocket port (so they go
through the same load balancer), authorised by the user's current session
token, with ``Range`` support so big files come in pieces.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import logging
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from common import keys
from common.config import Settings
from common.metrics import Counter, Metrics
from common.redis import REDIS_ERRORS
from presence.registry import token_hash
from protocol import frames as f
from protocol.errors import (
    BadHash,
    ChatError,
    InvalidFrame,
    InvalidUsername,
    NotFound,
    QuotaExceeded,
    TooLarge,
    Unavailable,
)
from protocol.files import (
    DEFAULT_CHUNK_BYTES,
    FileRef,
    check_file_ref,
    decode_chunk,
    human_size,
    is_sha256,
    upload_id,
)
from protocol.names import normalize_name

from .blobs import BlobStore, DirectoryBlobStore, sha256_file
from .session import Session

log = logging.getLogger("chinwag.files")

UPLOAD_TTL = 24 * 3600  # seconds an upload can sit idle before its state and bytes are dropped
SWEEP_EVERY = 3600.0  # seconds between sweeps of abandoned partial uploads
_encoder = msgspec.json.Encoder()

# Declare (or re-declare) an upload and reserve its size against the quota.
# KEYS: owned, used, reserved, upload ; ARGV: sha, size, quota, upload id, ttl, user key, name, mime, key prefix
# -> {1} | {0, used, reserved} over quota.  A file the user already owns costs nothing more.
# Reservations whose upload state expired are dropped on the way.
_START = keys.lua_functions(keys.upload) + """
local size = tonumber(ARGV[2])
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  local reserved = 0
  local r = redis.call('HGETALL', KEYS[3])
  for i = 1, #r, 2 do
    if r[i] ~= ARGV[4] then
      if redis.call('EXISTS', key_upload(ARGV[9], r[i])) == 1 then
        reserved = reserved + tonumber(r[i + 1])
      else
        redis.call('HDEL', KEYS[3], r[i])
      end
    end
  end
  if used + reserved + size > tonumber(ARGV[3]) then
    return {0, used, reserved}
  end
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[2])
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
redis.call('HSET', KEYS[4], 'user', ARGV[6], 'name', ARGV[7], 'size', ARGV[2], 'mime', ARGV[8], 'sha', ARGV[1])
redis.call('EXPIRE', KEYS[4], ARGV[5])
return {1}
"""

# Charge a verified file to its uploader, just before it is committed; ends the reservation.
# KEYS: owned, used, reserved ; ARGV: sha, size, quota, upload id -> 1 charged | 2 owned already | 0 over quota
_CHARGE = """
redis.call('HDEL', KEYS[3], ARGV[4])
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return 2
end
if tonumber(redis.call('GET', KEYS[2]) or '0') + tonumber(ARGV[2]) > tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('INCRBY', KEYS[2], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class UploadState:
    user: str  # name key of the uploader
    name: str
    size: int
    mime: str
    sha: str


class _ChunkError(Exception):
    """A chunk refused; ``offset`` (when known) is where the client should go on from."""

    def __init__(self, error: ChatError, offset: int | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.offset = offset


class FileService:
    """Uploads, downloads and file references for one gateway; all state is in Redis and the blob store."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis | RedisCluster,
        blobs: BlobStore | None = None,
        *,
        metrics: Metrics | None = None,
        errors: Counter | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        self.redis = redis
        self.blobs: BlobStore = blobs if blobs is not None else DirectoryBlobStore(settings.blob_path)
        self.max_file_bytes = settings.max_file_bytes
        self.quota = settings.user_quota_bytes
        self.chunk_bytes = chunk_bytes
        self.errors = errors
        self._start = redis.register_script(_START)
        self._charge = redis.register_script(_CHARGE)
        self._last_sweep = 0.0
        self._sweeping: asyncio.Task[Any] | None = None
        m = metrics or Metrics()
        self.m_bytes = m.counter("chinwag_upload_bytes_total", "Bytes of upload chunks written to the blob store")
        self.m_files = m.counter("chinwag_files_stored_total", "Uploads finished, by result", ("result",))
        self.m_downloads = m.counter("chinwag_downloads_total", "File downloads, by HTTP status", ("status",))

    # -- upload -------------------------------------------------------------

    async def start_upload(self, session: Session, frame: f.Upload) -> bytes:
        """Answer an ``upload``: ``upload_ready`` (where to go on from) or ``uploaded`` (already stored)."""
        if frame.size > self.max_file_bytes:
            raise TooLarge(f"{frame.name[:60]!r} is {_bytes(frame.size)}; files can be at most "
                           f"{_bytes(self.max_file_bytes)}")
        sha, size, mime = frame.sha256, frame.size, frame.mime.lower()
        uid = upload_id(session.key, sha)
        self._maybe_sweep()
        stored = await asyncio.to_thread(self.blobs.size, sha)
        if stored is not None:  # content-addressed: the bytes are here, nothing to send
            if stored != size:
                raise InvalidFrame(f"a file with that SHA-256 is {stored} bytes, not {size}")
            await self._charge_or_refuse(session.key, uid, sha, size)
            await asyncio.to_thread(self.blobs.delete_partial, uid)
            await self.redis.delete(keys.upload(uid))
            await self._describe(sha, frame.name, mime, size)
            self.m_files.inc("deduplicated")
            ref = FileRef(id=sha, name=frame.name, size=size, mime=mime)
            return f.encode(f.Uploaded(upload=uid, file=ref, ref=frame.ref))
        result = await self._start(
            keys=[keys.files_owned(session.key), keys.files_used(session.key), keys.files_reserved(session.key),
                  keys.upload(uid)],
            args=[sha, size, self.quota, uid, UPLOAD_TTL, session.key, frame.name, mime, keys.PREFIX],
        )
        if int(result[0]) == 0:
            used, reserved = int(result[1]), int(result[2])
            raise QuotaExceeded(self._quota_message(size, used + reserved))
        state = UploadState(session.key, frame.name, size, mime, sha)
        received = await asyncio.to_thread(self.blobs.partial_size, uid)
        if received > size:  # left by an upload declared differently: start over
            await asyncio.to_thread(self.blobs.delete_partial, uid)
            received = 0
        if received == size:  # everything is here (an empty file, or the last ack was lost)
            ref = await self._finish(uid, state)
            return f.encode(f.Uploaded(upload=uid, file=ref, ref=frame.ref))
        log.info("upload %s by %s: %r, %d bytes, resuming at %d", uid, session.name, frame.name, size, received)
        return f.encode(f.UploadReady(upload=uid, offset=received, chunk=self.chunk_bytes, ref=frame.ref))

    async def on_chunk(self, session: Session, data: bytes) -> bytes:
        """Answer one binary upload chunk.  Never raises for a bad chunk: the reply is an ``error`` frame."""
        uid: str | None = None
        try:
            try:
                uid, offset, payload = decode_chunk(data)
            except InvalidFrame as exc:
                raise _ChunkError(exc) from None
            return await self._chunk(session, uid, offset, payload)
        except _ChunkError as exc:
            return self._error(exc.error, uid, exc.offset)
        except ChatError as exc:
            return self._error(exc, uid)
        except REDIS_ERRORS as exc:
            log.warning("upload chunk failed: %s", type(exc).__name__, exc_info=not isinstance(exc, RedisError))
            return self._error(Unavailable(), uid)

    async def _chunk(self, session: Session, uid: str, offset: int, payload: memoryview) -> bytes:
        state = await self._state(uid)
        if state is None or state.user != session.key:
            raise NotFound("no upload with that id (finished, expired or never started): send 'upload' again")
        received = await asyncio.to_thread(self.blobs.partial_size, uid)
        if offset != received:
            raise _ChunkError(InvalidFrame(f"chunk at offset {offset}, but the server has {received} bytes"),
                              received)
        if not 0 < len(payload) <= self.chunk_bytes:
            raise _ChunkError(InvalidFrame(f"a chunk holds 1 to {self.chunk_bytes} bytes"), received)
        if offset + len(payload) > state.size:
            raise _ChunkError(InvalidFrame(f"chunk runs past the declared size of {state.size} bytes"), received)
        received = await asyncio.to_thread(self.blobs.write_partial, uid, offset, payload)
        self.m_bytes.inc(amount=len(payload))
        if received < state.size:
            return f.encode(f.ChunkAck(upload=uid, offset=received))
        ref = await self._finish(uid, state)
        return f.encode(f.Uploaded(upload=uid, file=ref))

    async def _finish(self, uid: str, state: UploadState) -> FileRef:
        """Every byte is in: check the hash, charge the quota, commit; or delete everything and refuse."""
        path = self.blobs.partial_path(uid)
        if state.size == 0:
            await asyncio.to_thread(self.blobs.write_partial, uid, 0, b"")
        digest = await asyncio.to_thread(sha256_file, path)
        if digest != state.sha:
            await self._abandon(uid, state)
            self.m_files.inc("bad_hash")
            raise BadHash(f"the {state.size} bytes received hash to {digest[:12]}…, not {state.sha[:12]}…; "
                          "nothing was stored: upload the file again")
        charged = await self._charge_or_refuse(state.user, uid, state.sha, state.size, abandon=state)
        try:
            await asyncio.to_thread(self.blobs.commit, state.sha, path)
        except Exception:
            if charged:
                await self._refund(state.user, state.sha, state.size)
            raise
        await self._describe(state.sha, state.name, state.mime, state.size)
        await self.redis.delete(keys.upload(uid))
        self.m_files.inc("stored")
        log.info("stored %s (%r, %d bytes) from upload %s", state.sha, state.name, state.size, uid)
        return FileRef(id=state.sha, name=state.name, size=state.size, mime=state.mime)

    async def _charge_or_refuse(
        self, user: str, uid: str, sha: str, size: int, abandon: UploadState | None = None
    ) -> bool:
        """Charge ``size`` to ``user`` (once per file); True if newly charged.  QuotaExceeded if it does not fit."""
        result = int(await self._charge(
            keys=[keys.files_owned(user), keys.files_used(user), keys.files_reserved(user)],
            args=[sha, size, self.quota, uid],
        ))
        if result == 0:
            if abandon is not None:
                await self._abandon(uid, abandon)
            used = int(await self.redis.get(keys.files_used(user)) or 0)
            self.m_files.inc("quota_exceeded")
            raise QuotaExceeded(self._quota_message(size, used))
        return result == 1

    async def _refund(self, user: str, sha: str, size: int) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.files_owned(user), sha)
            pipe.decrby(keys.files_used(user), size)
            await pipe.execute()

    async def _abandon(self, uid: str, state: UploadState) -> None:
        """Drop an upload's bytes, state and reservation: nothing of it stays stored."""
        await asyncio.to_thread(self.blobs.delete_partial, uid)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.upload(uid))
            pipe.hdel(keys.files_reserved(state.user), uid)
            await pipe.execute()

    async def _describe(self, sha: str, name: str, mime: str, size: int) -> None:
        """Remember how the first uploader named the file (download headers); later uploads keep it."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hsetnx(keys.file_meta(sha), "name", name)
            pipe.hsetnx(keys.file_meta(sha), "mime", mime)
            pipe.hsetnx(keys.file_meta(sha), "size", size)
            await pipe.execute()

    async def _state(self, uid: str) -> UploadState | None:
        raw: dict[Any, Any] = await self.redis.hgetall(keys.upload(uid))
        if not raw:
            return None
        return UploadState(
            raw[b"user"].decode(), raw[b"name"].decode(), int(raw[b"size"]), raw[b"mime"].decode(),
            raw[b"sha"].decode(),
        )

    def _quota_message(self, size: int, used: int) -> str:
        left = max(0, self.quota - used)
        return (f"this file needs {human_size(size)} but only {human_size(left)} of your "
                f"{human_size(self.quota)} file quota is left")

    def _error(self, exc: ChatError, uid: str | None, offset: int | None = None) -> bytes:
        if self.errors is not None:
            self.errors.inc(exc.code.value)
        return f.encode(f.Error(code=exc.code.value, message=exc.message, upload=uid, offset=offset))

    def _maybe_sweep(self) -> None:
        """Now and then, delete partial uploads nobody touched for a day (their Redis state has expired)."""
        now = time.monotonic()
        if now - self._last_sweep < SWEEP_EVERY or (self._sweeping is not None and not self._sweeping.done()):
            return
        self._last_sweep = now
        self._sweeping = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        try:
            removed = await asyncio.to_thread(self.blobs.sweep_partials, UPLOAD_TTL + 3600)
        except OSError as exc:
            log.warning("could not sweep abandoned uploads: %s", exc)
            return
        if removed:
            log.info("deleted %d abandoned partial uploads", removed)

    # -- messages -------------------------------------------------------------

    async def check_ref(self, ref: FileRef) -> bytes:
        """Validate a ``send``'s ``file`` against the store; the canonical JSON object for the message frame.

        Raises InvalidFrame (bad id, name, media type or size) or NotFound (no
        such file stored).  Any logged-in user holding a file's id may send it
        on: the id is the capability, as it is for downloads.
        """
        check_file_ref(ref)
        stored = await asyncio.to_thread(self.blobs.size, ref.id)
        if stored is None:
            raise NotFound(f"no file with id {ref.id[:12]}… is stored: upload it first")
        if stored != ref.size:
            raise InvalidFrame(f"file {ref.id[:12]}… is {stored} bytes, not {ref.size}")
        return _encoder.encode(FileRef(id=ref.id, name=ref.name, size=ref.size, mime=ref.mime.lower()))

    # -- download -------------------------------------------------------------

    async def http_download(self, request: Request) -> Response | None:
        """``GET /files/<sha256>``: the file, or a part of it with ``Range``; None for other paths."""
        path, _, query = request.path.partition("?")
        if not path.startswith("/files/"):
            return None
        response = await self._download(path.removeprefix("/files/"), query, request.headers)
        self.m_downloads.inc(str(response.status_code))
        return response

    async def _download(self, sha: str, query: str, headers: Headers) -> Response:
        params = urllib.parse.parse_qs(query)
        user = (params.get("user") or [""])[0]
        token = (params.get("token") or [""])[0]
        auth = headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
        try:
            if not await self._authorised(user, token):
                return _plain(http.HTTPStatus.UNAUTHORIZED, "log in first: ?user=NAME and the session token of "
                              "your connection (Authorization: Bearer TOKEN, or ?token=TOKEN)\n",
                              [("WWW-Authenticate", 'Bearer realm="chinwag"')])
            if not is_sha256(sha):
                return _plain(http.HTTPStatus.NOT_FOUND, "no such file\n")
            size = await asyncio.to_thread(self.blobs.size, sha)
            if size is None:
                return _plain(http.HTTPStatus.NOT_FOUND, "no such file\n")
            meta: dict[Any, Any] = await self.redis.hgetall(keys.file_meta(sha))
        except REDIS_ERRORS as exc:
            log.warning("download of %s failed: %s", sha[:12], type(exc).__name__)
            return _plain(http.HTTPStatus.SERVICE_UNAVAILABLE, "service temporarily unavailable; retry shortly\n")
        wanted = _parse_range(headers.get("Range"), size)
        if wanted is None:
            return _plain(http.HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, "range not satisfiable\n",
                          [("Content-Range", f"bytes */{size}")])
        start, end, partial = wanted
        try:
            body = await asyncio.to_thread(self._read, sha, start, end - start)
        except FileNotFoundError:
            return _plain(http.HTTPStatus.NOT_FOUND, "no such file\n")
        name = meta.get(b"name", sha.encode()).decode()
        out = Headers([
            ("Content-Type", meta.get(b"mime", b"application/octet-stream").decode()),
            ("Content-Length", str(len(body))),
            ("Content-Disposition", _disposition(name)),
            ("Accept-Ranges", "bytes"),
            ("ETag", f'"{sha}"'),
            ("Cache-Control", "private, max-age=31536000, immutable"),
            ("X-Content-Type-Options", "nosniff"),
        ])
        if partial:
            out["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            return Response(206, "Partial Content", out, body)
        return Response(200, "OK", out, body)

    async def _authorised(self, user: str, token: str) -> bool:
        """``token`` is the session token of ``user``'s live connection (Redis keeps its SHA-256)."""
        if not user or not token or len(token) > 128:
            return False
        try:
            _, key = normalize_name(user)
        except InvalidUsername:
            return False
        held: Any = await self.redis.hget(keys.session(key), "token")
        return held is not None and hmac.compare_digest(held.decode(), token_hash(token))

    def _read(self, sha: str, start: int, length: int) -> bytes:
        with self.blobs.open_read(sha) as fh:
            fh.seek(start)
            return fh.read(length)


def _bytes(n: int) -> str:
    """``"26,214,400 bytes (25.0 MiB)"``: exact, and readable."""
    return f"{n:,} bytes" if n < 1024 else f"{n:,} bytes ({human_size(n)})"


def _parse_range(header: str | None, size: int) -> tuple[int, int, bool] | None:
    """``(start, end exclusive, partial?)`` for a ``Range`` header; None if unsatisfiable.

    One ``bytes=`` range is honoured (``a-b``, ``a-``, ``-n``); anything else
    (several ranges, other units, garbage) gets the whole file, as RFC 9110 allows.
    """
    if not header or size == 0:  # an empty file has no satisfiable range: send it whole
        return 0, size, False
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return 0, size, False
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or first == "") or not (last.isdigit() or last == "") or first == last == "":
        return 0, size, False
    if first == "":  # the last n bytes
        n = int(last)
        if n == 0:
            return None
        return max(0, size - n), size, True
    start = int(first)
    end = size if last == "" else min(size, int(last) + 1)
    if start >= size or end <= start:
        return None
    return start, end, True


def _disposition(name: str) -> str:
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"


def _plain(status: http.HTTPStatus, body: str, extra: list[tuple[str, str]] | None = None) -> Response:
    data = body.encode()
    headers = Headers([("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data))),
                       *(extra or [])])
    return Response(status.value, status.phrase, headers, data)
