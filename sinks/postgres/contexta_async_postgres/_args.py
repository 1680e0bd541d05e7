"""Argument checks of the public shipper classes: a bad value fails at the call with a
ValidationError naming the argument, never later in a helper's restart loop or at a retry."""

from __future__ import annotations

import math
import os
import threading
from typing import Final

from contexta_async import ValidationError

__all__ = [
    "MAX_BACKOFF",
    "MIN_BACKOFF",
    "check_count",
    "check_poll_interval",
    "check_seconds",
    "check_url",
    "check_workspace",
]

MIN_BACKOFF: Final = 0.01
"""The shortest backoff, in seconds: a retry loop never spins (0 would reconnect in a tight
loop, doubling 0 stays 0)."""
MAX_BACKOFF: Final = 3600.0
"""The longest backoff, in seconds (the capture writer's ``retry_backoff`` has the same)."""


def check_count(field: str, value: object, minimum: int) -> int:
    """``value``, an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, f"must be an integer of at least {minimum}", value)
    if value < minimum:
        raise ValidationError(field, f"must be at least {minimum}", value)
    return value


def check_seconds(field: str, value: object, minimum: float, maximum: float) -> float:
    """``value`` as a float: a number (not a bool) from ``minimum`` to ``maximum``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or math.isnan(value)
        or not minimum <= value <= maximum
    ):
        raise ValidationError(
            field, f"must be a number of seconds from {minimum:g} to {maximum:g}", value
        )
    return float(value)


def check_poll_interval(value: object) -> float:
    """``value`` as a float: positive, and a wait the platform can make (not ``inf``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0 < value <= threading.TIMEOUT_MAX
    ):
        raise ValidationError("poll_interval", "must be positive and finite", value)
    return float(value)


def check_url(value: object) -> str:
    """``value``, a str (the URL itself is parsed by ``parse_target``). Never shown: it may
    hold a password."""
    if not isinstance(value, str):
        raise ValidationError("to", "must be a postgresql:// URL string", type(value).__name__)
    return value


def check_workspace(value: object) -> None:
    if not isinstance(value, str | os.PathLike):
        raise ValidationError("workspace", "must be a path (str or os.PathLike)", value)
