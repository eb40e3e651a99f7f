"""Running a coroutine as a program: uvloop when installed, clean exit on Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Collection, Coroutine
from typing import Any

from .config import Settings
from .layout import LAYOUT_EXIT, OldLayout
from .logs import setup_logging


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, None]) -> None:
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(main)
    except KeyboardInterrupt:
        pass


async def cancel_and_wait(tasks: Collection[asyncio.Task[Any]], rounds: int = 20) -> None:
    """Cancel tasks and wait until they really end.

    A library that catches ``CancelledError`` deep inside a call (redis-py has
    done so) leaves a task running after one ``cancel()``; this cancels again
    until each is done, and reports any that would not stop.
    """
    pending = {t for t in tasks if not t.done()}
    for _ in range(rounds):
        if not pending:
            return
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=0.25)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                logging.getLogger("chinwag").error("task %s failed while stopping", task.get_name(),
                                                   exc_info=task.exception())
    for task in pending:
        logging.getLogger("chinwag").error("task %s ignored cancellation; abandoning it", task.get_name())


def end_if_cancelled() -> None:
    """Raise the ``CancelledError`` a library swallowed; call it at the top of every loop turn.

    On Python 3.11 ``asyncio.wait_for`` -- redis-py wraps every socket write in
    one when ``socket_timeout`` is set -- returns the inner result instead of
    raising when the cancel lands in the loop iteration the inner call completes
    in.  The task's ``cancelling()`` count stays up then (``asyncio.timeout`` and
    task groups answer their own cancels with ``uncancel()``; this one is never
    answered), so a loop that checks it ends at its next turn instead of running
    on after ``cancel()``.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def run_service(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run a server program until SIGTERM or SIGINT sets its stop event.

    A failure to start that the OS reports (a port in use, an address not
    available) ends the program with one clear log line and exit status 1; a
    Redis still in the previous release's key layout (common/layout.py), with
    one telling the operator to run chinwag-migrate and exit status 2.
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    try:
        run(main())
    except OldLayout as exc:
        logging.getLogger("chinwag").error("cannot start: %s", exc)
        raise SystemExit(LAYOUT_EXIT) from None
    except OSError as exc:
        logging.getLogger("chinwag").error("cannot start: %s", exc)
        raise SystemExit(1) from None


def service_main(role: str, argv: list[str] | None, description: str,
                 serve: Callable[[Settings, asyncio.Event], Awaitable[None]]) -> None:
    """``main()`` of a service that joins a cluster's Redis (``chinwag-gateway``,
    ``chinwag-presence``): settings from flags and env, logging, then ``serve`` until a signal."""
    prog = f"chinwag-{role}"
    settings = Settings.from_args(role, argv, prog=prog, description=description)
    setup_logging(settings.log_level, settings.log_json)
    if not settings.redis_url:
        raise SystemExit(f"{prog} needs --redis-url (or REDIS_URL)")
    run_service(lambda stop: serve(settings, stop))


def retrieve(fut: asyncio.Future[Any]) -> None:
    """Done-callback marking a future's exception as seen, so asyncio does not log it.

    For futures whose failure is expected and already handled by whoever awaited them
    (a waiter on a connection that went, a pong that never came).
    """
    if not fut.cancelled():
        fut.exception()
