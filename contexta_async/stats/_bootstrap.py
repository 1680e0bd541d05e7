"""Paired statistics: expanded percentile bootstrap of a mean difference, exact McNemar test.

The bootstrap resamples the n paired differences with replacement. A result is reproducible
for a seed whatever the order of the differences: they are sorted first. The bootstrap
distribution of the mean is obtained in one of three ways, chosen by the data, and ``method``
on the result says which:

- ``"saddlepoint"``: from ``SADDLEPOINT_MIN_PAIRS`` differences on, computed by saddlepoint
  approximation (``_saddlepoint``), unless it is lumpy. No resampling.
- ``"numpy"`` with few distinct values (0/1 metrics have at most three): each resample is
  drawn as a multinomial count vector over the distinct values, in O(distinct values).
- ``"numpy"`` otherwise: index resampling, in blocks of indices. Metrics with the same
  number of pairs share the index matrix (the same seed and n would draw the same one), and
  the blocks run on a few threads (numpy releases the GIL while it draws and gathers).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from numbers import Integral, Real
from typing import Any, Final, Literal, NamedTuple, TypeVar, get_args

import numpy as np
import numpy.typing as npt

from .._errors import ValidationError
from ._saddlepoint import centre, lattice_peak, saddlepoint_quantiles
from ._student import expanded_tail

__all__ = [
    "SADDLEPOINT_MIN_PAIRS",
    "BootstrapInterval",
    "BootstrapMethod",
    "check_finite",
    "check_options",
    "mcnemar_exact",
    "paired_bootstrap_ci",
    "paired_bootstrap_cis",
    "safe_exponent",
]

T = TypeVar("T")
Floats = npt.NDArray[np.float64]

_EXACT_LIMIT: Final = 4000
# Index resampling: index cells drawn per block (2 MiB of indices: they stay in cache while
# gathered).
_MAX_CELLS: Final = 1 << 18
_MAX_GROUP_CELLS: Final = 1 << 20  # multinomial resampling: count cells per block
# A multinomial draw costs one binomial per distinct value, index resampling one draw per
# difference: counts are drawn when there are at most n / _GROUP_RATIO distinct values.
_GROUP_RATIO: Final = 32
#: ``method="auto"``: from this many differences on, the bootstrap distribution is computed by
#: saddlepoint approximation (where resampling would cost 2000 x 10,000 draws or more).
SADDLEPOINT_MIN_PAIRS: Final = 10_000
# ... unless one difference carries more than this share of the squared deviations: its count
# in a resample splits the distribution into lumps the approximation smooths over.
_SADDLEPOINT_MAX_SHARE: Final = 0.5
# ... or a few differences stand apart on a lattice coarse enough to make lumps (a few equal
# timeouts, a few 0/1 changes among many ties): the peak is then near 1, and far below this
# for smooth data (docs/performance.md, "Readers").
_SADDLEPOINT_MAX_LATTICE_PEAK: Final = 0.01
# safe_exponent: values whose largest magnitude has a binary exponent in this range are used
# as they are (a sum of n of them, or of their squares, stays far inside the float range).
_LOWEST_EXPONENT: Final = -250
_HIGHEST_EXPONENT: Final = 500

BootstrapMethod = Literal["auto", "resample", "saddlepoint"]


class BootstrapInterval(NamedTuple):
    """An expanded percentile bootstrap interval for the mean; ``method`` names how it was
    drawn."""

    low: float
    high: float
    method: str


def mcnemar_exact(b: int, c: int) -> float:
    """Exact McNemar p-value: the two-sided binomial test of ``min(b, c)`` in ``b + c`` trials
    with p = 1/2, where b and c count the discordant pairs (1→0 and 0→1).

    Equals ``scipy.stats.binomtest(min(b, c), b + c, 0.5).pvalue``; 1.0 when there are no
    discordant pairs.
    """
    for value in (b, c):
        if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
            raise ValidationError("b, c", "discordant counts must be non-negative integers", (b, c))
    n = b + c
    k = min(b, c)
    if n == 0 or 2 * k == n:
        return 1.0
    if n <= _EXACT_LIMIT:
        exact_term = 1
        exact_total = 1
        for i in range(k):
            exact_term = exact_term * (n - i) // (i + 1)
            exact_total += exact_term
        return min(1.0, 2 * exact_total / (1 << n))
    # Large n: sum the binomial terms downward from k in floating point; they shrink fast.
    log_term = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)
    term = math.exp(log_term)
    total = term
    i = k
    while i > 0 and term > total * 1e-17:
        term *= i / (n - i + 1)
        total += term
        i -= 1
    return min(1.0, 2 * total)


def safe_exponent(values: Floats) -> int:
    """The power of two to divide finite ``values`` by before summing them or their squares.

    0 for values of ordinary size: they are used as they are. Values so large that a sum of
    all of them (or of their squares) could leave the float range, though no mean of them
    does, or so small that their squares fall into the subnormals: the exponent that brings
    the largest magnitude into [0.5, 1). Dividing by a power of two is exact, so a statistic
    of the scaled values scales back exactly (``math.ldexp(statistic, exponent)``).
    """
    if not len(values):
        return 0
    biggest = float(np.max(np.abs(values)))
    if biggest == 0.0 or not math.isfinite(biggest):
        return 0
    exponent = math.frexp(biggest)[1]
    if _LOWEST_EXPONENT <= exponent <= _HIGHEST_EXPONENT - len(values).bit_length():
        return 0
    return exponent


def check_finite(diffs: Sequence[float] | Floats) -> None:
    """Raise ValidationError unless every difference is a finite number."""
    values = np.asarray(diffs, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        raise ValidationError("diffs", "must all be finite numbers", float(values[~finite][0]))


def check_options(
    confidence: float, resamples: int, seed: int, method: str, *, method_field: str = "method"
) -> None:
    """Raise ValidationError naming the field for an interval level, resample count, seed or
    method of the wrong type or out of range (numpy scalars are numbers; bools are not)."""
    if isinstance(confidence, bool) or not isinstance(confidence, Real):
        raise ValidationError("confidence", "must be a number between 0 and 1", confidence)
    if not 0.0 < confidence < 1.0:  # NaN fails this too
        raise ValidationError("confidence", "must be between 0 and 1", confidence)
    for name, value, least in (("resamples", resamples, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise ValidationError(name, "must be an integer", value)
        if value < least:
            rule = "must be at least 1" if least else "must be a non-negative integer"
            raise ValidationError(name, rule, value)
    if not isinstance(method, str) or method not in get_args(BootstrapMethod):
        raise ValidationError(method_field, "must be 'auto', 'resample' or 'saddlepoint'", method)


class _Job:
    """The differences of one interval: scaled by a power of two if need be, sorted, and
    their distinct values."""

    __slots__ = ("counts", "distinct", "exponent", "values")

    def __init__(self, diffs: Sequence[float] | Floats) -> None:
        values = np.asarray(diffs, dtype=np.float64)
        if not len(values):
            raise ValidationError("diffs", "no differences to resample", [])
        check_finite(values)
        self.exponent = safe_exponent(values)
        if self.exponent:
            values = np.ldexp(values, -self.exponent)
        # Sorted: what every way of resampling starts from, so that a seed gives the same
        # interval whatever order the pairs came in.
        self.values: Floats = np.sort(values)
        starts = np.flatnonzero(np.diff(self.values)) + 1  # where a new distinct value begins
        self.distinct = len(starts) + 1
        self.counts = np.diff(starts, prepend=0, append=len(self.values))

    def interval(self, low: float, high: float, method: str) -> BootstrapInterval:
        """The interval in the caller's units."""
        e = self.exponent
        return BootstrapInterval(math.ldexp(low, e), math.ldexp(high, e), method)

    def constant(self) -> BootstrapInterval | None:
        if self.distinct > 1:
            return None
        value = float(self.values[0])
        return self.interval(value, value, "constant")

    def approximated(self, method: str, confidence: float) -> BootstrapInterval | None:
        """The interval by saddlepoint approximation when ``method`` asks for it and it
        applies (for ``"auto"``: enough differences, and not lumpy) and settles; else None,
        and the differences are resampled."""
        if method == "resample" or self.distinct == 1:
            return None
        if method == "auto" and len(self.values) < SADDLEPOINT_MIN_PAIRS:
            return None
        centred = centre(self.values)
        if centred is None:
            return None
        if method == "auto" and (
            centred.largest_share > _SADDLEPOINT_MAX_SHARE
            or lattice_peak(centred) > _SADDLEPOINT_MAX_LATTICE_PEAK
        ):
            return None
        tail = expanded_tail(confidence, len(self.values))
        quantiles = saddlepoint_quantiles(centred, (tail, 1.0 - tail))
        if quantiles is None:
            return None
        return self.interval(quantiles[0], quantiles[1], "saddlepoint")

    def grouped(self) -> bool:
        """Whether multinomial draws are cheaper than index draws (few distinct values)."""
        return self.distinct * _GROUP_RATIO <= len(self.values)

    def multinomial_means(self, resamples: int, seed: int) -> Floats:
        """Bootstrap means drawn as count vectors over the distinct values."""
        rng = np.random.default_rng(seed)
        n = len(self.values)
        distinct = self.values[np.cumsum(self.counts) - self.counts]
        probs = self.counts.astype(np.float64) / n
        rows = max(1, _MAX_GROUP_CELLS // self.distinct)
        means = np.empty(resamples)
        for start in range(0, resamples, rows):
            size = min(rows, resamples - start)
            means[start : start + size] = rng.multinomial(n, probs, size=size) @ distinct / n
        return means


def _percentile_interval(
    job: _Job, means: Floats, confidence: float, method: str
) -> BootstrapInterval:
    tail = expanded_tail(confidence, len(job.values))
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return job.interval(float(low), float(high), method)


def paired_bootstrap_ci(
    diffs: Sequence[float],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    method: BootstrapMethod = "auto",
) -> BootstrapInterval:
    """Expanded percentile bootstrap interval for the mean of paired differences: the
    bootstrap distribution's percentiles at ``expanded_tail(confidence, n)``, which keeps the
    coverage at small n.

    ``method="resample"`` draws ``resamples`` resamples (seeded); ``"saddlepoint"`` computes
    the bootstrap distribution's percentiles by saddlepoint approximation (no resampling:
    ``resamples`` and ``seed`` do not apply) wherever the approximation settles, and
    resamples where it does not (all-equal or very lumpy differences); ``"auto"``
    approximates from ``SADDLEPOINT_MIN_PAIRS`` differences on unless the bootstrap
    distribution is lumpy, and resamples otherwise. The result's ``method`` says which:
    ``"saddlepoint"``, ``"numpy"`` (resampled) or ``"constant"`` (all differences equal).
    """
    (interval,) = paired_bootstrap_cis(
        [diffs], confidence=confidence, resamples=resamples, seed=seed, workers=1, method=method
    )
    return interval


def paired_bootstrap_cis(
    jobs: Sequence[Sequence[float] | Floats],
    *,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    workers: int | None = None,
    method: BootstrapMethod = "auto",
) -> list[BootstrapInterval]:
    """``paired_bootstrap_ci`` of each sequence of differences, each with the same ``seed``
    and ``method``: each interval is exactly the one ``paired_bootstrap_ci`` gives for it
    alone.

    Two things make this cheaper than one call per sequence. Sequences of the same length
    that are resampled by index would draw the very same index matrix (same seed, same n), so
    it is drawn once and gathered from each of them. And the work runs on up to ``workers``
    threads (default: the usable cores): the index draws come in blocks, each from its own
    generator seeded by (``seed``, block number), so they can be drawn in any order on any
    thread and still give the same numbers.
    """
    if workers is None:
        workers = _cores()
    if workers < 1:
        raise ValidationError("workers", "must be at least 1", workers)
    check_options(confidence, resamples, seed, method)
    prepared = [_Job(diffs) for diffs in jobs]
    # Constant differences and saddlepoint intervals first, on the caller's thread (a few
    # milliseconds each): the ones that do not settle are resampled with the rest.
    results: list[BootstrapInterval | None] = [
        job.constant() or job.approximated(method, confidence) for job in prepared
    ]
    by_length: dict[int, list[int]] = {}
    for i, job in enumerate(prepared):
        if results[i] is None and not job.grouped():
            by_length.setdefault(len(job.values), []).append(i)
    with _Executor(workers) as pool:
        # Index draws in blocks, many per group: submitted first, so the threads share them.
        groups = [
            (chosen, _index_means([prepared[i].values for i in chosen], resamples, seed, pool))
            for chosen in by_length.values()
        ]
        counted = [
            (i, pool.submit(job.multinomial_means, resamples, seed))
            for i, job in enumerate(prepared)
            if results[i] is None and job.grouped()
        ]
        for chosen, collect in groups:
            for i, means in zip(chosen, collect(), strict=True):
                results[i] = _percentile_interval(prepared[i], means, confidence, "numpy")
        for i, future in counted:
            results[i] = _percentile_interval(prepared[i], future.result(), confidence, "numpy")
    done = [r for r in results if r is not None]
    assert len(done) == len(jobs)
    return done


class _Executor:
    """A thread pool, or, for one worker, the caller's thread (no thread at all)."""

    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers) if workers > 1 else None

    def __enter__(self) -> _Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        if self._pool is not None:
            return self._pool.submit(fn, *args)
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # handed to the caller by future.result()
            future.set_exception(exc)
        return future


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _index_means(
    columns: Sequence[Floats], resamples: int, seed: int, pool: _Executor
) -> Callable[[], list[Floats]]:
    """Bootstrap means of each column (all of length n) by index resampling, the same index
    matrix for every column: what each would draw alone with this seed.

    The resamples are drawn in blocks of about ``_MAX_CELLS`` indices; block ``b`` draws from
    its own generator, seeded by (``seed``, ``b``), so the blocks are submitted to ``pool``
    at once and the result does not depend on the thread that drew them. Returns a function
    that waits for the blocks and puts the means together.
    """
    n = len(columns[0])
    rows = max(1, _MAX_CELLS // n)
    starts = range(0, resamples, rows)
    seeds = np.random.SeedSequence(seed).spawn(len(starts))

    def block(number: int) -> list[Floats]:
        size = min(rows, resamples - starts[number])
        rng = np.random.default_rng(seeds[number])
        # intp indices: int32 ones are drawn a little faster but converted before gathering.
        index = rng.integers(0, n, size=(size, n), dtype=np.intp)
        return [column[index].mean(axis=1) for column in columns]

    futures = [pool.submit(block, number) for number in range(len(starts))]

    def collect() -> list[Floats]:
        blocks = [future.result() for future in futures]
        return [np.concatenate([means[c] for means in blocks]) for c in range(len(columns))]

    return collect
