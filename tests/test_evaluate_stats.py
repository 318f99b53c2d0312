"""Bootstrap intervals and verdicts on synthetic paired differences whose true effect is known."""

import math

import numpy as np
import pytest

from mvtune.evaluate.stats import BETTER, NO_EVIDENCE, WORSE, bootstrap_interval, paired_units, verdict


def _draws(effect: float, repeats: int = 300, units: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    for r in range(repeats):
        # skewed noise (a centred gamma), like CLIP-score differences, not a friendly normal
        noise = rng.gamma(2.0, 0.5, units) - 1.0
        yield r, effect + noise


def test_intervals_cover_the_true_effect_in_at_least_90_percent_of_draws():
    effect = 0.3
    covered = [
        (iv := bootstrap_interval(d, samples=1000, seed=r)).low <= effect <= iv.high for r, d in _draws(effect)
    ]
    assert np.mean(covered) >= 0.9, np.mean(covered)


def test_zero_effect_says_no_evidence():
    verdicts = [verdict(bootstrap_interval(d, samples=1000, seed=r)) for r, d in _draws(0.0)]
    assert verdicts.count(NO_EVIDENCE) / len(verdicts) >= 0.9
    assert verdict(bootstrap_interval([0.0] * 10)) == NO_EVIDENCE


def test_clear_effects_get_a_direction_and_lower_is_better_flips_it():
    rng = np.random.default_rng(1)
    up = bootstrap_interval(2.0 + rng.normal(0, 0.5, 12))
    assert up.low > 0 and verdict(up) == BETTER and verdict(up, higher_is_better=False) == WORSE
    down = bootstrap_interval(-2.0 + rng.normal(0, 0.5, 12))
    assert verdict(down) == WORSE and verdict(down, higher_is_better=False) == BETTER


def test_degenerate_inputs():
    one = bootstrap_interval([1.5])
    assert one.diff == 1.5 and math.isnan(one.low) and verdict(one) == NO_EVIDENCE
    assert one.to_json()["low"] is None  # JSON has no NaN
    same = bootstrap_interval([0.25, 0.25, 0.25])
    assert (same.low, same.high) == (0.25, 0.25) and verdict(same) == BETTER
    empty = bootstrap_interval([float("nan")])
    assert empty.n == 0 and verdict(empty) == NO_EVIDENCE


def test_paired_units_use_only_shared_units():
    assert paired_units({("a", 0): 3.0, ("a", 1): 1.0}, {("a", 0): 1.0, ("b", 0): 5.0}) == [pytest.approx(2.0)]
