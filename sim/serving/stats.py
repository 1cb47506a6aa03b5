"""Intervals over seeds for ``fluidnpu compare``: Student's t for any number of seeds.

Every figure of a compare run is computed once per seed (all runs of a seed share
arrivals and exits) and summarised by a point estimate with the 95 % interval *of that
same statistic*: the mean of per-seed values with a t-interval, or, for ratios, the
geometric mean of per-seed ratios with the t-interval of their logarithms
(``exp(mean(log r) +- t * sd / sqrt(n))``).
"""
from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["t_quantile", "mean_ci", "geo_ci", "CONFIDENCE"]

CONFIDENCE = 0.95


@functools.lru_cache(maxsize=None)
def t_quantile(n: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student's t quantile for ``n`` values (``n - 1`` degrees of freedom)."""
    from scipy.stats import t
    return float(t.ppf(0.5 + confidence / 2, n - 1))


def _finite(xs) -> np.ndarray:
    x = np.asarray([v for v in xs if v is not None], dtype=float)
    return x[np.isfinite(x)]


def mean_ci(xs, lo_bound: float = -math.inf, hi_bound: float = math.inf) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of the finite values, cut to what the quantity can be (a
    latency is not below 0, an attainment not above 1). One value: a zero-width interval;
    none: NaN."""
    x = _finite(xs)
    if x.size == 0:
        return (float("nan"),) * 3
    m = float(x.mean())
    if x.size < 2:
        return m, m, m
    h = t_quantile(x.size) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return m, max(m - h, lo_bound), min(m + h, hi_bound)


def geo_ci(ratios) -> tuple[float, float, float]:
    """Geometric mean and 95 % interval of positive ratios (the t-interval of their logs)."""
    r = _finite(ratios)
    r = r[r > 0]
    if r.size == 0:
        return (float("nan"),) * 3
    m, lo, hi = mean_ci(np.log(r))
    return math.exp(m), math.exp(lo), math.exp(hi)
