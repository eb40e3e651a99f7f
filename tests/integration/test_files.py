"""File sharing across real gateway processes sharing one Redis and one blob directory.

Uploads go over the WebSocket in binary chunks, downloads over HTTP from the
gateway the downloader is connected to.  Every wait has a deadline; nothing
sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from client import ChatClient
from client.chat import StateChanged
from client.files import download, fetch, file_of, http_base, send_file, send_ref, upload
from protocol import frames as f
from protocol.errors import BadHash, InvalidFrame, NotFound, QuotaExceeded, TooLarge
from protocol.files import FileRef, encode_chunk
from tests.backends import RedisBackend, redis_server_on_each_backend  # noqa: F401 (on every backend)
from tests.helpers import Clients, Proc, Processes, async_wait_until, wait_for_event

MIB = 1024 * 1024

# Messages carrying files need `file` on send/message frames and the gateway's send path calling
# FileService.check_ref: wired separately; these tests run as soon as the frames have the field.
needs_send_path = pytest.mark.skipif(
    "file" not in f.Send.__struct_fields__, reason="send/message frames have no 'file' yet (send path not wired)"
)


@pytest.fixture
def blob_dir(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


def gateway(processes: Processes, redis: RedisBackend, blob_dir: Path, *extra: str) -> Proc:
    return processes.gateway(redis.url, args=["--blob-dir", str(blob_dir), *extra])


@pytest.fixture
def two_gateways(redis_server: RedisBackend, processes: Processes, blob_dir: Path) -> tuple[Proc, Proc]:
    return gateway(processes, redis_server, blob_dir), gateway(processes, redis_server, blob_dir)


def random_file(folder: Path, name: str, size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(os.urandom(size))
    return path


def stored_files(blob_dir: Path) -> list[Path]:
    """Every regular file under the blob directory: blobs and partial uploads."""
    return sorted(p for p in blob_dir.rglob("*") if p.is_file()) if blob_dir.exists() else []


def with_file(ref: FileRef):
    return lambda e: isinstance(e, f.Message) and file_of(e) == ref


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Replies:
    """The replies to hand-sent chunks of one upload (routed by the client's upload hook)."""

    def __init__(self, chat: ChatClient, upload_id: str) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.unhook = chat.watch_upload(upload_id, self.queue.put_nowait)

    async def next(self, timeout: float = 10.0) -> Any:
        return await asyncio.wait_for(self.queue.get(), timeout)


async def send_chunks(chat: ChatClient, ready: f.UploadReady, data: bytes, start: int, end: int) -> Any:
    """Send data[start:end] in chunks, one at a time; the reply to the last."""
    replies = Replies(chat, ready.upload)
    reply: Any = None
    try:
        for offset in range(start, end, ready.chunk):
            await chat.send_binary(encode_chunk(ready.upload, offset, data[offset:min(end, offset + ready.chunk)]))
            reply = await replies.next()
            if not isinstance(reply, f.ChunkAck):
                return reply
    finally:
        replies.unhook()
    return reply


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers.items()), exc.read()


# -- acceptance ------------------------------------------------------------------


@needs_send_path
async def test_5mib_file_to_a_user_on_another_gateway_arrives_byte_identical(
    two_gateways: tuple[Proc, Proc], clients: Clients, tmp_path: Path, blob_dir: Path
) -> None:
    gw1, gw2 = two_gateways
    alice = await clients.login(gw1.url, "alice")
    bob = await clients.login(gw2.url, "bob")
    source = random_file(tmp_path / "src", "holiday.jpg", 5 * MIB)
    data = source.read_bytes()

    ack, ref = await send_file(alice, "@bob", source, "from the beach")
    assert ref == FileRef(id=sha(data), name="holiday.jpg", size=5 * MIB, mime="image/jpeg")
    got = await wait_for_event(bob, with_file(ref), timeout=10)
    assert isinstance(got, f.Message) and (got.id, got.from_, got.body) == (ack.id, "alice", "from the beach")

    saved = await download(bob, ref, tmp_path / "bob")  # from gateway 2, which never saw the upload
    assert saved == tmp_path / "bob" / "holiday.jpg"
    assert saved.read_bytes() == data
    # Content-addressed, and nothing else left behind (no partial upload).
    assert stored_files(blob_dir) == [blob_dir / ref.id[:2] / ref.id[2:4] / ref.id]
    # The message is in the conversation's history with its file.
    history = await bob.history("@alice")
    assert [file_of(m) for m in history] == [ref]


@needs_send_path
async def test_5mib_file_to_a_group_arrives_byte_identical(
    two_gateways: tuple[Proc, Proc], clients: Clients, tmp_path: Path
) -> None:
    gw1, gw2 = two_gateways
    alice = await clients.login(gw1.url, "alice")
    bob = await clients.login(gw2.url, "bob")
    carol = await clients.login(gw1.url, "carol")
    await alice.group("create", "#team")
    await bob.group("join", "#team")
    await carol.group("join", "#team")
    source = random_file(tmp_path / "src", "notes.pdf", 5 * MIB)

    _, ref = await send_file(alice, "#team", source)
    assert ref.mime == "application/pdf"
    for member, folder in ((bob, "bob"), (carol, "carol")):
        got = await wait_for_event(member, with_file(ref), timeout=10)
        assert isinstance(got, f.Message) and got.to == "#team" and got.from_ == "alice"
        saved = await download(member, ref, tmp_path / folder)
        assert saved.read_bytes() == source.read_bytes()


async def test_upload_cut_off_half_way_resumes_on_the_other_gateway(
    two_gateways: tuple[Proc, Proc], clients: Clients, tmp_path: Path, blob_dir: Path
) -> None:
    gw1, gw2 = two_gateways
    alice = await clients.login([gw1.url, gw2.url], "alice", reconnect=True)
    assert alice.url == gw1.url
    bob = await clients.login(gw2.url, "bob")
    source = random_file(tmp_path / "src", "video.mp4", 5 * MIB)
    data = source.read_bytes()

    ready = await alice.request(f.Upload(name="video.mp4", size=len(data), sha256=sha(data), mime="video/mp4"))
    assert isinstance(ready, f.UploadReady) and ready.offset == 0
    half = (len(data) // ready.chunk // 2) * ready.chunk
    ack = await send_chunks(alice, ready, data, 0, half)
    assert isinstance(ack, f.ChunkAck) and ack.offset == half

    gw1.kill()  # the gateway dies mid-upload; the client reconnects to gateway 2 by itself
    await wait_for_event(alice, lambda e: isinstance(e, StateChanged) and e.state == "connected", timeout=30)
    assert alice.url == gw2.url

    again = await alice.request(f.Upload(name="video.mp4", size=len(data), sha256=sha(data), mime="video/mp4"))
    assert isinstance(again, f.UploadReady)
    assert (again.upload, again.offset) == (ready.upload, half)  # resumed, not started over
    done = await send_chunks(alice, again, data, half, len(data))
    assert isinstance(done, f.Uploaded) and done.file.id == sha(data)

    assert await upload(alice, source) == done.file  # the same file again: stored already, no byte is sent
    saved = await download(bob, done.file, tmp_path / "bob")  # bob, on gateway 2 as well
    assert saved.read_bytes() == data
    assert stored_files(blob_dir) == [blob_dir / done.file.id[:2] / done.file.id[2:4] / done.file.id]


async def test_client_upload_survives_a_dropped_connection_and_resumes(
    two_gateways: tuple[Proc, Proc], clients: Clients, tmp_path: Path
) -> None:
    """client.files.upload itself: the socket is cut mid-way, it resumes from the server's offset."""
    gw1, gw2 = two_gateways
    alice = await clients.login([gw1.url, gw2.url], "alice", reconnect=True)
    source = random_file(tmp_path / "src", "big.bin", 5 * MIB)
    seen: list[int] = []
    cut_at: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append(done)
        if not cut_at and done >= total // 2:
            cut_at.append(done)
            gw1.kill()

    ref = await upload(alice, source, progress=progress, chunk_timeout=10, resume_timeout=60)
    assert cut_at, "the gateway was never cut off"
    after = seen[seen.index(cut_at[0]) + 1:]
    assert after and min(after) >= cut_at[0], f"the upload went back to the start: {seen}"
    assert alice.reconnects >= 1 and alice.url == gw2.url
    assert await fetch(alice, ref) == source.read_bytes()


# -- refusals leave nothing stored -------------------------------------------------


async def test_file_over_the_size_limit_is_refused_before_any_byte_is_stored(
    redis_server: RedisBackend, processes: Processes, clients: Clients, tmp_path: Path, blob_dir: Path
) -> None:
    gw = gateway(processes, redis_server, blob_dir, "--max-file-bytes", "100000")
    alice = await clients.login(gw.url, "alice")
    source = random_file(tmp_path / "src", "huge.iso", 100_001)
    with pytest.raises(TooLarge) as refused:
        await upload(alice, source)
    assert refused.value.message == ("'huge.iso' is 100,001 bytes (97.7 KiB); "
                                     "files can be at most 100,000 bytes (97.7 KiB)")
    # Chunks sent anyway (a client ignoring the refusal) have no upload to go to.
    data = source.read_bytes()
    replies = Replies(alice, "0" * 32)
    await alice.send_binary(encode_chunk("0" * 32, 0, data[:1000]))
    error = await replies.next()
    assert isinstance(error, f.Error) and error.code == "not_found"
    assert stored_files(blob_dir) == []
    await upload(alice, random_file(tmp_path / "src", "ok.bin", 100_000))  # at the limit is fine


async def test_wrong_hash_is_refused_and_nothing_is_stored(
    two_gateways: tuple[Proc, Proc], clients: Clients, blob_dir: Path
) -> None:
    alice = await clients.login(two_gateways[0].url, "alice")
    data = os.urandom(600_000)
    claimed = sha(b"something else entirely")
    ready = await alice.request(f.Upload(name="x.bin", size=len(data), sha256=claimed))
    assert isinstance(ready, f.UploadReady)
    reply = await send_chunks(alice, ready, data, 0, len(data))
    assert isinstance(reply, f.Error) and reply.code == "bad_hash" and reply.upload == ready.upload
    assert isinstance(reply.to_exception(), BadHash)
    assert "nothing was stored" in reply.message
    assert stored_files(blob_dir) == []
    await alice.ping()  # the connection stays open


@needs_send_path
async def test_a_message_can_only_carry_a_stored_file(
    two_gateways: tuple[Proc, Proc], clients: Clients, tmp_path: Path
) -> None:
    alice = await clients.login(two_gateways[0].url, "alice")
    await clients.login(two_gateways[1].url, "bob")
    with pytest.raises(NotFound):
        await send_ref(alice, "@bob", FileRef(id=sha(b"never uploaded"), name="x.bin", size=14))
    ref = await upload(alice, random_file(tmp_path / "src", "a.txt", 1000))
    with pytest.raises(InvalidFrame):  # the size must be the stored one
        await send_ref(alice, "@bob", FileRef(id=ref.id, name="a.txt", size=999))
    with pytest.raises(InvalidFrame):  # names are bare file names
        await send_ref(alice, "@bob", FileRef(id=ref.id, name="../a.txt", size=1000))
    renamed = FileRef(id=ref.id, name="renamed.txt", size=1000, mime="Text/Plain")
    assert (await send_ref(alice, "@bob", renamed)).id


async def test_per_user_quota(
    redis_server: RedisBackend, processes: Processes, clients: Clients, tmp_path: Path, blob_dir: Path
) -> None:
    gw = gateway(processes, redis_server, blob_dir, "--user-quota-bytes", "10000")
    alice = await clients.login(gw.url, "alice")
    bob = await clients.login(gw.url, "bob")
    first = random_file(tmp_path / "src", "a.bin", 6000)
    second = random_file(tmp_path / "src", "b.bin", 6000)

    ref = await upload(alice, first)
    with pytest.raises(QuotaExceeded) as refused:
        await upload(alice, second)
    assert "quota" in refused.value.message
    assert len(stored_files(blob_dir)) == 1
    assert await upload(alice, first) == ref  # a file she has already costs nothing more
    assert (await upload(bob, second)).size == 6000  # quotas are per user

    # Uploads in progress count too: two half-done 3 KB uploads leave no room for a third 5 KB file.
    carol = await clients.login(gw.url, "carol")
    for n in (1, 2):
        data = os.urandom(3000)
        ready = await carol.request(f.Upload(name=f"p{n}.bin", size=3000, sha256=sha(data)))
        assert isinstance(await send_chunks(carol, ready, data, 0, 1000), f.ChunkAck)
    with pytest.raises(QuotaExceeded):
        await upload(carol, random_file(tmp_path / "src", "c.bin", 5000))
    await upload(carol, random_file(tmp_path / "src", "d.bin", 4000))


# -- protocol details -------------------------------------------------------------


async def test_a_chunk_at_the_wrong_offset_is_told_where_to_go_on(
    two_gateways: tuple[Proc, Proc], clients: Clients
) -> None:
    alice = await clients.login(two_gateways[0].url, "alice")
    data = os.urandom(300_000)
    ready = await alice.request(f.Upload(name="x.bin", size=len(data), sha256=sha(data)))
    assert isinstance(ready, f.UploadReady) and ready.chunk == 256 * 1024
    replies = Replies(alice, ready.upload)
    await alice.send_binary(encode_chunk(ready.upload, 1000, data[1000:2000]))
    error = await replies.next()
    assert isinstance(error, f.Error) and (error.code, error.upload, error.offset) == ("invalid_frame", ready.upload, 0)
    await alice.send_binary(encode_chunk(ready.upload, 0, data[:ready.chunk + 1]))  # over the chunk size
    error = await replies.next()
    assert isinstance(error, f.Error) and error.offset == 0
    await alice.send_binary(encode_chunk(ready.upload, 0, data[:1000]))
    assert (await replies.next()).offset == 1000
    await alice.send_binary(b"CWU1" + b"\x00" * 5)  # a truncated header: no upload id, so a plain error event
    error = await wait_for_event(alice, lambda e: isinstance(e, f.Error))
    assert isinstance(error, f.Error) and error.code == "invalid_frame"
    # Another user cannot write into alice's upload.
    bob = await clients.login(two_gateways[1].url, "bob")
    bob_replies = Replies(bob, ready.upload)
    await bob.send_binary(encode_chunk(ready.upload, 1000, data[1000:2000]))
    assert (await bob_replies.next()).code == "not_found"


async def test_download_needs_the_live_session_and_supports_ranges(
    two_gateways: tuple[Proc, Proc], clients: Clients, tmp_path: Path
) -> None:
    gw1, gw2 = two_gateways
    alice = await clients.login(gw1.url, "alice")
    bob = await clients.login(gw2.url, "bob")
    source = random_file(tmp_path / "src", "pic \u00e9t\u00e9.png", 70_000)
    ref = await upload(alice, source)
    url = f"{http_base(gw2.url)}/files/{ref.id}"

    status, headers, _ = await asyncio.to_thread(http_get, f"{url}?user=bob&token=wrong")
    assert status == 401 and "Bearer" in headers["WWW-Authenticate"]
    assert (await asyncio.to_thread(http_get, url))[0] == 401
    assert (await asyncio.to_thread(http_get, f"{url}?user=carol&token={bob.session}"))[0] == 401

    auth = {"Authorization": f"Bearer {bob.session}"}
    status, headers, body = await asyncio.to_thread(http_get, f"{url}?user=bob", auth)
    assert status == 200 and body == source.read_bytes()
    assert headers["Content-Type"] == "image/png" and headers["Content-Length"] == "70000"
    assert "filename*=UTF-8''pic%20%C3%A9t%C3%A9.png" in headers["Content-Disposition"]
    assert headers["Content-Disposition"].startswith("attachment;")
    status, headers, body = await asyncio.to_thread(http_get, f"{url}?user=BOB&token={bob.session}",
                                                    {"Range": "bytes=100-199"})
    assert status == 206 and body == source.read_bytes()[100:200]
    assert headers["Content-Range"] == "bytes 100-199/70000"
    assert (await asyncio.to_thread(http_get, f"{url}?user=bob", {**auth, "Range": "bytes=70000-"}))[0] == 416
    missing = f"{http_base(gw2.url)}/files/{'0' * 64}?user=bob"
    assert (await asyncio.to_thread(http_get, missing, auth))[0] == 404

    old_token = bob.session
    await bob.close()  # a closed connection's token no longer opens anything, once the gateway has logged it out

    async def refused() -> bool:
        return (await asyncio.to_thread(http_get, f"{url}?user=bob&token={old_token}"))[0] == 401

    await async_wait_until(refused, 10, "the closed session's token to be refused")


async def test_a_file_someone_else_stored_is_not_sent_again(
    two_gateways: tuple[Proc, Proc], clients: Clients, tmp_path: Path
) -> None:
    alice = await clients.login(two_gateways[0].url, "alice")
    bob = await clients.login(two_gateways[1].url, "bob")
    source = random_file(tmp_path / "src", "meme.gif", 300_000)
    ref = await upload(alice, source)
    reply = await bob.request(f.Upload(name="same.gif", size=300_000, sha256=ref.id, mime="image/gif"))
    assert isinstance(reply, f.Uploaded) and reply.file == FileRef(id=ref.id, name="same.gif", size=300_000,
                                                                    mime="image/gif")
    with pytest.raises(InvalidFrame):
        await bob.request(f.Upload(name="x", size=5, sha256=ref.id))


async def test_an_empty_file(two_gateways: tuple[Proc, Proc], clients: Clients, tmp_path: Path) -> None:
    alice = await clients.login(two_gateways[0].url, "alice")
    ref = await upload(alice, random_file(tmp_path / "src", "empty.txt", 0))
    assert (ref.size, ref.mime, ref.id) == (0, "text/plain", sha(b""))
    assert await fetch(alice, ref) == b""
