"""UTC timestamps in Contexta's format, always with six fractional digits.

Contexta 1.0.0 drops the fraction when the microsecond is 0 and then compares timestamps as
strings; writing a fixed-width form keeps string order equal to time order.
"""

from __future__ import annotations

import time

__all__ = ["format_timestamp", "now"]

# (second, formatted prefix) in one tuple so that a reader on another thread never sees a
# prefix paired with the wrong second.
_cache: tuple[int, str] = (-1, "")


def format_timestamp(ns: int) -> str:
    """Format nanoseconds since the epoch as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``."""
    global _cache
    micros = ns // 1000
    second = micros // 1_000_000
    cached_second, prefix = _cache
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _cache = (second, prefix)
    return "%s.%06dZ" % (prefix, micros - second * 1_000_000)  # noqa: UP031 - fastest here


def now() -> str:
    """The current UTC time, formatted."""
    return format_timestamp(time.time_ns())
