"""The direction a metric key implies: lower is better for a loss, an error, a cost..."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ._model import Direction

__all__ = ["MINIMIZE_WORDS", "infer_direction"]

# A metric whose key holds one of these words (as a dot-, dash- or underscore-separated part)
# is better when lower. Contexta 1.0.0 always prefers the higher value, wrong for a loss.
MINIMIZE_WORDS: Final = frozenset(
    {
        "loss",
        "losses",
        "error",
        "errors",
        "err",
        "latency",
        "cost",
        "costs",
        "token",
        "tokens",
        "time",
        "duration",
        "perplexity",
        "mse",
        "mae",
        "rmse",
        "wer",
        "cer",
        "attempts",
        "retries",
        "failed",
        "failures",
        "timeouts",
    }
)


def infer_direction(key: str) -> Direction:
    """``"minimize"`` when a part of ``key`` names a cost (loss, error, latency, cost, tokens,
    time, duration...), else ``"maximize"``."""
    parts = re.split(r"[.\-_]", key.lower())
    return "minimize" if any(part in MINIMIZE_WORDS for part in parts) else "maximize"
