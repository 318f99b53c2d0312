"""Set-level metrics on CLIP features: KID, CLIP-I, diversity. Pure numpy on L2-normalised (N, D) rows.

KID here is the polynomial-kernel MMD of Binkowski et al. (the one clean-fid and torchmetrics compute on
Inception features), computed on the CLIP image features the evaluation already has: no Inception weights to
download, and the same backbone for every metric. Values are therefore not comparable with published
Inception KIDs, only between models scored with the same backbone.
"""

from __future__ import annotations

import numpy as np

from mvtune.evaluate import ScoreError

#: Default subset size when the sets are large (clean-fid / torchmetrics use 1000).
KID_MAX_SUBSET = 1000


def _features(feats, what: str) -> np.ndarray:
    array = np.asarray(feats, dtype=np.float64)
    if array.ndim != 2 or not array.shape[0] or not array.shape[1]:
        raise ScoreError(f"{what}: expected a non-empty (N, D) feature array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ScoreError(f"{what}: features contain NaN or inf")
    return array


def _unit_rows(array: np.ndarray) -> np.ndarray:
    return array / np.maximum(np.linalg.norm(array, axis=1, keepdims=True), 1e-12)


def kid(feats_a, feats_b, subset_size: int | None = None, subsets: int = 100, seed: int = 0) -> tuple[float, float]:
    """Kernel inception distance (mean, std over subsets) between two feature sets.

    Kernel k(x, y) = (x.y / D + 1)^3; each subset draws `subset_size` rows of each set without replacement and
    takes the unbiased MMD^2 estimate. `subset_size` defaults to min(len(a), len(b), 1000), so sets of a few
    dozen views work (the estimate is noisier: read the std). Both sets need at least 2 rows.
    """
    a = _features(feats_a, "kid feats_a")
    b = _features(feats_b, "kid feats_b")
    if a.shape[1] != b.shape[1]:
        raise ScoreError(f"kid: feature sizes differ ({a.shape[1]} vs {b.shape[1]}); score both with one scorer")
    largest = min(len(a), len(b))
    m = min(largest, KID_MAX_SUBSET) if subset_size is None else int(subset_size)
    if m < 2 or m > largest:
        raise ScoreError(f"kid: subset_size must be in [2, {largest}] for sets of {len(a)} and {len(b)}, got {m}")
    if subsets < 1:
        raise ScoreError(f"kid: subsets must be >= 1, got {subsets}")
    d = a.shape[1]
    # Kernels once over the whole sets; each subset is a submatrix of them.
    k_aa = (a @ a.T / d + 1.0) ** 3
    k_bb = (b @ b.T / d + 1.0) ** 3
    k_ab = (a @ b.T / d + 1.0) ** 3
    if m == len(a) == len(b):
        subsets = 1  # every subset is the whole of both sets: one estimate, std 0
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for s in range(subsets):
        ia = rng.choice(len(a), m, replace=False)
        ib = rng.choice(len(b), m, replace=False)
        xx = k_aa[np.ix_(ia, ia)]
        yy = k_bb[np.ix_(ib, ib)]
        within = (xx.sum() - np.trace(xx) + yy.sum() - np.trace(yy)) / (m * (m - 1))
        values[s] = within - 2.0 * k_ab[np.ix_(ia, ib)].mean()
    return float(values.mean()), float(values.std())


def clip_i(feats_a, feats_b) -> np.ndarray:
    """CLIP-I of paired rows: 100 x cosine(a_i, b_i), e.g. a generated view against its ground-truth render."""
    a = _features(feats_a, "clip_i feats_a")
    b = _features(feats_b, "clip_i feats_b")
    if a.shape != b.shape:
        raise ScoreError(f"clip_i: paired features need equal shapes, got {a.shape} and {b.shape}")
    return (100.0 * np.sum(_unit_rows(a) * _unit_rows(b), axis=1)).astype(np.float32)


def diversity(feats) -> float:
    """Mean pairwise (1 - cosine) between rows, e.g. the same mesh and prompt over seeds; needs >= 2 rows."""
    x = _unit_rows(_features(feats, "diversity feats"))
    n = len(x)
    if n < 2:
        raise ScoreError(f"diversity needs at least 2 samples (e.g. seeds), got {n}")
    cos = x @ x.T
    return float((n * (n - 1) - (cos.sum() - np.trace(cos))) / (n * (n - 1)))
