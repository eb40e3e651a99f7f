"""Driving windows as a person does: xdotool moves the real pointer, clicks, types and presses keys.

Every helper acts through the X server (so the window manager, focus, grabs
and Tk's own bindings are all in the path), then pumps the Tk event loop until
the effect is visible, against a deadline.  Nothing here calls ``invoke()`` or
writes into a widget from code.

Screenshots are compared with ImageMagick ``compare`` against references in
``tests/gui/screenshots/``: a pixel counts as different only beyond a colour
fuzz, and a few percent of different pixels are tolerated (times, ports and
gateway ids on screen change from run to run).  After an intended design
change, refresh the references with one command::

    CHINWAG_UPDATE_SCREENSHOTS=1 python -m pytest tests/gui -k screenshot

and look at the new PNGs before committing them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import tkinter as tk
from pathlib import Path
from tkinter import ttk

import pytest

from tests.gui.conftest import HAVE_WM, HAVE_XDOTOOL, TEST_FONT, DialogWatcher, pump_until

REFERENCE_DIR = Path(__file__).parent / "screenshots"
FUZZ = "12%"  # colour difference below which two pixels count as equal (anti-aliasing, hinting)
MAX_DIFFERENT = 0.02  # share of pixels that may differ: times, ports and gateway ids change per run
XDO_TIMEOUT = 20

needs_xdotool = pytest.mark.skipif(not HAVE_XDOTOOL, reason="xdotool is needed to drive the windows (.ci/run)")
needs_wm = pytest.mark.skipif(not (HAVE_XDOTOOL and HAVE_WM),
                              reason="xdotool and openbox are needed (.ci/run installs them)")


def xdo(*args: str) -> str:
    result = subprocess.run(["xdotool", *args], capture_output=True, text=True, timeout=XDO_TIMEOUT)
    if result.returncode != 0:
        raise AssertionError(f"xdotool {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _center(widget: tk.Misc, dx: int | None = None, dy: int | None = None) -> tuple[int, int]:
    widget.update_idletasks()
    x = widget.winfo_rootx() + (widget.winfo_width() // 2 if dx is None else dx)
    y = widget.winfo_rooty() + (widget.winfo_height() // 2 if dy is None else dy)
    return x, y


def click(widget: tk.Misc, *, double: bool = False, at: tuple[int, int] | None = None) -> None:
    """Move the pointer onto ``widget`` (its centre, or ``at`` inside it) and click the left button."""
    top = widget.winfo_toplevel()
    pump_until(top, lambda: widget.winfo_viewable(), 10, f"{widget} to be on screen")
    x, y = _center(widget, *(at or (None, None)))
    screen = (widget.winfo_screenwidth(), widget.winfo_screenheight())
    assert 0 <= x < screen[0] and 0 <= y < screen[1], f"{widget} is off the screen at {x},{y}: move its window"

    def on_top() -> bool:  # the pointer would land on this widget, not on a window in front of it
        found = widget.winfo_containing(x, y)
        return found is not None and str(found).startswith(str(widget))

    if not on_top():
        top.lift()  # as a person brings the window to the front first
        pump_until(top, on_top, 10, f"{widget} to be in front")
    repeat = ["--repeat", "2", "--delay", "80"] if double else []
    # Wait until Tk has handled the click (xdotool returns once the X server has it, not Tk):
    # a tag at the end of the widget's bindtags sees each release after the widget's own bindings.
    releases: list[int] = []
    tag = f"clicked{id(releases)}"
    widget.bind_class(tag, "<ButtonRelease-1>", lambda _e: releases.append(1))
    widget.bindtags((*widget.bindtags(), tag))
    try:
        move_pointer(x, y)
        xdo("click", *repeat, "1")
        pump_until(top, lambda: len(releases) >= (2 if double else 1), 10, f"Tk to get the click on {widget}")
    finally:
        if widget.winfo_exists():
            widget.bindtags(tuple(t for t in widget.bindtags() if t != tag))
        widget.unbind_class(tag, "<ButtonRelease-1>")
    widget.update()


def move_pointer(x: int, y: int) -> None:
    """Move the pointer and wait until it is there (``--sync`` would wait for ever if it already is)."""
    where = dict(item.split("=", 1) for item in xdo("getmouselocation", "--shell").split())
    if (int(where["X"]), int(where["Y"])) != (x, y):
        xdo("mousemove", "--sync", str(x), str(y))


def press(button: ttk.Button, root: tk.Misc, what: str = "") -> None:
    """Click a button, after checking a person could: it is enabled and wholly on screen."""
    pump_until(root, lambda: "disabled" not in button.state(), 10, f"{button.cget('text')!r} to be enabled")
    click(button)


def press_for_dialog(
    button: ttk.Button, top: tk.Misc, root: tk.Misc, what: str, timeout: float = 15.0
) -> tuple[str, str, list[str]]:
    """Click ``button`` and wait for the message box it brings up over ``top`` (answered with OK):
    its title, its text and the X windows xdotool found for it."""
    watcher = DialogWatcher(top)
    press(button, root)
    try:
        pump_until(root, lambda: watcher.seen, timeout, what)
    finally:
        watcher.stop()
    return watcher.seen[0]


def focus_on(widget: tk.Misc, root: tk.Misc) -> None:
    """Click into an entry and wait until it has the keyboard (the window manager gave the window focus)."""
    click(widget)
    pump_until(root, lambda: widget.focus_get() == widget, 10, f"keyboard focus in {widget}")


def type_into(entry: ttk.Entry, text: str, root: tk.Misc, *, replace: bool = True) -> None:
    """Click into ``entry``, select what is there (End, Shift+Home) if ``replace``, and type ``text``."""
    focus_on(entry, root)
    if replace and entry.get():
        xdo("key", "--clearmodifiers", "End", "shift+Home", "BackSpace")
        pump_until(root, lambda: entry.get() == "", 10, f"{entry} to be emptied")
    xdo("type", "--delay", "8", "--", text)
    pump_until(root, lambda: entry.get().endswith(text), 10, f"{text!r} typed into {entry}")


def keys(*combos: str) -> None:
    """Press key combinations on whatever has the focus, e.g. ``keys("Return")``, ``keys("ctrl+Return")``."""
    xdo("key", "--clearmodifiers", *combos)


def active_window(top: tk.Misc, root: tk.Misc) -> str:
    """The X id of ``top``'s client window, once the window manager has made it the active one."""
    wanted = top.winfo_toplevel().title()

    def active() -> str | None:
        try:  # the active window may be one that just went away
            wid = xdo("getactivewindow").strip()
            return wid if wid and xdo("getwindowname", wid).strip() == wanted else None
        except AssertionError:
            return None

    if not active():  # click the window's top-left corner (whatever widget is there), as a person would
        window = top.winfo_toplevel()
        window.update_idletasks()
        x, y = window.winfo_rootx() + 4, window.winfo_rooty() + 4
        corner = window.winfo_containing(x, y) or window
        click(corner, at=(x - corner.winfo_rootx(), y - corner.winfo_rooty()))
    return str(pump_until(root, active, 10, f"{wanted!r} to be the active window"))


def resize(top: tk.Misc, root: tk.Misc, width: int, height: int) -> None:
    """Ask the window manager for a size (as dragging a corner does); it applies the minimum size."""
    wid = active_window(top, root)
    xdo("windowsize", wid, str(width), str(height))
    pump_until(root, lambda: _settled(top), 10, "the window to take its new size")


def _settled(top: tk.Misc) -> bool:
    before = (top.winfo_width(), top.winfo_height())
    top.update()
    time.sleep(0.1)  # the observation window of "settled" (same size 0.1 s apart); pump_until is the wait
    top.update()
    return (top.winfo_width(), top.winfo_height()) == before


def close_by_wm(top: tk.Misc, root: tk.Misc) -> None:
    """Click the close button of the window manager's title bar (top right corner of the frame)."""
    frame = top.winfo_toplevel().wm_frame()
    geometry = dict(line.split("=", 1) for line in xdo("getwindowgeometry", "--shell", frame).split())
    x, y, width = int(geometry["X"]), int(geometry["Y"]), int(geometry["WIDTH"])
    title_height = top.winfo_rooty() - y
    assert title_height > 8, "the window has no title bar: is the window manager running?"
    move_pointer(x + width - 11, y + title_height // 2)
    xdo("click", "1")


# -- screenshots --------------------------------------------------------------------------


def capture(window: tk.Misc, path: Path) -> Path:
    """The window as on screen, title bar included (ImageMagick ``import`` of the frame)."""
    window.update()
    frame = window.winfo_toplevel().wm_frame()
    subprocess.run(["import", "-window", frame, str(path)], check=True, timeout=20,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return path


def can_compare(root: tk.Misc) -> str:
    """Why screenshots cannot be compared on this machine ("" when they can)."""
    from tkinter import font

    if not (shutil.which("import") and shutil.which("compare")):
        return "ImageMagick is not installed (.ci/run installs it)"
    if not HAVE_WM:
        return "openbox is not installed (.ci/run installs it): no title bars to compare"
    if TEST_FONT not in font.families(root):
        return f"the {TEST_FONT} font is missing (.ci/run installs fonts-dejavu-core)"
    return ""


def matches_reference(window: tk.Misc, name: str, tmp_path: Path) -> None:
    """Compare the window with ``tests/gui/screenshots/<name>`` (or refresh it, see the module doc)."""
    shot = capture(window, tmp_path / name)
    reference = REFERENCE_DIR / name
    if os.environ.get("CHINWAG_UPDATE_SCREENSHOTS") == "1":
        REFERENCE_DIR.mkdir(exist_ok=True)
        subprocess.run(["convert", str(shot), "-strip", "-define", "png:compression-level=9", str(reference)],
                       check=True, timeout=30)
        return
    assert reference.exists(), f"no reference {reference}: create it with CHINWAG_UPDATE_SCREENSHOTS=1"
    diff = tmp_path / f"diff-{name}"
    result = subprocess.run(["compare", "-metric", "AE", "-fuzz", FUZZ, str(reference), str(shot), str(diff)],
                            capture_output=True, text=True, timeout=60)
    try:
        different = float(result.stderr.split()[0])
    except (IndexError, ValueError):
        raise AssertionError(f"cannot compare {name} with its reference: {result.stderr.strip()} "
                             f"(screenshot: {shot})") from None
    size = subprocess.run(["identify", "-format", "%w %h", str(shot)], capture_output=True, text=True,
                          timeout=20, check=True).stdout.split()
    total = int(size[0]) * int(size[1])
    assert different <= MAX_DIFFERENT * total, (
        f"{name}: {different:.0f} of {total} pixels differ from the reference (more than {MAX_DIFFERENT:.0%}); "
        f"see {shot} and {diff}. If the design changed on purpose: CHINWAG_UPDATE_SCREENSHOTS=1 "
        "python -m pytest tests/gui -k screenshot")


# -- geometry -----------------------------------------------------------------------------


def widgets_outside(top: tk.Misc, kinds: tuple[type[tk.Misc], ...] = (ttk.Button, ttk.Entry, ttk.Checkbutton,
                                                                    ttk.Label)) -> list[str]:
    """Controls of ``top`` a user at this window size could not see or use: placed by a geometry
    manager but not wholly inside the window, squeezed below their natural width, or unmapped for
    lack of room (pack and grid unmap what gets no space).  Empty when everything fits."""
    top.update_idletasks()
    x0, y0 = top.winfo_rootx(), top.winfo_rooty()
    x1, y1 = x0 + top.winfo_width(), y0 + top.winfo_height()
    bad: list[str] = []
    stack: list[tk.Misc] = [top]
    while stack:
        widget = stack.pop()
        if isinstance(widget, tk.Toplevel) and widget is not top:
            continue  # another window (a dialog)
        stack.extend(widget.winfo_children())
        if not isinstance(widget, tuple(kinds)) or not widget.winfo_manager():
            continue  # not a control, or deliberately not shown
        if isinstance(widget.master, tk.Text):
            continue  # Save buttons inside a conversation scroll with it
        master = widget.master
        if not widget.winfo_ismapped():
            if master is not None and master.winfo_ismapped():
                bad.append(f"{widget} ({_label(widget)}) has no room and is not shown")
            continue
        wx, wy = widget.winfo_rootx(), widget.winfo_rooty()
        ww, wh = widget.winfo_width(), widget.winfo_height()
        inside = x0 <= wx and y0 <= wy and wx + ww <= x1 and wy + wh <= y1
        squeezed = ww < widget.winfo_reqwidth() - 2 or wh < widget.winfo_reqheight() - 2
        if not inside or squeezed:
            bad.append(f"{widget} ({_label(widget)}) at {wx - x0},{wy - y0} size {ww}x{wh} of "
                       f"{widget.winfo_reqwidth()}x{widget.winfo_reqheight()} (window {x1 - x0}x{y1 - y0})")
    return bad


def _label(widget: tk.Misc) -> str:
    try:
        return str(widget.cget("text")) or str(widget.cget("textvariable")) or type(widget).__name__
    except tk.TclError:
        return type(widget).__name__
