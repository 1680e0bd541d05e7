"""Sums of products over one comparison's differences, without BLAS.

``a @ b`` on float64 vectors goes to the BLAS ``ddot``, which OpenBLAS spreads over its
thread pool: for a few tens of µs of work the pool's threads are woken (and spin), which on a
busy machine cost a comparison far more CPU than the products, and the partial sums they add
in an order that depends on the number of threads. numpy's own pairwise summation of the
products is as fast for these sizes, single-threaded, and gives the same bits on every
machine.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["dot"]


def dot(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    """Σ a·b (pairwise summation)."""
    return float(np.multiply(a, b).sum())
