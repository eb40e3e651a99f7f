"""``run_mainloop``: Ctrl-C ends the Tk loop even when it lands inside a Tk callback.

tkinter's callback wrapper catches KeyboardInterrupt and only reports it, so a
SIGINT that arrives while the bridge's 25 ms poll is running used to leave
chinwag-tk running (a CI run caught it: the program ignored Ctrl-C for 15 s).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import tkinter as tk

import pytest

from client.gui import run_mainloop


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_raised_inside_a_tk_callback_ends_the_loop(tk_root: tk.Tk, sig: signal.Signals) -> None:
    ran: list[str] = []
    timed_out: list[bool] = []

    def callback_that_is_interrupted() -> None:
        ran.append("callback")
        os.kill(os.getpid(), sig)  # delivered while Python runs this callback
        for _ in range(1000):  # keep executing bytecode so the handler runs in here
            ran.append("")
        ran.append("callback finished")

    def guard() -> None:
        timed_out.append(True)
        tk_root.quit()

    previous = signal.getsignal(sig)
    tk_root.after(10, callback_that_is_interrupted)
    guard_id = tk_root.after(5000, guard)
    started = time.monotonic()
    run_mainloop(tk_root)
    tk_root.after_cancel(guard_id)
    assert not timed_out, "the signal did not end the Tk loop"
    assert "callback finished" in ran  # the callback was not torn apart by an exception
    assert time.monotonic() - started < 4
    assert signal.getsignal(sig) is previous  # handlers are put back afterwards


def test_a_signal_while_tk_waits_idle_ends_the_loop(tk_root: tk.Tk) -> None:
    """No other timers at all: the loop still wakes up to notice the signal."""
    timed_out: list[bool] = []

    def guard() -> None:
        timed_out.append(True)
        tk_root.quit()

    # Sent from another thread once Tk is blocked waiting for events.
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    guard_id = tk_root.after(5000, guard)
    timer.start()
    try:
        run_mainloop(tk_root)
    finally:
        timer.cancel()
        timer.join(5)
    tk_root.after_cancel(guard_id)
    assert not timed_out, "the signal did not end the Tk loop"
