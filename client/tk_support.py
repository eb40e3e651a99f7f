"""What both Tk programs (``chinwag-tk`` and ``chinwag-admin``) need the same way.

Kept apart from the windows so that each helper has one definition: the two copies
that used to live in ``client/gui.py`` and ``chinwag/admin.py`` had already drifted.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("chinwag.tk")


def reason(exc: BaseException | None) -> str:
    """One line a person can read for an error shown in a window (never a traceback)."""
    if exc is None:
        return "Unknown error"
    if isinstance(exc, TimeoutError):
        return "The server did not answer in time."
    if isinstance(exc, ConnectionRefusedError):
        return "The connection was refused (nothing is listening on that port)."
    text = str(exc).strip()
    return text[:1].upper() + text[1:] if text else type(exc).__name__


def report_callback_exception(exc: type[BaseException], value: BaseException, tb: Any) -> None:
    """``Tk.report_callback_exception``: callback errors go to the log, never to a
    traceback dialog or a dead window."""
    log.error("error in a Tk callback", exc_info=(exc, value, tb))
