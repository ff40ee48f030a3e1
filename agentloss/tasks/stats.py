"""Paired statistics for comparing methods over seeds: the mean difference, its t-interval, a sign-flip test.

A method and a baseline run on the same seeds give one difference per seed; ``paired_interval`` turns
those into a verdict ("better", "worse", "within noise") with a 95 % Student-t interval, and
``sign_flip_p`` adds an exact permutation test that assumes no normality (one collapsed seed makes
the differences heavy-tailed). Used by the quality benchmark; plain functions over numbers.

Example:
    >>> s = paired_interval([6.60, 6.58, 6.62], [6.63, 6.62, 6.64], lower_is_better=True)
    >>> s.verdict, s.n
    ('better', 3)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PairedStats", "finite", "mean_std", "paired_interval", "sign_flip_p", "t_quantile"]


@dataclass
class PairedStats:
    """Paired difference ``method - baseline`` over seeds: mean, 95 % interval, verdict."""

    n: int
    mean: float
    lo: float
    hi: float
    verdict: str
    relative_pct: float
    diffs: list[float] = field(default_factory=list)
    p_sign_flip: float = math.nan  # two-sided, exact: robust to a heavy tail (a collapsed seed)


def sign_flip_p(diffs: Sequence[float]) -> float:
    """Two-sided p-value of the paired sign-flip (permutation) test of "mean difference = 0".

    Under the null each seed's difference is as likely to have either sign, so the observed
    |mean| is ranked among all 2^n sign patterns (exact up to n = 16, else 20000 random patterns
    with a fixed seed). Unlike the t-interval it assumes no normality, which matters when one
    seed collapsed.

    >>> round(sign_flip_p([-0.1, -0.2, -0.15, -0.05, -0.12]), 4)  # all 5 negative: 2 of 32 patterns
    0.0625
    >>> sign_flip_p([0.1, -0.1])
    1.0
    """
    d = [float(x) for x in diffs if finite(x)]
    n = len(d)
    if n == 0:
        return math.nan
    observed = abs(sum(d)) - 1e-12  # tolerance: ties count as at least as extreme
    if n <= 16:
        patterns = (((m >> i) & 1 for i in range(n)) for m in range(2 ** n))
        hits = sum(abs(sum(x if bit else -x for x, bit in zip(d, signs))) >= observed for signs in patterns)
        return hits / 2 ** n
    import random

    rng = random.Random(0)
    draws = 20000
    hits = sum(abs(sum(x if rng.random() < 0.5 else -x for x in d)) >= observed for _ in range(draws))
    return (hits + 1) / (draws + 1)


# Two-sided 95 % Student-t quantiles by degrees of freedom, used only when scipy is absent.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: int, confidence: float = 0.95) -> float:
    """The two-sided Student-t quantile (scipy if installed, else a table for 95 %).

    >>> round(t_quantile(4), 3)
    2.776
    """
    try:
        from scipy.stats import t

        return float(t.ppf(0.5 + confidence / 2, df))
    except ImportError:
        if abs(confidence - 0.95) > 1e-9:
            raise ValueError("without scipy only the 95 % interval is available") from None
        return _T975[df - 1] if df <= len(_T975) else 2.0 if df <= 60 else 1.96


def paired_interval(values: Sequence[float], baseline: Sequence[float], lower_is_better: bool,
                    confidence: float = 0.95) -> PairedStats:
    """Compare a method with a baseline run on the same seeds: mean difference, t-interval, verdict.

    Pairs where either value is missing (None or NaN) are dropped. The verdict is "better" or
    "worse" (in the metric's direction) when the interval excludes 0, "within noise" otherwise,
    and "n/a" with fewer than two pairs. ``relative_pct`` is the mean difference in percent of the
    baseline's mean over the same pairs.

    >>> s = paired_interval([3.0, 3.1, 2.9, 3.0, 3.05], [3.5, 3.6, 3.4, 3.55, 3.5], lower_is_better=True)
    >>> round(s.mean, 2), round(s.lo, 3), round(s.hi, 3), s.verdict, round(s.relative_pct, 1)
    (-0.5, -0.544, -0.456, 'better', -14.2)
    >>> paired_interval([30.1, 29.8, 30.0], [30.0, 30.0, 30.0], lower_is_better=False).verdict
    'within noise'
    >>> paired_interval([1.0, float("nan"), 2.0], [1.5, 1.0, None], lower_is_better=True).verdict
    'n/a'
    """
    pairs = [(float(v), float(b)) for v, b in zip(values, baseline) if finite(v) and finite(b)]
    diffs = [v - b for v, b in pairs]
    n = len(diffs)
    if n < 2:
        mean = diffs[0] if diffs else math.nan
        return PairedStats(n, mean, math.nan, math.nan, "n/a", _relative(mean, pairs), diffs)
    mean = statistics.fmean(diffs)
    p_flip = sign_flip_p(diffs)
    half = t_quantile(n - 1, confidence) * statistics.stdev(diffs) / math.sqrt(n)
    lo, hi = mean - half, mean + half
    if lo > 0 or hi < 0:
        improved = (hi < 0) == lower_is_better
        verdict = "better" if improved else "worse"
    else:
        verdict = "within noise"
    return PairedStats(n, mean, lo, hi, verdict, _relative(mean, pairs), diffs, p_flip)


def _relative(mean_diff: float, pairs: Sequence[tuple[float, float]]) -> float:
    base = statistics.fmean(b for _, b in pairs) if pairs else math.nan
    return 100.0 * mean_diff / base if pairs and base else math.nan


def finite(x: Any) -> bool:
    """Whether ``x`` is a number that is not None, NaN or infinite."""
    return x is not None and math.isfinite(float(x))


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """Mean, sample std (NaN for one value: no spread is known) and count of the finite values."""
    v = [float(x) for x in values if finite(x)]
    if not v:
        return math.nan, math.nan, 0
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else math.nan), len(v)
