"""client/gui_files.py: file lines with a Save button, inline pictures, saving through the bridge (under Xvfb)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import tkinter as tk
from collections.abc import Iterator
from pathlib import Path
from tkinter import ttk

import pytest

from client.bridge import Bridge
from client.gui import ChatWindow
from client.gui_files import FileView, can_preview, describe, photo_from_bytes, pillow_available
from protocol import frames as f
from protocol.files import FileRef
from tests.gui.conftest import Windows, pump_until
from tests.gui.input import click, needs_xdotool, press
from tests.helpers import Processes, RedisServer


def png_bytes(root: tk.Misc, tmp_path: Path, width: int, height: int) -> bytes:
    image = tk.PhotoImage(master=root, width=width, height=height)
    image.put("#1a5fb4", to=(0, 0, width, height))
    path = tmp_path / "pic.png"
    image.write(str(path), format="png")
    return path.read_bytes()


def ref_for(data: bytes, name: str, mime: str) -> FileRef:
    return FileRef(id=hashlib.sha256(data).hexdigest(), name=name, size=len(data), mime=mime)


@pytest.fixture
def gateway_url(redis_server: RedisServer, processes: Processes) -> str:
    return processes.gateway(redis_server.url).url


@pytest.fixture
def bridge(tk_root: tk.Tk) -> Iterator[Bridge]:
    b = Bridge(tk_root, name="test-files-io")
    b.start()
    yield b
    b.join(5)


@pytest.fixture
def pane(tk_root: tk.Tk) -> Iterator[tk.Text]:
    top = tk.Toplevel(tk_root)
    text = tk.Text(top, state="disabled")
    text.pack()
    yield text
    top.destroy()


def test_picture_is_shown_inline_and_cached(tk_root: tk.Tk, bridge: Bridge, pane: tk.Text, tmp_path: Path) -> None:
    data = png_bytes(tk_root, tmp_path, 800, 100)
    ref = ref_for(data, "wide.png", "image/png")
    fetched: list[str] = []

    async def fetcher(r: FileRef) -> bytes:
        fetched.append(r.id)
        return data

    view = FileView(bridge, lambda: None, fetcher=fetcher)
    view.insert(pane, ref)
    assert "wide.png" in pane.get("1.0", "end")
    assert str(pane.cget("state")) == "disabled"  # left as it was
    assert isinstance(view.buttons[-1], ttk.Button) and view.buttons[-1].cget("text") == "Save\u2026"
    pump_until(tk_root, lambda: pane.image_names(), what="the preview")
    photo = view.photos[ref.id]
    assert (photo.width(), photo.height()) == (267, 34)  # scaled to fit 360x240: every 3rd pixel

    # Re-rendering the pane uses the cached picture: no second fetch.
    pane.configure(state="normal")
    pane.delete("1.0", "end")
    view.insert(pane, ref)
    assert len(pane.image_names()) == 1 and fetched == [ref.id]


def test_undecodable_or_unsupported_files_get_no_preview(tk_root: tk.Tk, bridge: Bridge, pane: tk.Text) -> None:
    broken = ref_for(b"not a png", "broken.png", "image/png")

    async def fetcher(r: FileRef) -> bytes:
        return b"not a png"

    view = FileView(bridge, lambda: None, fetcher=fetcher)
    view.insert(pane, broken)
    pump_until(tk_root, lambda: broken.id in view.failed, what="the failed preview")
    assert not pane.image_names()
    assert not can_preview(FileRef(id="0" * 64, name="a.pdf", size=10, mime="application/pdf"))
    assert can_preview(FileRef(id="0" * 64, name="a.jpg", size=10, mime="image/jpeg")) == pillow_available()
    assert not can_preview(FileRef(id="0" * 64, name="a.png", size=10**9, mime="image/png"))


def test_file_line_text() -> None:
    ref = FileRef(id="0" * 64, name="caf\u00e9 \U0001f431.png", size=5 * 1024 * 1024, mime="image/png")
    assert describe(ref) == "File: caf\u00e9 \ufffd.png \u00b7 5.0 MiB \u00b7 image/png"  # Tk 8.6: BMP only


def test_jpeg_needs_pillow(tk_root: tk.Tk) -> None:
    if pillow_available():
        pytest.skip("Pillow is installed here")
    assert photo_from_bytes(b"\xff\xd8\xff\xe0 not really", "image/jpeg", tk_root) is None


def test_save_button_downloads_into_the_chosen_folder(
    tk_root: tk.Tk, bridge: Bridge, pane: tk.Text, tmp_path: Path
) -> None:
    data = b"%PDF-1.4 hello"
    ref = ref_for(data, "doc.pdf", "application/pdf")
    notes: list[tuple[str, bool]] = []

    async def saver(r: FileRef, folder: Path) -> Path:
        target = folder / r.name
        target.write_bytes(data)
        return target

    view = FileView(bridge, lambda: None, saver=saver, ask_folder=lambda: str(tmp_path),
                    notify=lambda message, error=False: notes.append((message, error)))
    view.insert(pane, ref)
    view.buttons[-1].invoke()
    pump_until(tk_root, lambda: any(m.startswith("Saved") for m, _ in notes), what="the save")
    assert (tmp_path / "doc.pdf").read_bytes() == data
    assert notes[-1] == (f"Saved {tmp_path / 'doc.pdf'}", False)

    # Without a connection the real saver fails, and says so.
    plain = FileView(bridge, lambda: None, ask_folder=lambda: str(tmp_path),
                     notify=lambda message, error=False: notes.append((message, error)))
    plain.save(ref)
    pump_until(tk_root, lambda: notes[-1][1], what="the error notice")
    assert notes[-1] == ("Could not save doc.pdf: not connected", True)
    cancelled = FileView(bridge, lambda: None, ask_folder=lambda: None)
    assert cancelled.save(ref) is None  # the folder dialog was cancelled: nothing happens


# -- in the chat window, against a real gateway ------------------------------------


def file_line(who: str, ref: FileRef) -> re.Pattern[str]:
    """A file message without text as shown: ``14:03  bob  File: pic.png · 96 B · image/png``."""
    return re.compile(rf"^\d\d:\d\d  {re.escape(who)}  {re.escape(describe(ref))}  $", re.M)


def embedded_buttons(window: ChatWindow) -> list[ttk.Button]:
    text = window.chat_text
    return [text.nametowidget(name) for name in text.window_names()]


@needs_xdotool
def test_a_picture_sent_from_one_window_shows_inline_in_the_other_and_saves(
    tk_root: tk.Tk, gateway_url: str, windows: Windows, tmp_path: Path
) -> None:
    alice = windows.login(gateway_url, "alice", at=(0, 0))
    bob = windows.login(gateway_url, "bob", at=(340, 140))
    pump_until(tk_root, lambda: "bob" in alice.online_rows(), 10, "bob in alice's online list")
    alice.select_peer("bob")
    bob.select_peer("alice")
    data = png_bytes(tk_root, tmp_path, 48, 32)
    picture = tmp_path / "pic.png"
    ref = ref_for(data, "pic.png", "image/png")

    # alice: "Send file…", the (injected) open dialog picks the picture.
    asked: list[str] = []
    alice.ask_open_file = lambda: asked.append("open") or str(picture)
    assert str(alice.send_file_button.cget("text")) == "Send file\u2026"
    press(alice.send_file_button, tk_root)
    assert asked == ["open"]

    # bob's chat pane: the file line, its Save button, then the picture itself.
    text = bob.chat_text
    pump_until(tk_root, lambda: file_line("alice", ref).search(bob.chat_contents()), 15, "the file line at bob")
    pump_until(tk_root, lambda: text.image_names(), 15, "the inline picture at bob")
    (button,) = embedded_buttons(bob)
    assert isinstance(button, ttk.Button) and str(button.cget("text")) == "Save\u2026"
    (image,) = text.image_names()
    photo = bob.file_view.photos[ref.id]
    assert str(text.image_cget(image, "image")) == str(photo)
    assert (photo.width(), photo.height()) == (48, 32)  # small: shown at full size
    line_of_file = int(text.search("File: pic.png", "1.0").split(".")[0])
    assert int(text.index(image).split(".")[0]) == line_of_file + 1  # right under its line
    assert str(text.cget("state")) == "disabled"

    # alice sees her own file message the same way.
    pump_until(tk_root, lambda: file_line("You", ref).search(alice.chat_contents()), 10, "alice's own file line")
    pump_until(tk_root, lambda: alice.chat_text.image_names(), 15, "the picture at alice")
    assert alice.notice_text() == "Sent pic.png to bob."

    # Save… (the folder dialog injected) downloads a byte-identical copy.
    saved = tmp_path / "saved"
    saved.mkdir()
    bob.file_view.ask_folder = lambda: str(saved)
    click(button)
    pump_until(tk_root, lambda: bob.notice_text().startswith("Saved"), 15, "the save")
    assert bob.notice_text() == f"Saved {saved / 'pic.png'}"
    assert (saved / "pic.png").read_bytes() == data

    # Re-rendering the conversation keeps the file line, button and (cached) picture.
    bob.select_peer("alice")
    assert file_line("alice", ref).search(bob.chat_contents())
    assert len(text.image_names()) == 1 and len(embedded_buttons(bob)) == 1


@needs_xdotool
def test_send_file_needs_a_selected_user_and_a_cancelled_dialog_sends_nothing(
    tk_root: tk.Tk, gateway_url: str, windows: Windows
) -> None:
    alice = windows.login(gateway_url, "alice")
    asked: list[str] = []
    alice.ask_open_file = lambda: asked.append("open") or None
    press(alice.send_file_button, tk_root)
    assert asked == [] and alice.notice_text() == "Select someone in Online clients, or a group, to send a file to."
    alice.select_peer("bob")
    press(alice.send_file_button, tk_root)
    assert asked == ["open"]  # cancelled: nothing sent
    assert "File:" not in alice.chat_contents()


def test_re_rendering_while_a_picture_loads_places_it_once_under_its_line(
    tk_root: tk.Tk, windows: Windows, tmp_path: Path
) -> None:
    window = windows.open("ws://127.0.0.1:9", "bob")  # never connected: the pane is driven directly
    data = png_bytes(tk_root, tmp_path, 20, 20)
    ref = ref_for(data, "pic.png", "image/png")
    release = asyncio.Event()  # set on the bridge's loop: holds the fetch until the test lets it go

    async def fetcher(r: FileRef) -> bytes:
        await release.wait()
        return data

    window.file_view.fetcher = fetcher
    window.select_peer("alice")
    conv = window.conversations["@alice"]
    conv.add(f.Message(id="1-0", from_="alice", to="@bob", body="look", ts=1, file=ref))
    window.render_chat()
    # A file in the broadcast pane meanwhile (so the next rendering's preview mark gets another name),
    # then the chat pane is re-rendered while its picture is still being fetched.
    other = ref_for(b"%PDF-1.4", "doc.pdf", "application/pdf")
    window._add_broadcast(f.Message(id="1-1", from_="carol", to="*", body="", ts=1, file=other))
    window.render_chat()
    conv.add(f.Message(id="2-0", from_="alice", to="@bob", body="nice, right?", ts=2))
    window.render_chat()
    window.bridge.call_soon(release.set)
    text = window.chat_text
    pump_until(tk_root, lambda: text.image_names(), 10, "the picture")
    assert len(text.image_names()) == 1 and len(text.window_names()) == 1
    assert "carol  File: doc.pdf" in window.broadcast_contents()
    file_row = int(text.search("File: pic.png", "1.0").split(".")[0])
    assert int(text.index(text.image_names()[0]).split(".")[0]) == file_row + 1
    assert text.get(f"{file_row + 1}.0", f"{file_row + 1}.end") == ""  # the picture has its own line
    assert "nice, right?" in text.get(f"{file_row + 2}.0", f"{file_row + 2}.end")
    assert str(text.cget("state")) == "disabled"
    assert not [m for m in text.mark_names() if str(m).startswith("preview-")]
