"""DirectoryBlobStore: content-addressed layout, atomic commit, partial uploads and their cleanup."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from gateway import blobs as blobs_module
from gateway.blobs import BlobStore, DirectoryBlobStore, sha256_file

UPLOAD = "0123456789abcdef0123456789abcdef"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def store(tmp_path: Path) -> DirectoryBlobStore:
    return DirectoryBlobStore(tmp_path / "blobs")


def test_it_is_a_blob_store(store: DirectoryBlobStore) -> None:
    backend: BlobStore = store  # the Protocol is satisfied structurally (mypy checks this line)
    assert backend is store


def test_nothing_is_created_until_the_first_write(store: DirectoryBlobStore) -> None:
    assert store.size(sha(b"x")) is None and not store.exists(sha(b"x"))
    assert store.partial_size(UPLOAD) == 0
    store.delete_partial(UPLOAD)  # no error for an upload without bytes
    assert store.sweep_partials(0) == 0
    assert not store.root.exists()


def test_partial_then_commit_gives_the_content_addressed_layout(store: DirectoryBlobStore) -> None:
    data = os.urandom(300_000)
    assert store.write_partial(UPLOAD, 0, data[:100_000]) == 100_000
    assert store.write_partial(UPLOAD, 100_000, memoryview(data)[100_000:]) == 300_000
    assert store.partial_size(UPLOAD) == 300_000
    assert files_under(store.root) == [Path(".partial") / UPLOAD]
    assert sha256_file(store.partial_path(UPLOAD)) == sha(data)

    digest = sha(data)
    assert store.commit(digest, store.partial_path(UPLOAD)) is True
    assert files_under(store.root) == [Path(digest[:2]) / digest[2:4] / digest]
    assert store.exists(digest) and store.size(digest) == 300_000
    with store.open_read(digest) as fh:
        assert fh.read() == data
    assert store.partial_size(UPLOAD) == 0


def test_committing_a_stored_blob_again_keeps_one_copy(store: DirectoryBlobStore) -> None:
    data = b"same bytes"
    store.write_partial(UPLOAD, 0, data)
    assert store.commit(sha(data), store.partial_path(UPLOAD)) is True
    other = "f" * 32
    store.write_partial(other, 0, data)
    assert store.commit(sha(data), store.partial_path(other)) is False
    assert files_under(store.root) == [Path(sha(data)[:2]) / sha(data)[2:4] / sha(data)]


def test_a_lost_commit_race_is_not_an_error(store: DirectoryBlobStore) -> None:
    data = b"raced"
    store.write_partial(UPLOAD, 0, data)
    path = store.partial_path(UPLOAD)
    assert store.commit(sha(data), path) is True
    assert store.commit(sha(data), path) is False  # the partial is gone: the other commit won
    with pytest.raises(FileNotFoundError):
        store.commit(sha(b"never written"), store.partial_path("e" * 32))


def test_commit_is_an_atomic_rename_after_fsync(store: DirectoryBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The final name appears in one os.replace, after the bytes were fsynced: never half a blob."""
    data = os.urandom(50_000)
    store.write_partial(UPLOAD, 0, data)
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        assert not Path(dst).exists()
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(blobs_module.os, "fsync", fsync)
    monkeypatch.setattr(blobs_module.os, "replace", replace)
    store.commit(sha(data), store.partial_path(UPLOAD))
    assert events[:2] == ["fsync", "replace"]


def test_a_failed_commit_leaves_no_blob(store: DirectoryBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(1000)
    store.write_partial(UPLOAD, 0, data)

    def broken(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(blobs_module.os, "replace", broken)
    with pytest.raises(OSError):
        store.commit(sha(data), store.partial_path(UPLOAD))
    assert not store.exists(sha(data))
    assert files_under(store.root) == [Path(".partial") / UPLOAD]


def test_writes_at_an_offset_are_idempotent(store: DirectoryBlobStore) -> None:
    """Two gateways writing the same chunk of one upload leave the same bytes."""
    data = os.urandom(4096)
    store.write_partial(UPLOAD, 0, data[:2048])
    assert store.write_partial(UPLOAD, 1024, data[1024:4096]) == 4096
    assert store.write_partial(UPLOAD, 1024, data[1024:3000]) == 4096
    assert store.partial_path(UPLOAD).read_bytes() == data


def test_delete_partial(store: DirectoryBlobStore) -> None:
    store.write_partial(UPLOAD, 0, b"abc")
    store.delete_partial(UPLOAD)
    assert store.partial_size(UPLOAD) == 0 and files_under(store.root) == []


def test_sweep_removes_only_old_partials(store: DirectoryBlobStore) -> None:
    old, fresh = "a" * 32, "b" * 32
    store.write_partial(old, 0, b"old")
    store.write_partial(fresh, 0, b"fresh")
    past = time.time() - 7200
    os.utime(store.partial_path(old), (past, past))
    assert store.sweep_partials(3600) == 1
    assert files_under(store.root) == [Path(".partial") / fresh]


@pytest.mark.parametrize("bad", ["", "ABC", "../" + "a" * 61, "a" * 63, "g" * 64, "A" * 64])
def test_names_outside_the_layout_are_refused(store: DirectoryBlobStore, bad: str) -> None:
    with pytest.raises(ValueError):
        store.blob_path(bad)
    with pytest.raises(ValueError):
        store.partial_path(bad)
