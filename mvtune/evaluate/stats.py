"""Paired comparisons: a model's per-unit differences from the reference, a bootstrap interval and a verdict.

The unit is one (mesh, seed) pair: both models saw the same geometry and the same initial latents, so the
difference cancels what the pair shares and only the model remains. Prompts of a group (one concept, or the
generic set) are averaged inside a unit, so a unit is one independent draw and the interval is honest about how
few meshes and seeds there are.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np

BETTER, WORSE, NO_EVIDENCE = "better", "worse", "no evidence"


@dataclass(frozen=True)
class Interval:
    """Mean paired difference (model - reference) with its bootstrap interval over `n` units."""

    diff: float
    low: float
    high: float
    n: int

    def to_json(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def bootstrap_interval(
    diffs, samples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """BCa bootstrap interval of the mean of `diffs` (one value per unit; non-finite values are dropped).

    BCa rather than the plain percentile interval: with the 5-30 units an evaluation affords, percentile intervals
    of skewed differences cover noticeably less than their nominal level. Fewer than 2 units, or all units equal,
    give no spread to resample: the interval is then the point itself (n < 2: undefined, NaN).
    """
    from scipy.stats import bootstrap

    values = np.asarray([d for d in np.asarray(diffs, dtype=np.float64).ravel() if math.isfinite(d)])
    n = int(values.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(values.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    if np.ptp(values) == 0.0:
        return Interval(mean, mean, mean, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa's "degenerate distribution" warning: handled by the fallback below
        result = bootstrap(
            (values,),
            np.mean,
            n_resamples=samples,
            confidence_level=confidence,
            method="BCa",
            rng=np.random.default_rng(seed),
            vectorized=True,
        )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        rng = np.random.default_rng(seed)
        means = values[rng.integers(0, n, size=(samples, n))].mean(axis=1)
        low, high = (float(q) for q in np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2]))
    return Interval(mean, low, high, n)


def verdict(interval: Interval, higher_is_better: bool = True) -> str:
    """better / worse when the whole interval lies on one side of zero, otherwise no evidence."""
    low, high = interval.low, interval.high
    if not (math.isfinite(low) and math.isfinite(high)):
        return NO_EVIDENCE
    if low > 0.0:
        return BETTER if higher_is_better else WORSE
    if high < 0.0:
        return WORSE if higher_is_better else BETTER
    return NO_EVIDENCE


def paired_units(model: dict, reference: dict) -> list[float]:
    """Differences over the units both sides have: {unit: value} dicts -> [model - reference]."""
    return [model[u] - reference[u] for u in sorted(set(model) & set(reference), key=str)]
