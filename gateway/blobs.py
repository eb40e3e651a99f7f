"""Content-addressed file storage shared by every gateway: the :class:`BlobStore` interface and a directory backend.

A blob is named by the SHA-256 of its bytes.  Uploads grow in a *partial*
file named by their upload id; when the last byte is in and the hash checked,
:meth:`BlobStore.commit` moves it under its final name in one atomic step, so
a reader never sees a half-written blob under a real name, and a blob, once
there, never changes.

:class:`DirectoryBlobStore` keeps ``root/ab/cd/<sha256>`` and partial uploads
in ``root/.partial/<upload id>``.  In a cluster ``root`` is a volume every
gateway mounts (the compose file's ``blobs``), so any gateway can continue an
upload another one started and serve a file another one received.  Another
backend (an object store, say) implements the same few methods; partial
uploads still need a place every gateway can append to.

The methods block (disk or network): the gateway calls them in a thread.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import BinaryIO, Protocol

from protocol.files import is_sha256, is_upload_id

_READ_BLOCK = 1024 * 1024


class BlobStore(Protocol):
    def exists(self, sha256: str) -> bool:
        """Whether the blob is stored."""
        ...

    def size(self, sha256: str) -> int | None:
        """Its size in bytes, or None if it is not stored."""
        ...

    def open_read(self, sha256: str) -> BinaryIO:
        """The blob's bytes; FileNotFoundError if it is not stored."""
        ...

    def commit(self, sha256: str, temp_path: Path) -> bool:
        """Store ``temp_path`` (whose bytes hash to ``sha256``) as that blob, atomically, and remove it.

        Returns False if the blob was already stored (``temp_path`` is removed all the same).
        """
        ...

    def partial_path(self, upload_id: str) -> Path:
        """Where the bytes received so far for an upload are kept."""
        ...

    def partial_size(self, upload_id: str) -> int:
        """How many bytes of an upload have arrived (0 if none)."""
        ...

    def write_partial(self, upload_id: str, offset: int, data: bytes | memoryview) -> int:
        """Write ``data`` at ``offset`` of the upload's partial file; returns its new size."""
        ...

    def delete_partial(self, upload_id: str) -> None:
        """Forget an upload's bytes (no error if there are none)."""
        ...

    def sweep_partials(self, older_than: float) -> int:
        """Delete partial uploads untouched for ``older_than`` seconds; returns how many."""
        ...


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class DirectoryBlobStore:
    """Blobs as files under ``root``: ``root/ab/cd/<sha256>``; partial uploads in ``root/.partial``.

    Directories are made on first write, so a gateway that never receives a
    file leaves nothing on disk.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.partials = self.root / ".partial"

    def blob_path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise ValueError("a blob is named by 64 lowercase hex digits")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def size(self, sha256: str) -> int | None:
        try:
            return self.blob_path(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def open_read(self, sha256: str) -> BinaryIO:
        return open(self.blob_path(sha256), "rb")

    def commit(self, sha256: str, temp_path: Path) -> bool:
        final = self.blob_path(sha256)
        if final.is_file():  # content-addressed: the same bytes are there already
            temp_path.unlink(missing_ok=True)
            return False
        try:
            fd = os.open(temp_path, os.O_RDONLY)
        except FileNotFoundError:
            if final.is_file():  # a concurrent commit of the same upload won
                return False
            raise
        try:
            os.fsync(fd)  # the bytes are on disk before the name points at them
        finally:
            os.close(fd)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp_path, final)  # atomic: the final name never holds a partial blob
        _fsync_dir(final.parent)
        return True

    def partial_path(self, upload_id: str) -> Path:
        if not is_upload_id(upload_id):
            raise ValueError("an upload id is 32 lowercase hex digits")
        return self.partials / upload_id

    def partial_size(self, upload_id: str) -> int:
        try:
            return self.partial_path(upload_id).stat().st_size
        except FileNotFoundError:
            return 0

    def write_partial(self, upload_id: str, offset: int, data: bytes | memoryview) -> int:
        path = self.partial_path(upload_id)
        self.partials.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            # pwrite at an explicit offset: two gateways racing on one upload (a client that
            # reconnected while its old socket was still being served) write the same bytes to
            # the same place; the hash check at the end catches anything else.
            view = memoryview(data)
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def delete_partial(self, upload_id: str) -> None:
        self.partial_path(upload_id).unlink(missing_ok=True)

    def sweep_partials(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        removed = 0
        try:
            entries = list(os.scandir(self.partials))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # some filesystems cannot open directories; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
