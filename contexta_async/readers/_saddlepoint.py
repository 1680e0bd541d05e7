"""The bootstrap distribution of a mean, by saddlepoint approximation instead of resampling.

A bootstrap resample draws n of the n differences with replacement (multinomial counts), so
the cumulant generating function of the resample mean T* is known exactly:
``K(ξ) = n log((1/n) Σ exp(ξ a_j / n))`` with ``a_j = d_j - mean(d)``. Lugannani and Rice's
formula turns it into the distribution function of T*, and a percentile of the bootstrap
distribution is the point where that function meets the level: no Monte Carlo error, and a
few dozen passes over the data instead of ``resamples`` of them (Davison and Hinkley,
"Saddlepoint approximations in resampling methods", Biometrika 75, 1988; *Bootstrap Methods
and their Application*, 1997, section 9.5).

The approximation treats T* as continuous. T* is lumpy when one difference carries much of the
spread (its count in a resample, about Poisson(1), splits the distribution), which
``largest_share`` measures, or when the differences sit on a coarse lattice (rare 0/1 changes),
which ``lattice_peak`` measures; a caller keeps resampling for such data.
"""

from __future__ import annotations

import cmath
import math
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import Final, NamedTuple

__all__ = ["Centred", "lattice_peak", "saddlepoint_quantiles"]

_ROOT_2PI: Final = math.sqrt(2.0 * math.pi)
_MAX_STEPS: Final = 60
# Newton stops once the distribution function is this close to its level: far below the
# ~1e-3 resolution of a 2000-resample percentile.
_LEVEL_TOLERANCE: Final = 1e-12
# lattice_peak looks for lumps at least this many standard errors apart (a 2000-resample
# percentile is itself uncertain by ~0.06 standard errors).
_LUMP_RESOLUTION: Final = 0.05


class _Tilted(NamedTuple):
    """Moments of the differences under exponential tilting by ``λ``: E[a], Var[a], log M."""

    mean: float
    variance: float
    log_mgf: float


class Centred:
    """Differences centred on their mean, with what the approximation needs of them."""

    __slots__ = ("_tilt", "largest_share", "mean", "median_level", "n", "spread")

    def __init__(self, diffs: Sequence[float], *, use_numpy: bool) -> None:
        n = len(diffs)
        if n < 2:
            raise ValueError("the saddlepoint approximation needs at least two differences")
        self.n = n
        self.mean = math.fsum(diffs) / n
        tilt = _numpy_tilt if use_numpy else _python_tilt
        tilt_at, squares, cubes, largest = tilt(diffs, self.mean)
        self._tilt = tilt_at
        #: The population standard deviation of the differences.
        self.spread = math.sqrt(squares / n)
        #: The largest share of the sum of squared deviations one difference carries.
        self.largest_share = largest / squares if squares > 0.0 else 1.0
        # P(T* <= mean), the formula's limit at λ = 0: 1/2 + skewness of T* / (6 sqrt(2π)).
        # Levels below it lie at λ < 0, above it at λ > 0.
        skewness = (cubes / n) / (squares / n) ** 1.5 if squares > 0.0 else 0.0
        self.median_level = 0.5 + skewness / math.sqrt(n) / (6.0 * _ROOT_2PI)

    def tilted(self, lam: float) -> _Tilted | None:
        """The tilted moments, or None where they overflow."""
        return self._tilt(lam)


# Both tilts write the sums with ``expm1``: ``Σ exp(λa) = n + Σ expm1(λa)``, so that near
# λ = 0 the small quantities the formula subtracts are not lost against n.
_Tilt = tuple[Callable[[float], _Tilted | None], float, float, float]  # tilt, Σa², Σa³, max a²


def _python_tilt(diffs: Sequence[float], mean: float) -> _Tilt:
    n = len(diffs)
    centred = [float(d) - mean for d in diffs]
    squared = [a * a for a in centred]
    sum_a = math.fsum(centred)
    sum_a2 = math.fsum(squared)

    def tilt(lam: float) -> _Tilted | None:
        s0 = s1 = s2 = 0.0
        try:
            for a, a2 in zip(centred, squared, strict=True):
                e = math.expm1(lam * a)
                s0 += e
                s1 += a * e
                s2 += a2 * e
        except OverflowError:
            return None
        return _moments(n, sum_a, sum_a2, s0, s1, s2)

    return (
        tilt,
        sum_a2,
        math.fsum(a * a2 for a, a2 in zip(centred, squared, strict=True)),
        max(squared),
    )


def _numpy_tilt(diffs: Sequence[float], mean: float) -> _Tilt:
    import numpy as np

    n = len(diffs)
    centred = np.asarray(diffs, dtype=np.float64) - mean
    squared = centred * centred
    sum_a = float(centred.sum())
    sum_a2 = float(squared.sum())

    def tilt(lam: float) -> _Tilted | None:
        with np.errstate(over="ignore", invalid="ignore"):
            e = np.expm1(lam * centred)
            s0 = float(e.sum())
            s1 = float(centred @ e)
            s2 = float(squared @ e)
        return _moments(n, sum_a, sum_a2, s0, s1, s2)

    return tilt, sum_a2, float(centred @ squared), float(squared.max())


def _moments(
    n: int, sum_a: float, sum_a2: float, s0: float, s1: float, s2: float
) -> _Tilted | None:
    if not (math.isfinite(s0) and math.isfinite(s1) and math.isfinite(s2)):
        return None
    total = n + s0  # Σ exp(λa)
    if total <= 0.0:
        return None
    mean = (sum_a + s1) / total
    variance = (sum_a2 + s2) / total - mean * mean
    return _Tilted(mean, variance, math.log1p(s0 / n))


def _level(centred: Centred, lam: float) -> tuple[float, float, float] | None:
    """(P(T* - mean <= t), dP/dλ, t) at the saddlepoint ``λ`` (Lugannani-Rice), or None."""
    moments = centred.tilted(lam)
    if moments is None or moments.variance <= 0.0:
        return None
    n = centred.n
    excess = lam * moments.mean - moments.log_mgf  # (ξt - K(ξ)) / n, >= 0
    w = math.copysign(math.sqrt(2.0 * n * max(excess, 0.0)), lam)
    u = lam * math.sqrt(n * moments.variance)
    if w == 0.0 or u == 0.0:
        return None
    density = math.exp(-0.5 * w * w) / _ROOT_2PI
    level = NormalDist().cdf(w) + density * (1.0 / w - 1.0 / u)
    # dt/dλ is the tilted variance; the saddlepoint density of T* times it:
    slope = density * math.sqrt(n * moments.variance)
    return level, slope, moments.mean


def _quantile(centred: Centred, probability: float) -> float | None:
    """The ``probability`` quantile of T*, by safeguarded Newton steps in λ from the normal
    approximation; None when the steps do not settle."""
    normal = NormalDist()
    # The normal approximation's λ, measured from the level at λ = 0 (not from 1/2): so the
    # start has the sign of the answer, whose sign the steps below never change.
    z = normal.inv_cdf(probability) - normal.inv_cdf(centred.median_level)
    if z == 0.0:
        return None
    lam = z / (centred.spread * math.sqrt(centred.n))
    for _ in range(_MAX_STEPS):
        found = _level(centred, lam)
        if found is None:
            return None
        level, slope, t = found
        gap = level - probability
        if abs(gap) <= _LEVEL_TOLERANCE:
            return centred.mean + t
        if slope <= 0.0:
            return None
        step = lam - gap / slope
        # λ keeps its sign (λ = 0 is the mean, where the formula has no value) and moves by
        # at most a factor of 4 a step.
        if step / lam < 0.25:
            step = lam * 0.25
        elif step / lam > 4.0:
            step = lam * 4.0
        if step == lam:
            return centred.mean + t
        lam = step
    return None


def saddlepoint_quantiles(centred: Centred, probabilities: Sequence[float]) -> list[float] | None:
    """The bootstrap distribution's quantiles of the mean at ``probabilities`` (each strictly
    between 0 and 1 and not 1/2), or None when the approximation breaks down (then resample)."""
    quantiles = []
    for probability in probabilities:
        q = _quantile(centred, probability)
        if q is None or not math.isfinite(q):
            return None
        quantiles.append(q)
    if quantiles != sorted(quantiles):
        return None
    return quantiles


def lattice_peak(
    grouped: Sequence[tuple[float, int]], centred: Centred, *, use_numpy: bool
) -> float:
    """How lumpy the bootstrap distribution of the mean is, for differences given as
    (value, count) pairs: the largest modulus of its characteristic function away from the
    origin, over frequencies that would reveal lumps spaced ``_LUMP_RESOLUTION`` standard
    errors apart or more. Smooth data give ~0 (below 1e-3); data on a lattice that coarse
    (e.g. a handful of 0/1 changes among thousands of ties) give up to 1.

    The resample sum's characteristic function is ψ(t)^n, ψ that of the differences; ψ^n
    decays like exp(-(t·se)²/2) for a smooth sum (se its standard error) and comes back to 1
    at t = 2π/δ when every difference is a multiple of δ. Checked on a grid from 4/se to
    2π/(resolution·se) in steps of 0.5/se: each peak is ~2/se wide, so none is missed.
    """
    se = centred.spread * math.sqrt(centred.n)
    if se <= 0.0:
        return 1.0
    stop = 2.0 * math.pi / _LUMP_RESOLUTION
    frequencies = [(4.0 + 0.5 * j) / se for j in range(int((stop - 4.0) / 0.5) + 1)]
    weights = [count / centred.n for _, count in grouped]
    offsets = [value - centred.mean for value, _ in grouped]
    if use_numpy:
        import numpy as np

        phases = np.outer(np.asarray(frequencies), np.asarray(offsets))
        moduli = np.abs(np.exp(1j * phases) @ np.asarray(weights))
        largest = float(moduli.max())
    else:
        largest = max(
            abs(sum(w * cmath.exp(1j * t * x) for w, x in zip(weights, offsets, strict=True)))
            for t in frequencies
        )
    return largest**centred.n if largest < 1.0 else 1.0
