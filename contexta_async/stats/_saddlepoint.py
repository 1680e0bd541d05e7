"""The bootstrap distribution of a mean, by saddlepoint approximation instead of resampling.

A bootstrap resample draws n of the n differences with replacement (multinomial counts), so
the cumulant generating function of the resample mean T* is known exactly:
``K(ξ) = n log((1/n) Σ exp(ξ a_j / n))`` with ``a_j = d_j - mean(d)``. Lugannani and Rice's
formula turns it into the distribution function of T*, and a percentile of the bootstrap
distribution is the point where that function meets the level: no Monte Carlo error, and a
few passes over the data instead of ``resamples`` of them (Davison and Hinkley,
"Saddlepoint approximations in resampling methods", Biometrika 75, 1988; *Bootstrap Methods
and their Application*, 1997, section 9.5).

The approximation treats T* as continuous. T* is lumpy when one difference carries much of the
spread (its count in a resample, about Poisson(1), splits the distribution), which
``largest_share`` measures, or when a few differences stand apart from the rest on a coarse
lattice (a few equal timeouts among small latencies, rare 0/1 changes among ties), which
``lattice_peak`` measures; a caller resamples such data instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from ._sums import dot

__all__ = ["Centred", "centre", "lattice_peak", "saddlepoint_quantiles"]

Floats = npt.NDArray[np.float64]

_ROOT_2PI: Final = math.sqrt(2.0 * math.pi)
_MAX_STEPS: Final = 60
# Newton stops once the distribution function is this close to its level (far below the
# ~1e-3 resolution of a 2000-resample percentile), or once λ stops moving (rounding noise).
_LEVEL_TOLERANCE: Final = 1e-12
_STEP_TOLERANCE: Final = 1e-12
_SETTLED_GAP: Final = 1e-6
# lattice_peak looks for lumps at least this many standard errors apart (a 2000-resample
# percentile is itself uncertain by ~0.06 standard errors) ...
_LUMP_RESOLUTION: Final = 0.05
# ... in a histogram of the differences with this many bins per standard error of the sum:
# at the highest frequency checked, rounding a difference to its bin moves its phase by at
# most π / (_LUMP_RESOLUTION * _BINS_PER_SE) = 0.03 rad; and as no difference is further than
# one standard error of the sum from the mean, there are at most 2 * _BINS_PER_SE + 1 bins.
_BINS_PER_SE: Final = 2000


class _Tilted(NamedTuple):
    """Moments of the scaled differences under exponential tilting by ``λ``."""

    mean: float
    variance: float
    third: float  # third central moment: d(variance)/dλ
    log_mgf: float


class Centred:
    """Differences centred on their mean and scaled to at most 1 in magnitude (so that no
    data's scale can overflow or underflow the sums), with what the approximation needs."""

    __slots__ = (
        "centred",
        "cubed",
        "largest_share",
        "mean",
        "median_level",
        "n",
        "scale",
        "spread",
        "squared",
        "sums",
    )

    def __init__(self, mean: float, scale: float, centred: Floats) -> None:
        n = len(centred)
        self.n = n
        self.mean = mean
        self.scale = scale
        #: The scaled differences minus their mean, ascending.
        self.centred = centred
        self.squared = centred * centred
        self.cubed = self.squared * centred
        self.sums = (float(centred.sum()), float(self.squared.sum()), float(self.cubed.sum()))
        squares, cubes = self.sums[1], self.sums[2]
        #: The population standard deviation of the scaled differences.
        self.spread = math.sqrt(squares / n)
        #: The largest share of the sum of squared deviations one difference carries.
        self.largest_share = float(self.squared.max()) / squares
        # P(T* <= mean), the formula's limit at λ = 0: 1/2 + skewness of T* / (6 sqrt(2π)).
        # Levels below it lie at λ < 0, above it at λ > 0.
        skewness = (cubes / n) / (squares / n) ** 1.5
        self.median_level = 0.5 + skewness / math.sqrt(n) / (6.0 * _ROOT_2PI)

    def tilted(self, lam: float) -> _Tilted | None:
        """The moments tilted by ``lam``, or None where they overflow.

        The sums are written with ``expm1``: ``Σ exp(λa) = n + Σ expm1(λa)``, so that near
        λ = 0 the small quantities the formula subtracts are not lost against n.
        """
        with np.errstate(over="ignore", invalid="ignore"):
            e = np.expm1(lam * self.centred)
            tilted = (
                float(e.sum()),
                dot(self.centred, e),
                dot(self.squared, e),
                dot(self.cubed, e),
            )
        return _moments(self.n, self.sums, tilted)


def centre(values: Floats) -> Centred | None:
    """The (finite, ascending, not near the float range) differences prepared for the
    approximation, or None when it does not apply: fewer than two, or all equal."""
    n = len(values)
    if n < 2:
        return None
    # fsum: exactly rounded, so the mean does not depend on the order of the values.
    mean = math.fsum(values.tolist()) / n
    shifted = values - mean
    scale = float(max(-shifted[0], shifted[-1]))
    if not (0.0 < scale < math.inf):
        return None
    return Centred(mean, scale, shifted / scale)


def _moments(
    n: int, sums: tuple[float, float, float], tilted: tuple[float, float, float, float]
) -> _Tilted | None:
    if not all(map(math.isfinite, tilted)):
        return None
    s0, s1, s2, s3 = tilted
    total = n + s0  # Σ exp(λa)
    if total <= 0.0:
        return None
    first = (sums[0] + s1) / total
    second = (sums[1] + s2) / total
    third = (sums[2] + s3) / total
    variance = second - first * first
    central_third = third - 3.0 * first * second + 2.0 * first**3
    return _Tilted(first, variance, central_third, math.log1p(s0 / n))


def _level(centred: Centred, lam: float) -> tuple[float, float, float] | None:
    """(P(T* - mean <= t), its derivative in λ, t) at the saddlepoint ``λ``, in scaled units
    (Lugannani-Rice), or None."""
    moments = centred.tilted(lam)
    if moments is None or moments.variance <= 0.0:
        return None
    n = centred.n
    excess = lam * moments.mean - moments.log_mgf  # (ξt - K(ξ)) / n, >= 0
    w = math.copysign(math.sqrt(2.0 * n * max(excess, 0.0)), lam)
    root = math.sqrt(n * moments.variance)
    u = lam * root
    if w == 0.0 or u == 0.0:
        return None
    density = math.exp(-0.5 * w * w) / _ROOT_2PI
    level = NormalDist().cdf(w) + density * (1.0 / w - 1.0 / u)
    # dw/dλ = nλv/w and du/dλ = sqrt(nv) + λ n κ3 / (2 sqrt(nv)), κ3 the third moment.
    dw = n * lam * moments.variance / w
    du = root + lam * n * moments.third / (2.0 * root)
    slope = density * (dw * w / u - dw / (w * w) + du / (u * u))
    return level, slope, moments.mean


def _quantile(centred: Centred, probability: float) -> float | None:
    """The ``probability`` quantile of T* - mean in scaled units, by Newton steps in λ from
    the normal approximation, kept inside the bracket found so far (bisecting when a step
    would leave it, as lumpy data can make the level's slope mislead); None when the steps do
    not settle."""
    normal = NormalDist()
    # The normal approximation's λ, measured from the level at λ = 0 (not from 1/2): so the
    # start has the sign of the answer, whose sign the steps below never change.
    z = normal.inv_cdf(probability) - normal.inv_cdf(centred.median_level)
    if z == 0.0:
        return None
    lam = z / (centred.spread * math.sqrt(centred.n))
    below = above = math.nan  # λ known to give a level below / above the probability
    for _ in range(_MAX_STEPS):
        found = _level(centred, lam)
        if found is None:
            return None
        level, slope, t = found
        gap = level - probability
        if abs(gap) <= _LEVEL_TOLERANCE:
            return t
        if gap < 0.0:
            below = lam
        else:
            above = lam
        step = lam - gap / slope if slope > 0.0 else math.nan
        # λ keeps its sign (λ = 0 is the mean, where the formula has no value) and moves by
        # at most a factor of 4 a step; inside a bracket, it stays inside.
        if not math.isnan(step):
            step = min(max(step / lam, 0.25), 4.0) * lam
        if not (math.isnan(below) or math.isnan(above)):
            if math.isnan(step) or not min(below, above) < step < max(below, above):
                step = (below + above) / 2.0
        elif math.isnan(step):
            return None
        if abs(step - lam) <= _STEP_TOLERANCE * abs(lam):
            # λ stopped moving (rounding noise near the mean): accept only a level close by.
            return t if abs(gap) <= _SETTLED_GAP else None
        lam = step
    return None


def saddlepoint_quantiles(centred: Centred, probabilities: Sequence[float]) -> list[float] | None:
    """The bootstrap distribution's quantiles of the mean at ``probabilities`` (ascending,
    each strictly between 0 and 1), or None when the approximation does not settle."""
    quantiles = []
    for probability in probabilities:
        q = _quantile(centred, probability)
        if q is None:
            return None
        quantiles.append(centred.mean + centred.scale * q)
    if not all(map(math.isfinite, quantiles)) or quantiles != sorted(quantiles):
        return None
    return quantiles


def lattice_peak(centred: Centred) -> float:
    """How lumpy the bootstrap distribution of the mean is: the largest modulus of its
    characteristic function away from the origin, over frequencies that would reveal lumps
    spaced ``_LUMP_RESOLUTION`` standard errors apart or more. Smooth data give ~0 (below
    ~0.01); lumpy data (a few equal outliers, rare 0/1 changes among ties) up to 1.

    The resample sum's characteristic function is ψ(t)^n, ψ that of the differences; ψ^n
    decays like exp(-(t·se)²/2) for a smooth sum (se its standard error) and comes back
    towards 1 at t = 2π/δ when the differences that matter sit δ apart. Checked on a grid from
    4/se to 2π/(resolution·se) in steps of 0.5/se (each peak is ~2/se wide, so none is
    missed), over a histogram of the differences (``_BINS_PER_SE`` bins per se: a few
    thousand bins whatever n).
    """
    n = centred.n
    se = centred.spread * math.sqrt(n)
    width = se / _BINS_PER_SE
    stop = 2.0 * math.pi / _LUMP_RESOLUTION
    frequencies = [(4.0 + 0.5 * j) / se for j in range(int((stop - 4.0) / 0.5) + 1)]
    bins = np.rint(centred.centred / width).astype(np.int64)
    low = int(bins[0])  # the values are sorted
    counts = np.bincount(bins - low)
    used = np.flatnonzero(counts)
    offsets = (used + low) * width
    phases = np.outer(np.asarray(frequencies), offsets)
    largest = float(np.abs(np.exp(1j * phases) @ (counts[used] / n)).max())
    return largest**n if largest < 1.0 else 1.0
