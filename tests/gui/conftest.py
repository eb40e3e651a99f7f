"""GUI test fixtures: a private Xvfb display with a window manager, a Tk root per test, screenshots.

The ``xvfb`` session fixture always starts its own ``Xvfb`` (a fixed 1280x800
screen, nothing else on it) using ``-displayfd`` so Xvfb itself picks a free
display number and says when it is ready, then a small window manager
(openbox, as .ci/run installs it) so windows get title bars with a close
button, focus follows clicks, and resizing honours the windows' minimum
sizes as on a desktop.  openbox runs with its stock configuration (its own
``XDG_CONFIG_HOME``, so nothing of the machine's user leaks in) and says it is
up through ``--startup``.  Without Xvfb it falls back to an existing
``DISPLAY``; with neither the GUI tests are skipped with the reason.  A
Python built without Tk skips the whole folder (and says so in the report
header).

Pixels are made repeatable: every Tk window of the tests uses the DejaVu Sans
font (fonts-dejavu-core, installed by .ci/run), whatever the machine's
default font is.  The real-input helpers (click, type, keys, the window
manager's close button, resizing) live in :mod:`tests.gui.input`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import pytest

from tests.helpers import ROOT, stop_process, wait_until

try:
    import tkinter as tk

    from client.gui import ChatWindow
except ImportError as exc:  # this Python has no Tk: nothing in this folder can run
    NO_TK = f"tests/gui skipped: this Python has no tkinter ({exc})"
    collect_ignore_glob = ["test_*.py"]
else:
    NO_TK = ""

SCREENSHOT_DIR = ROOT / "docs" / "img"
README_SHOTS = frozenset(("chinwag-tk.png", "chinwag-admin.png", "chinwag-admin-cluster.png"))  # in README.md


def pytest_report_header() -> str | None:
    return NO_TK or None


@pytest.fixture(scope="session")
def xvfb() -> Iterator[str]:
    binary = shutil.which("Xvfb")
    if binary is None:
        if os.environ.get("DISPLAY"):
            yield os.environ["DISPLAY"]
            return
        pytest.skip("Xvfb is not installed and there is no DISPLAY (.ci/run installs xvfb)")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [binary, "-displayfd", str(write_fd), "-screen", "0", "1280x800x24", "-nolisten", "tcp", "-noreset"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    try:
        number = _read_display_number(read_fd, proc, timeout=15)
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    finally:
        os.close(read_fd)
    display = f":{number}"
    saved = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = display
    wm = _start_window_manager(display)
    try:
        yield display
    finally:
        if wm is not None:
            stop_process(wm)
        if saved is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = saved
        stop_process(proc)


WM_READY_TIMEOUT = 20.0


def _start_window_manager(display: str) -> subprocess.Popen[bytes] | None:
    """openbox on ``display``, once it manages windows (None if it is not installed)."""
    binary = shutil.which("openbox")
    if binary is None:
        return None
    home = Path(tempfile.mkdtemp(prefix="chinwag-wm-"))
    ready = home / "ready"
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env.update(DISPLAY=display, XDG_CONFIG_HOME=str(home), XDG_CACHE_HOME=str(home), HOME=str(home))
    proc = subprocess.Popen([binary, "--sm-disable", "--startup", f"touch {ready}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with contextlib.suppress(AssertionError):  # a timeout is reported below, with openbox's status
        wait_until(lambda: ready.exists() or proc.poll() is not None, WM_READY_TIMEOUT, "openbox to start")
    if not ready.exists():
        proc.kill()
        proc.wait(5)
        raise RuntimeError(f"openbox did not start within {WM_READY_TIMEOUT}s (status {proc.poll()})")
    return proc


HAVE_WM = shutil.which("openbox") is not None
TEST_FONT = "DejaVu Sans"


def _read_display_number(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Xvfb writes the display number and a newline to ``-displayfd`` once it accepts clients."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"Xvfb did not start within {timeout}s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 64)
            if not chunk:
                raise RuntimeError(f"Xvfb exited during start-up (status {proc.poll()})")
            data += chunk
    return int(data.strip())


@pytest.fixture
def tk_root(xvfb: str) -> Iterator[tk.Tk]:
    """A hidden Tk root; each program window is a Toplevel of it, destroyed at the end."""
    root = tk.Tk()
    root.withdraw()
    from tkinter import font

    if TEST_FONT in font.families(root):  # same pixels on every machine with fonts-dejavu-core
        for name in font.names(root):
            if name.startswith("Tk"):
                font.nametofont(name, root=root).configure(family=TEST_FONT)
    yield root
    try:
        root.update()
        root.destroy()
    except tk.TclError:
        pass
    # Widgets in reference cycles (button commands, callbacks) keep this interpreter alive.  Collect
    # them here, in the main thread: a Tk interpreter freed by a garbage collection that happens to
    # run in a network thread of a later test aborts the process (Tcl_AsyncDelete, wrong thread).
    del root
    gc.collect()


def pump_until(root: tk.Misc, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Run the Tk event loop until ``predicate()`` is truthy, failing after ``timeout`` seconds.

    This is how the tests wait: the programs' after() pollers run inside
    ``update()``, so network results reach the widgets while we wait.
    """

    def pumped() -> Any:
        root.update()
        return predicate()

    return wait_until(pumped, timeout, what, interval=0.01)


def screenshot(window: tk.Misc, name: str, tmp_dir: Path) -> Path:
    """Capture a real window with ImageMagick ``import``; copied to docs/img when CHINWAG_SCREENSHOTS=1."""
    window.update()
    target = tmp_dir / name
    frame = window.winfo_toplevel().wm_frame()
    subprocess.run(["import", "-window", frame, str(target)], check=True, timeout=20,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if os.environ.get("CHINWAG_SCREENSHOTS") == "1" and name in README_SHOTS:
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target, SCREENSHOT_DIR / name)
    return target


def can_screenshot() -> bool:
    return shutil.which("import") is not None


HAVE_XDOTOOL = shutil.which("xdotool") is not None


def x_windows(name_regex: str) -> list[str]:
    """Ids of the visible X windows whose title matches (xdotool: the real display, not Tk's view)."""
    result = subprocess.run(["xdotool", "search", "--onlyvisible", "--name", name_regex],
                            capture_output=True, text=True, timeout=10)
    return result.stdout.split()


class DialogWatcher:
    """Answers the real ``tk_messageBox`` of one window while it is up, recording what it showed.

    A modal message box runs its own Tk event loop, so the timer this class
    schedules keeps firing inside it: each tick looks for the dialog widget
    (``<window>.__tk__messagebox``), and once it is on screen — confirmed by
    ``xdotool search --name <title>``, i.e. a real mapped X window with that
    title — records title and text and presses its OK button.  After
    ``timeout`` it presses OK regardless, so a test can never hang on a dialog.
    """

    def __init__(self, window: tk.Misc, timeout: float = 15.0, interval_ms: int = 50) -> None:
        self.window = window
        parent = str(window)
        self.path = ".__tk__messagebox" if parent == "." else f"{parent}.__tk__messagebox"
        self.seen: list[tuple[str, str, list[str]]] = []  # (title, text, X window ids found by xdotool)
        self.deadline = time.monotonic() + timeout
        self.interval_ms = interval_ms
        self._after: str | None = window.after(interval_ms, self._tick)

    def _tick(self) -> None:
        self._after = None
        tcl = self.window.tk
        try:
            if tcl.getboolean(tcl.call("winfo", "exists", self.path)) and tcl.getboolean(
                tcl.call("winfo", "viewable", self.path)
            ):
                title = str(tcl.call("wm", "title", self.path))
                text = str(tcl.call(f"{self.path}.msg", "cget", "-text"))
                found = x_windows(f"^{title}$") if HAVE_XDOTOOL else []
                if found or not HAVE_XDOTOOL or time.monotonic() > self.deadline:
                    self.seen.append((title, text, found))
                    tcl.call(f"{self.path}.ok", "invoke")
        except Exception as exc:  # never leave a modal dialog up: it would block the test for good
            self.seen.append(("<error>", repr(exc), []))
            if tcl.getboolean(tcl.call("winfo", "exists", self.path)):
                tcl.call(f"{self.path}.ok", "invoke")
        self._after = self.window.after(self.interval_ms, self._tick)

    def stop(self) -> None:
        if self._after is not None:
            try:
                self.window.after_cancel(self._after)
            except tk.TclError:
                pass
            self._after = None


class _Bridge(Protocol):
    def join(self, timeout: float) -> bool: ...


class _Closable(Protocol):
    closed: bool
    bridge: _Bridge

    def close(self) -> None: ...


W = TypeVar("W", bound=_Closable)


class Opened(Generic[W]):
    """Windows opened on one Tk root (chat or admin), all closed cleanly at teardown: each is asked to
    close, the root pumped until every one has, and each window's network thread must have ended."""

    close_timeout = 10.0
    join_timeout = 5.0

    def __init__(self, root: tk.Tk) -> None:
        self.root = root
        self.opened: list[W] = []

    def close_all(self) -> None:
        for window in self.opened:
            if not window.closed:
                window.close()
        pump_until(self.root, lambda: all(w.closed for w in self.opened), self.close_timeout, "every window to close")
        for window in self.opened:
            assert window.bridge.join(self.join_timeout), "network thread still running"


class Windows(Opened["ChatWindow"]):
    """Opens chat windows on one Tk root and closes them all (cleanly) at teardown."""

    def open(self, url: str, user: str, password: str = "pw", at: tuple[int, int] = (0, 0)) -> ChatWindow:
        top = tk.Toplevel(self.root)
        window_size = (960, 700)  # the default size and a title bar: keep it on the screen, to be clicked
        x = max(0, min(at[0], top.winfo_screenwidth() - window_size[0]))
        y = max(0, min(at[1], top.winfo_screenheight() - window_size[1]))
        top.geometry(f"+{x}+{y}")
        window = ChatWindow(top, server=url.removeprefix("ws://"), user=user, password=password)
        self.opened.append(window)
        return window

    def login(self, url: str, user: str, password: str = "pw", at: tuple[int, int] = (0, 0)) -> ChatWindow:
        from tests.gui.input import press  # (it builds on this module)

        window = self.open(url, user, password, at)
        if HAVE_XDOTOOL:
            press(window.connect_button, self.root)  # a real click
        else:
            window.connect_button.invoke()
        pump_until(self.root, lambda: window.state == "connected", 15, f"{user} to connect")
        return window

    def close(self, window: ChatWindow) -> None:
        window.close()
        pump_until(self.root, lambda: window.closed, 10, "the window to close")
        assert window.bridge.join(5), "network thread still running"


@pytest.fixture
def windows(tk_root: tk.Tk) -> Iterator[Windows]:
    registry = Windows(tk_root)
    yield registry
    registry.close_all()
