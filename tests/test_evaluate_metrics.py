"""KID, CLIP-I and diversity on feature arrays with known answers."""

import itertools

import numpy as np
import pytest

from mvtune.evaluate.metrics import clip_i, diversity, kid
from mvtune.evaluate import ScoreError


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _cloud(n: int, d: int = 16, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    """Normalised features around a direction that moves with `shift` (a different 'model')."""
    rng = np.random.default_rng(seed)
    centre = np.zeros(d)
    centre[0], centre[1] = np.cos(shift), np.sin(shift)
    return _unit(centre + 0.5 * rng.normal(size=(n, d)))


def _mmd_by_loops(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, written out pair by pair."""
    d, m = a.shape[1], len(a)

    def k(x, y):
        return (float(x @ y) / d + 1.0) ** 3

    xx = sum(k(a[i], a[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(b[i], b[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(x, y) for x in a for y in b) / (m * m)
    return xx + yy - 2.0 * xy


def test_kid_with_whole_sets_is_the_unbiased_mmd():
    a, b = _cloud(7, seed=1), _cloud(7, shift=1.0, seed=2)
    mean, std = kid(a, b, subsets=5)  # subset = the whole sets: every subset is the same
    assert mean == pytest.approx(_mmd_by_loops(a, b), rel=1e-9)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_is_near_zero_for_identical_sets_and_grows_with_the_shift():
    a = _cloud(60, seed=3)
    same, _ = kid(a, a)
    near, _ = kid(a, _cloud(60, seed=4))  # same distribution, other samples
    far, _ = kid(a, _cloud(60, shift=1.2, seed=5))
    # The unbiased estimator assumes independent sets; the very same set lands O(1/m) below zero.
    assert -0.15 * far < same <= 0.0
    assert abs(near) < 0.05 * far
    assert abs(kid(_cloud(400, seed=3), _cloud(400, seed=3))[0]) < 0.2 * abs(same)  # and shrinks with m
    assert far > kid(a, _cloud(60, shift=0.4, seed=5))[0] > near


def test_kid_works_for_small_sets_with_subsets():
    a, b = _cloud(12, seed=6), _cloud(9, shift=1.0, seed=7)
    mean, std = kid(a, b, subset_size=5, subsets=50, seed=0)
    assert mean > 0 and std > 0  # different subsets, different estimates
    assert kid(a, b, subset_size=5, subsets=50, seed=0) == (mean, std)  # reproducible by seed
    assert kid(a, b)[0] == pytest.approx(kid(a, b, subset_size=9)[0])  # default subset: the smaller set


def test_kid_rejects_what_it_cannot_estimate():
    a = _cloud(5)
    with pytest.raises(ScoreError, match=r"subset_size must be in \[2, 3\]"):
        kid(a, _cloud(3), subset_size=4)
    with pytest.raises(ScoreError, match=r"subset_size must be in \[2, 1\]"):
        kid(a, _cloud(1))
    with pytest.raises(ScoreError, match="feature sizes differ"):
        kid(a, _cloud(5, d=8))
    with pytest.raises(ScoreError, match="expected a non-empty"):
        kid(a[0], a)
    with pytest.raises(ScoreError, match="NaN"):
        kid(np.full((3, 4), np.nan), _cloud(3, d=4))


def test_clip_i_is_100_cosine_of_paired_rows():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    b = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(clip_i(a, b), [100.0, 0.0, 100.0 / np.sqrt(2)], atol=1e-4)
    with pytest.raises(ScoreError, match="equal shapes"):
        clip_i(a, b[:2])


def test_diversity_is_the_mean_pairwise_cosine_distance():
    assert diversity(np.tile([[0.6, 0.8]], (4, 1))) == pytest.approx(0.0, abs=1e-12)
    assert diversity(np.eye(5)) == pytest.approx(1.0)
    assert diversity(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2.0)
    x = _cloud(6, seed=8)
    expected = np.mean([1.0 - x[i] @ x[j] for i, j in itertools.combinations(range(6), 2)])
    assert diversity(x) == pytest.approx(expected)
    with pytest.raises(ScoreError, match="at least 2 samples"):
        diversity(x[:1])
