"""k-means with many seedings at once, returning *every* seeding (numpy only).

Why not ``sklearn.cluster.KMeans``: the paper keeps, of 20 seedings, the one with the largest
mean within-cluster *similarity* (not the smallest inertia, which is what ``n_init`` selects
by), so all 20 partitions are needed. Running ``KMeans(n_init=1)`` 20 times costs about 20 x
1-3 ms of per-call overhead per class (validation, thread-pool set-up) even on a 50-point
embedding, more than the clustering itself, and the napari widget re-runs this step on every
slider move. Here the 20 seedings run as one batch of array operations (k-means++ seeding,
then Lloyd iterations), which is the same algorithm as scikit-learn's ``lloyd`` (tested against
it in ``tests/test_grouping.py``), in well under a millisecond for a typical class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Seedings x points x clusters handled in one batch (bounds the distance array's memory).
MAX_BATCH_ELEMENTS = 4_000_000


@dataclass
class KMeansRuns:
    """All seedings of one k-means call."""

    labels: np.ndarray  # (S, n) int64 cluster of each point, 0..k-1, per seeding
    centers: np.ndarray  # (S, k, d) float64
    inertia: np.ndarray  # (S,) float64 sum of squared distances to the own center


def kmeans_plusplus(x: np.ndarray, k: int, n_init: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii), ``n_init`` seedings at once.

    Args:
        x: ``(n, d)`` points.
        k: clusters, ``1 <= k <= n``.
        n_init: seedings ``S``.
        rng: random generator.

    Returns:
        ``(S, k, d)`` initial centers. Each new center is drawn with probability proportional
        to the squared distance to the nearest chosen one, so a point equal to a chosen center
        is never chosen again while another point remains.
    """
    n = len(x)
    first = rng.integers(n, size=n_init)  # (S,)
    centers = np.empty((n_init, k, x.shape[1]))
    centers[:, 0] = x[first]
    x2 = (x ** 2).sum(-1)  # (n,)

    def sq_dist(c: np.ndarray) -> np.ndarray:  # (S, d) -> (S, n)
        return np.maximum(x2[None] - 2.0 * (c @ x.T) + (c ** 2).sum(-1)[:, None], 0.0)

    d2 = sq_dist(centers[:, 0])  # (S, n)
    for j in range(1, k):
        cum = np.cumsum(d2, axis=1)  # (S, n)
        total = cum[:, -1]
        r = rng.random(n_init) * total  # (S,)
        idx = np.minimum((cum <= r[:, None]).sum(axis=1), n - 1)  # first index with cum > r
        flat = total <= 0  # every point already a center: fall back to uniform draws
        if flat.any():
            idx[flat] = rng.integers(n, size=int(flat.sum()))
        centers[:, j] = x[idx]
        d2 = np.minimum(d2, sq_dist(centers[:, j]))
    return centers


def _assign(x: np.ndarray, x2: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest center of each point: ``(S, n)`` labels and squared distances."""
    c2 = (centers ** 2).sum(-1)  # (S, k)
    cross = np.matmul(x[None], centers.transpose(0, 2, 1))  # (S, n, k), batched BLAS
    dist = x2[None, :, None] - 2.0 * cross + c2[:, None, :]
    labels = dist.argmin(-1)  # (S, n)
    best = np.take_along_axis(dist, labels[..., None], -1)[..., 0]  # (S, n)
    return labels, np.maximum(best, 0.0)


def _lloyd(x: np.ndarray, centers: np.ndarray, max_iter: int, tol: float) -> KMeansRuns:
    s, k, d = centers.shape
    n = len(x)
    x2 = (x ** 2).sum(-1)  # (n,)
    offsets = (np.arange(s) * k)[:, None]  # (S, 1)
    for _ in range(max_iter):
        labels, _ = _assign(x, x2, centers)
        flat = (labels + offsets).ravel()  # (S * n,)
        sizes = np.bincount(flat, minlength=s * k).reshape(s, k)  # (S, k)
        sums = np.stack([np.bincount(flat, weights=np.broadcast_to(x[:, i], (s, n)).ravel(),
                                     minlength=s * k) for i in range(d)], axis=-1)  # (S*k, d)
        sums = sums.reshape(s, k, d)
        new = np.where(sizes[..., None] > 0, sums / np.maximum(sizes, 1)[..., None], centers)
        shift = ((new - centers) ** 2).sum(axis=(1, 2))  # (S,)
        centers = new
        if shift.max() <= tol:
            break
    labels, best = _assign(x, x2, centers)
    return KMeansRuns(labels=labels, centers=centers, inertia=best.sum(-1))


def kmeans_runs(x: np.ndarray, k: int, n_init: int = 20, seed: int | np.random.Generator = 0,
                max_iter: int = 100, tol: float = 1e-4) -> KMeansRuns:
    """``n_init`` k-means runs (k-means++ seeding + Lloyd) on the same points.

    Args:
        x: ``(n, d)`` points (any float dtype; computed in float64).
        k: clusters; clipped to ``1..n``.
        n_init: seedings.
        seed: an int or a ``np.random.Generator`` (deterministic for a given int).
        max_iter: Lloyd iterations at most.
        tol: stop when no center moves by more than ``tol`` times the mean per-dimension
            variance of ``x`` (squared), scikit-learn's convention.

    Returns:
        :class:`KMeansRuns` with every seeding's labels, centers and inertia.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"kmeans_runs: expected (n, d) points with n >= 1, got {x.shape}")
    k = int(min(max(k, 1), len(x)))
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    centers = kmeans_plusplus(x, k, n_init, rng)  # (S, k, d)
    abs_tol = tol * float(np.var(x, axis=0).mean())
    chunk = max(1, MAX_BATCH_ELEMENTS // max(1, len(x) * k))
    parts = [_lloyd(x, centers[i:i + chunk], max_iter, abs_tol) for i in range(0, n_init, chunk)]
    if len(parts) == 1:
        return parts[0]
    return KMeansRuns(labels=np.concatenate([p.labels for p in parts]),
                      centers=np.concatenate([p.centers for p in parts]),
                      inertia=np.concatenate([p.inertia for p in parts]))


def distinct_rows(x: np.ndarray, decimals: int = 6) -> int:
    """How many distinct rows ``x`` holds (rounded to ``decimals``): the most clusters k-means
    can make without empty or duplicated centers."""
    return int(len(np.unique(np.round(np.asarray(x, dtype=np.float64), decimals), axis=0)))


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel each row of ``(S, n)`` labels by order of first appearance, so two seedings that
    found the same partition get identical rows (for de-duplication)."""
    out = np.empty_like(labels)
    for s, row in enumerate(labels):
        _, first, inverse = np.unique(row, return_index=True, return_inverse=True)
        rank = np.argsort(np.argsort(first))
        out[s] = rank[inverse]
    return out
