"""Paired comparisons over seeds: the difference between two arms with a 95% t interval.

Seeds are the unit of replication. In a scalelab study a seed fixes the initial weights (for arms
with the same shapes) and the minibatch order (for every arm), so two arms' results at the same
seed are paired: ``d_s = a_s - b_s``. The interval is Student's t on the ``n`` paired differences,

    mean(d) ± t_{0.975, n-1} · sd(d) / sqrt(n),         sd with n - 1 degrees of freedom,

which assumes the differences are roughly normal; with few seeds and bimodal outcomes (raw pixels
either escape Keras' clip or do not) read it as approximate. ``n < 2`` gives no interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

LEVEL = 0.95


class PairedDifference(NamedTuple):
    """``a - b`` over the seeds both have: mean, the t interval (NaN when n < 2), n and the seeds."""

    mean: float
    low: float
    high: float
    n: int
    seeds: tuple[int, ...]

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies wholly above or wholly below 0."""
        return self.n >= 2 and (self.low > 0 or self.high < 0)


def t_quantile(dof: int, level: float = LEVEL) -> float:
    """The two-sided ``level`` quantile of Student's t with ``dof`` degrees of freedom."""
    from scipy.stats import t  # scipy comes with jax

    return float(t.ppf(0.5 + level / 2, dof))


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL) -> PairedDifference:
    """``a[s] - b[s]`` over the seeds with a finite value in both, with the ``level`` t interval."""
    seeds = tuple(sorted(s for s in a.keys() & b.keys() if math.isfinite(a[s]) and math.isfinite(b[s])))
    d = np.asarray([a[s] - b[s] for s in seeds], np.float64)
    if len(d) == 0:
        return PairedDifference(math.nan, math.nan, math.nan, 0, ())
    mean = float(d.mean())
    if len(d) < 2:
        return PairedDifference(mean, math.nan, math.nan, 1, seeds)
    half = t_quantile(len(d) - 1, level) * float(d.std(ddof=1)) / math.sqrt(len(d))
    return PairedDifference(mean, mean - half, mean + half, len(d), seeds)
