"""Files in the Tk client: a file message shows its name and size with a Save button, images inline.

:class:`FileView` renders the file part of a message into a conversation's
``tk.Text`` pane: a line ``File: cat.png · 5.0 MiB · image/png`` with a Save
button, and for pictures the picture itself underneath, scaled down to fit.
PNG and GIF are decoded by Tk itself; JPEG (and anything else Pillow reads)
only if Pillow is installed; other files show no preview.  Network work runs on
the window's :class:`~client.bridge.Bridge` loop and results come back to the
Tk thread, so nothing here blocks the window; fetched pictures are cached by
file id, so re-rendering a conversation does not fetch them again.

Wiring into :class:`client.gui.ChatWindow` (three lines)::

    self.file_view = FileView(self.bridge, lambda: self.client, notify=self.flash)   # in __init__
    # where a message is written into a pane (client.gui_panes.insert_message), after the body:
    if (ref := file_of(msg)) is not None:
        self.file_view.insert(text, ref)

``save`` asks for a folder (``filedialog.askdirectory``; tests pass
``ask_folder``) and downloads there with :func:`client.files.download`
(SHA-256 checked, never overwriting a file).
"""

from __future__ import annotations

import base64
import concurrent.futures
import importlib
import io
import logging
import tkinter as tk
from collections.abc import Callable, Coroutine
from pathlib import Path
from tkinter import filedialog, ttk
from typing import Any, Literal

from client.bridge import Bridge
from client.chat import ChatClient
from client.files import download, fetch
from protocol.files import FileRef, human_size

log = logging.getLogger("chinwag.gui.files")

TK_IMAGE_TYPES = frozenset(("image/png", "image/gif"))  # Tk 8.6 decodes these by itself
PREVIEW_MAX_BYTES = 8 * 1024 * 1024  # bigger pictures are not fetched for a preview (Save still works)
PREVIEW_BOX = (360, 240)  # largest preview, in pixels
FILE_FG = "#374151"

Fetch = Callable[[FileRef], Coroutine[Any, Any, bytes]]
Save = Callable[[FileRef, Path], Coroutine[Any, Any, Path]]


def _pillow() -> tuple[Any, Any] | None:
    """Pillow's ``Image`` and ``ImageTk`` modules, or None when Pillow is not installed."""
    try:
        return importlib.import_module("PIL.Image"), importlib.import_module("PIL.ImageTk")
    except ImportError:
        return None


def pillow_available() -> bool:
    return _pillow() is not None


def can_preview(ref: FileRef) -> bool:
    """Whether the picture can be shown inline here (and is small enough to fetch for it)."""
    if ref.size > PREVIEW_MAX_BYTES or not ref.mime.startswith("image/"):
        return False
    return ref.mime in TK_IMAGE_TYPES or pillow_available()


def photo_from_bytes(data: bytes, mime: str, master: tk.Misc, box: tuple[int, int] = PREVIEW_BOX) -> Any | None:
    """A Tk image of ``data`` scaled down to fit ``box``; None if it cannot be decoded here."""
    if mime in TK_IMAGE_TYPES:
        try:
            photo = tk.PhotoImage(master=master, data=base64.b64encode(data).decode("ascii"))
        except tk.TclError:
            photo = None
        if photo is not None:
            factor = max(1, -(-photo.width() // box[0]), -(-photo.height() // box[1]))  # ceil division
            return photo.subsample(factor, factor) if factor > 1 else photo
    pil = _pillow()
    if pil is None:
        return None
    image, image_tk = pil
    try:
        with image.open(io.BytesIO(data)) as img:
            img.thumbnail(box)
            return image_tk.PhotoImage(img.copy(), master=master)
    except (OSError, ValueError, image.DecompressionBombError):
        return None


def _state(text: tk.Text) -> Literal["normal", "disabled"]:
    return "disabled" if str(text.cget("state")) == "disabled" else "normal"


def describe(ref: FileRef) -> str:
    """``File: cat.png · 5.0 MiB · image/png`` (no emoji: Tk 8.6 cannot draw characters past U+FFFF)."""
    name = "".join(c if ord(c) <= 0xFFFF else "\ufffd" for c in ref.name)
    return f"File: {name} \u00b7 {human_size(ref.size)} \u00b7 {ref.mime}"


class FileView:
    """Shows files in conversation panes and runs their downloads."""

    def __init__(
        self,
        bridge: Bridge,
        client: Callable[[], ChatClient | None],
        *,
        notify: Callable[..., None] | None = None,
        ask_folder: Callable[[], str | None] | None = None,
        fetcher: Fetch | None = None,
        saver: Save | None = None,
    ) -> None:
        self.bridge = bridge
        self.client = client
        self.notify = notify or (lambda message, error=False: log.info("%s", message))
        self.ask_folder = ask_folder or (lambda: filedialog.askdirectory(title="Save the file in…") or None)
        self.fetcher = fetcher or self._fetch
        self.saver = saver or self._save
        self.photos: dict[str, Any] = {}  # file id -> decoded preview (kept: Tk forgets unreferenced images)
        self.failed: set[str] = set()  # previews that could not be fetched or decoded
        self._waiting: dict[str, list[tuple[tk.Text, str]]] = {}  # file id -> (pane, mark) awaiting its preview
        self.buttons: list[ttk.Button] = []

    # -- rendering (Tk thread) --------------------------------------------------

    def insert(self, text: tk.Text, ref: FileRef) -> None:
        """Append the file line, its Save button and (for pictures) the preview at the end of ``text``."""
        state = _state(text)
        text.configure(state="normal")
        text.tag_configure("file", foreground=FILE_FG)
        text.insert("end", describe(ref) + "  ", ("file",))
        button = ttk.Button(text, text="Save\u2026", command=lambda: self.save(ref), cursor="hand2")
        self.buttons = [b for b in self.buttons if b.winfo_exists()] + [button]
        text.window_create("end", window=button, padx=2)
        text.insert("end", "\n")
        if can_preview(ref) and ref.id not in self.failed:
            if ref.id in self.photos:
                self._place(text, "end", self.photos[ref.id])
            else:
                mark = f"preview-{ref.id[:16]}-{len(self.buttons)}"
                text.mark_set(mark, "end - 1 char")
                text.mark_gravity(mark, "left")
                self._waiting.setdefault(ref.id, []).append((text, mark))
                if len(self._waiting[ref.id]) == 1:
                    self._start_preview(ref, text)
        text.configure(state=state)

    def _place(self, text: tk.Text, index: str, photo: Any) -> None:
        # Resolve marks first: Tk cannot parse "<mark-with-dashes> + 1 char".
        where = index if index == "end" else text.index(index)
        text.image_create(where, image=photo, padx=4, pady=4)
        text.insert(f"{where} + 1 char" if where != "end" else "end", "\n")

    @staticmethod
    def forget(text: tk.Text) -> None:
        """Before a pane is emptied and drawn again: drop the marks of previews still being fetched
        (deleting text keeps marks, which would then all point at the top of the pane)."""
        for mark in text.mark_names():
            if str(mark).startswith("preview-"):
                text.mark_unset(mark)

    def _start_preview(self, ref: FileRef, master: tk.Misc) -> None:
        self.bridge.submit(self.fetcher(ref), done=lambda fut: self._preview_fetched(ref, master, fut))

    def _preview_fetched(self, ref: FileRef, master: tk.Misc, fut: concurrent.futures.Future[bytes]) -> None:
        waiting = self._waiting.pop(ref.id, [])
        photo = None
        if not fut.cancelled() and fut.exception() is None:
            try:
                photo = photo_from_bytes(fut.result(), ref.mime, master)
            except tk.TclError:  # the window went away meanwhile
                return
        else:
            log.info("no preview for %s: %s", ref.id[:12], None if fut.cancelled() else fut.exception())
        if photo is None:
            self.failed.add(ref.id)
            return
        self.photos[ref.id] = photo
        for text, mark in waiting:
            try:
                if mark not in text.mark_names():
                    continue  # the pane was re-rendered; the new rendering uses the cache
                state = _state(text)
                text.configure(state="normal")
                self._place(text, mark, photo)
                text.mark_unset(mark)
                text.configure(state=state)
                text.see("end")
            except tk.TclError:
                continue

    # -- saving -----------------------------------------------------------------

    def save(self, ref: FileRef, folder: str | None = None) -> concurrent.futures.Future[Path] | None:
        """Ask where (unless ``folder`` is given), then download the file there."""
        folder = folder or self.ask_folder()
        if not folder:
            return None
        self.notify(f"Saving {ref.name}\u2026")
        return self.bridge.submit(self.saver(ref, Path(folder)), done=lambda fut: self._saved(ref, fut))

    def _saved(self, ref: FileRef, fut: concurrent.futures.Future[Path]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self.notify(f"Could not save {ref.name}: {exc}", error=True)
        else:
            self.notify(f"Saved {fut.result()}")

    # -- network (loop thread) --------------------------------------------------

    def _current(self) -> ChatClient:
        client = self.client()
        if client is None:
            raise ConnectionError("not connected")
        return client

    async def _fetch(self, ref: FileRef) -> bytes:
        return await fetch(self._current(), ref)

    async def _save(self, ref: FileRef, folder: Path) -> Path:
        return await download(self._current(), ref, folder)
