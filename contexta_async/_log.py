"""The library's own logging, on the writer thread: best effort, never an exception.

structlog's default logger prints to stdout, and ``python eval.py | head`` closes that pipe:
every print then raises BrokenPipeError. A log call that raises in the writer (inside the
handler of a failed write, say) would stop delivery for good; logging is best effort, delivery
is not, so a failing log call is dropped here.
"""

from __future__ import annotations

from typing import Literal

import structlog

__all__ = ["log"]

logger = structlog.get_logger("contexta_async")


def log(level: Literal["warning", "error"], event: str, **fields: object) -> None:
    """Log ``event`` on the "contexta_async" logger; swallow whatever the logging raises."""
    try:
        getattr(logger, level)(event, **fields)
    except Exception:  # nowhere left to report it: the log is what failed
        pass
