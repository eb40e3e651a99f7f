"""The one doorway between Tk and asyncio: a loop thread and a queue polled with ``after()``.

Tk is single-threaded and not thread-safe, and every network call in Chinwag
is a coroutine.  So the GUI programs (``chinwag-tk``, ``chinwag-admin``) keep
the two strictly apart:

* network I/O runs on an asyncio loop in a background thread that this class
  owns; the Tk thread hands it coroutines with :meth:`Bridge.submit`, which
  returns at once (it never waits for the coroutine);
* the loop thread never touches a widget: it hands the Tk thread plain
  callables with :meth:`Bridge.post`, which go into a :class:`queue.Queue`
  that the Tk thread drains from an ``after()`` timer.

A coroutine's outcome comes back the same way: ``submit(coro, done)`` runs
``done(future)`` in the Tk thread once the coroutine has finished, so
callbacks can update widgets freely.

Nothing escapes: exceptions raised by posted callables, by ``done``
callbacks, or left in loop tasks are logged, never propagated into Tk's or
asyncio's machinery.  :meth:`Bridge.shutdown` cancels every task, stops the
loop and lets the thread end by itself, so closing a window never blocks;
:meth:`Bridge.join` waits for the thread (bounded) after the Tk loop is over.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import tkinter as tk
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("chinwag.bridge")

T = TypeVar("T")
Done = Callable[["concurrent.futures.Future[T]"], None]

POLL_MS = 25  # how often the Tk thread drains the queue: fast enough to feel instant
MAX_PER_POLL = 500  # bound one tick's work so a flood of events cannot freeze the window


class Bridge:
    """An asyncio loop in a daemon thread, talking to one Tk widget tree through a queue."""

    def __init__(self, widget: tk.Misc, *, name: str = "chinwag-io", poll_ms: int = POLL_MS) -> None:
        self._widget = widget
        self._poll_ms = poll_ms
        self._queue: queue.Queue[Callable[[], None]] = queue.Queue()
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(_log_loop_exception)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._after_id: str | None = None
        self._stopping = False

    # -- lifecycle (Tk thread) ------------------------------------------------

    def start(self) -> None:
        """Start the loop thread and the ``after()`` poller."""
        self._thread.start()
        self._schedule()

    def shutdown(self) -> None:
        """Cancel every task and stop the loop; returns at once (the thread finishes alone)."""
        if self._stopping:
            return
        self._stopping = True
        if self._after_id is not None:
            try:
                self._widget.after_cancel(self._after_id)
            except tk.TclError:
                pass  # the widget is already destroyed: its timers went with it
            self._after_id = None
        if not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self.loop.stop)
            except RuntimeError:
                pass  # the loop closed between the check and the call

    def join(self, timeout: float = 5.0) -> bool:
        """Wait (bounded) for the loop thread to end; True if it did.  Not for the Tk thread's
        event handlers: call it after ``mainloop()`` returns, or from tests."""
        self.shutdown()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    # -- Tk thread -> loop ----------------------------------------------------

    def submit(self, coro: Coroutine[Any, Any, T], done: Done[T] | None = None) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop; ``done(future)`` later runs in the Tk thread."""
        if self._stopping or self.loop.is_closed():
            coro.close()
            fut: concurrent.futures.Future[T] = concurrent.futures.Future()
            fut.set_exception(RuntimeError("the network thread has stopped"))
            return fut
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)

        def finished(f: concurrent.futures.Future[T]) -> None:
            if done is not None:
                self.post(lambda: done(f))
            elif not f.cancelled() and f.exception() is not None:
                log.error("background task failed", exc_info=f.exception())

        fut.add_done_callback(finished)
        return fut

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run a plain callable on the loop (e.g. ``event.set``); ignored once stopped."""
        if self._stopping or self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(fn)
        except RuntimeError:
            pass  # the loop closed meanwhile: nothing is left to signal

    # -- loop -> Tk thread ----------------------------------------------------

    def post(self, fn: Callable[[], None]) -> None:
        """Queue ``fn`` to run in the Tk thread (safe from any thread)."""
        self._queue.put(fn)

    def drain(self) -> int:
        """Run what is queued now (the poller calls this; tests may too); returns how many ran."""
        ran = 0
        while ran < MAX_PER_POLL and not self._stopping:
            try:
                fn = self._queue.get_nowait()
            except queue.Empty:
                break
            ran += 1
            try:
                fn()
            except Exception:
                log.exception("UI callback failed")
        return ran

    # -- internals --------------------------------------------------------------

    def _schedule(self) -> None:
        if self._stopping:
            return
        try:
            self._after_id = self._widget.after(self._poll_ms, self._poll)
        except tk.TclError:  # the window is gone: nothing left to update
            self._after_id = None

    def _poll(self) -> None:
        self._after_id = None
        self.drain()
        self._schedule()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                tasks = asyncio.all_tasks(self.loop)
                for task in tasks:
                    task.cancel()
                if tasks:
                    self.loop.run_until_complete(
                        asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
                    )
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.run_until_complete(self.loop.shutdown_default_executor())
            except Exception:
                log.exception("network thread cleanup failed")
            finally:
                self.loop.close()


def _log_loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Exceptions nobody awaited end up here: log them instead of printing to stderr."""
    exc = context.get("exception")
    log.error("unhandled error in network thread: %s", context.get("message", ""), exc_info=exc)
