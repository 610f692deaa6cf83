"""The paper's similarity graph and normalised spectral clustering (dense), plus a sparse
k-nearest-neighbour variant.

Similarity of two pixels ``i, j`` of one class (paper Eq. 6, as ``SPEC.md`` reads it)::

    w_ij = exp(-||t_i - t_j||^2 / (L sigma^2)) + exp(-||q_i - q_j||^2 / (2 sigma^2))

with ``t`` the ``L``-d predicted locations and ``q`` the pixel's (x, y), each divided by its
maximum (see :func:`normalise_by_max`); the ``q`` term is dropped for "PFN w/o coordinates".
Every pair of the class's pixels is connected (dense ``N x N``), the diagonal is 0 (Ng, Jordan
& Weiss set ``A_ii = 0``).

Spectral embedding (Ng-Jordan-Weiss): the ``k`` leading eigenvectors of
``D^-1/2 W D^-1/2`` (``scipy.linalg.eigh`` with ``subset_by_index``), rows scaled to unit
length; k-means on those rows with ``n_init`` seedings; the seeding kept is the one with the
largest mean within-cluster similarity (:func:`select_by_similarity`).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg

from .kmeans import canonical_labels, kmeans_runs

#: Classes with more cells than this are refused by the dense method (W alone would take
#: N^2 x 4 bytes: 900 MB at 15,000 cells) and eigh would take minutes.
MAX_DENSE_CELLS = 15_000
#: Above this many cells the leading eigenvectors come from Lanczos (ARPACK) instead of the
#: dense solver: equal at 600 cells (8 ms), 4x faster at 1,000, 15x at 2,194.
ARPACK_MIN_CELLS = 800


def normalise_by_max(values: np.ndarray) -> np.ndarray:
    """Divide each dimension of ``(n, d)`` values by its maximum absolute value over the ``n``
    rows (our reading of "normalised by their corresponding maximum": per dimension, over the
    class's pixels). A dimension whose maximum is 0 is left as it is."""
    values = np.asarray(values, dtype=np.float64)
    top = np.abs(values).max(axis=0) if len(values) else np.ones(values.shape[1])
    return values / np.where(top > 0, top, 1.0)


def _sq_dists(a: np.ndarray) -> np.ndarray:
    """``(n, n)`` float32 squared Euclidean distances between the rows of ``a``."""
    a = np.asarray(a, dtype=np.float32)
    a2 = (a * a).sum(1)
    d = a2[:, None] + a2[None, :] - 2.0 * (a @ a.T)
    return np.maximum(d, 0.0, out=d)


def dense_affinity(t: np.ndarray, q: np.ndarray | None, sigma: float) -> np.ndarray:
    """The full similarity matrix of one class.

    Args:
        t: ``(n, L)`` normalised locations.
        q: ``(n, 2)`` normalised coordinates, or None to drop the coordinate term.
        sigma: kernel width.

    Returns:
        ``(n, n)`` float32 ``W``, symmetric, zero diagonal, off-diagonal entries in ``(0, 2]``
        (``(0, 1]`` without coordinates).
    """
    n, dim = t.shape
    w = np.exp(_sq_dists(t) * np.float32(-1.0 / (dim * sigma ** 2)))  # (n, n)
    if q is not None:
        w += np.exp(_sq_dists(q) * np.float32(-1.0 / (2 * sigma ** 2)))
    np.fill_diagonal(w, 0.0)
    return w


def njw_eigenvectors(w: np.ndarray, num: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``num`` leading eigenpairs of ``D^-1/2 W D^-1/2`` (dense, symmetric): LAPACK's
    ``syevr`` up to :data:`ARPACK_MIN_CELLS` cells, ARPACK's Lanczos (to machine precision,
    a fixed start vector) above, where the dense solver's O(n^3) reduction dominates a
    re-clustering (benchmarks/recluster.py).

    Returns:
        eigenvalues ``(num,)`` descending and eigenvectors ``(n, num)`` in the same order.
    """
    n = len(w)
    num = int(min(max(num, 1), n))
    deg = w.sum(1, dtype=np.float64)
    inv = (1.0 / np.sqrt(np.maximum(deg, 1e-12))).astype(w.dtype)
    a = w * inv[:, None] * inv[None, :]  # (n, n)
    subset = [n - num, n - 1]
    if n > ARPACK_MIN_CELLS and num < n - 1:
        try:  # Lanczos: the same eigenpairs (to ~1e-5) at 2194 cells in 0.03 s instead of 0.4 s
            vals, vecs = scipy.sparse.linalg.eigsh(a, k=num, which="LA", tol=0,
                                                   v0=np.ones(n, dtype=a.dtype))
            order = np.argsort(vals)[::-1]
            return vals[order].copy(), vecs[:, order].copy()
        except scipy.sparse.linalg.ArpackError:
            pass  # did not converge: the dense solver below
    try:
        vals, vecs = scipy.linalg.eigh(a, subset_by_index=subset, check_finite=False,
                                       driver="evr")
    except np.linalg.LinAlgError:
        # LAPACK's single-precision MRRR can fail ("Internal Error") on the clustered spectra of
        # a small sigma: redo in double precision with the bisection driver
        vals, vecs = scipy.linalg.eigh(a.astype(np.float64), subset_by_index=subset,
                                       check_finite=False, driver="evx")
    return vals[::-1].copy(), vecs[:, ::-1].copy()


def row_normalise(vectors: np.ndarray) -> np.ndarray:
    """Scale each row of ``(n, k)`` to unit length (NJW's step 4; zero rows stay zero)."""
    norm = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norm > 0, norm, 1.0)


def cluster_similarity(w: np.ndarray | scipy.sparse.spmatrix, labels: np.ndarray,
                       num_terms: int) -> np.ndarray:
    """Mean within-cluster similarity of each cluster, in ``[0, 1]``.

    ``sum_{i != j in S} w_ij / (|S| (|S| - 1)) / num_terms`` for cluster ``S`` (``num_terms``
    is 2 when ``w`` sums the location and coordinate kernels, else 1); 0 for a single pixel
    (no pair, no evidence), as in :func:`select_by_similarity`.

    Args:
        w: ``(n, n)`` zero-diagonal similarity (dense or sparse).
        labels: ``(n,)`` clusters ``0..m-1``.

    Returns:
        ``(m,)`` float64.
    """
    m = int(labels.max()) + 1
    z = np.zeros((len(labels), m), dtype=np.float32)
    z[np.arange(len(labels)), labels] = 1.0
    within = np.asarray((w @ z) * z).sum(0)  # (m,)
    size = z.sum(0)
    pairs = size * (size - 1)
    return np.where(pairs > 0, within / np.maximum(pairs, 1) / num_terms, 0.0)


def select_by_similarity(w: np.ndarray | scipy.sparse.spmatrix, labels: np.ndarray
                         ) -> tuple[int, np.ndarray]:
    """Pick, of ``(S, n)`` k-means partitions, the one with the largest mean (over clusters)
    within-cluster similarity (the paper's rule for its 20 seedings).

    Identical partitions are scored once; ties go to the earliest seeding.

    Returns:
        the chosen seeding's index and the score of every seeding ``(S,)``.
    """
    canon = canonical_labels(labels)  # (S, n)
    uniq, first, inverse = np.unique(canon, axis=0, return_index=True, return_inverse=True)
    k = int(canon.max()) + 1
    n = canon.shape[1]
    z = np.zeros((n, len(uniq) * k), dtype=np.float32)  # one-hot of every unique partition
    cols = uniq + (np.arange(len(uniq)) * k)[:, None]  # (U, n)
    z[np.tile(np.arange(n), len(uniq)), cols.ravel()] = 1.0
    within = np.asarray((w @ z) * z).sum(0).reshape(len(uniq), k)  # (U, k)
    size = z.sum(0).reshape(len(uniq), k)
    pairs = size * (size - 1)
    per_cluster = np.where(pairs > 0, within / np.maximum(pairs, 1), 0.0)
    nonempty = size > 0
    score_u = (per_cluster * nonempty).sum(1) / np.maximum(nonempty.sum(1), 1)  # (U,)
    scores = score_u[inverse.reshape(-1)]  # (S,)
    best = int(np.flatnonzero(scores == scores.max()).min())
    return best, scores


def spectral_partition(w: np.ndarray | scipy.sparse.spmatrix, embedding: np.ndarray, k: int,
                       n_init: int, seed: int | np.random.Generator) -> np.ndarray:
    """k-means (``n_init`` seedings) on the row-normalised ``(n, >=k)`` embedding's first
    ``k`` columns; returns the ``(n,)`` labels of the seeding with the best similarity."""
    rows = row_normalise(embedding[:, :k])  # (n, k)
    runs = kmeans_runs(rows, k, n_init=n_init, seed=seed)
    best, _ = select_by_similarity(w, runs.labels)
    return runs.labels[best]


# ---------------------------------------------------------------------- sparse kNN variant

def knn_affinity(t: np.ndarray, q: np.ndarray | None, sigma: float, neighbors: int = 10
                 ) -> scipy.sparse.csr_matrix:
    """The paper's similarity restricted to each pixel's ``neighbors`` nearest pixels.

    Neighbours are found (``sklearn.neighbors.NearestNeighbors``) in the space
    ``[t / (sqrt(L) sigma), q / (sqrt(2) sigma)]``, whose squared distance is the sum of the two
    kernels' exponents; each kept edge carries the exact ``w_ij`` of :func:`dense_affinity`. The
    graph is symmetrised (``max(W, W^T)``), zero diagonal.

    Returns:
        ``(n, n)`` CSR float64.
    """
    from sklearn.neighbors import NearestNeighbors

    n, dim = t.shape
    feats = [t / (np.sqrt(dim) * sigma)]
    if q is not None:
        feats.append(q / (np.sqrt(2.0) * sigma))
    z = np.concatenate(feats, axis=1)
    m = int(min(neighbors + 1, n))
    _, idx = NearestNeighbors(n_neighbors=m).fit(z).kneighbors(z)  # (n, m)
    rows = np.repeat(np.arange(n), m)
    cols = idx.ravel()
    keep = rows != cols
    rows, cols = rows[keep], cols[keep]
    vals = np.exp(-((t[rows] - t[cols]) ** 2).sum(1) / (dim * sigma ** 2))
    if q is not None:
        vals += np.exp(-((q[rows] - q[cols]) ** 2).sum(1) / (2 * sigma ** 2))
    w = scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(n, n))
    return w.maximum(w.T).tocsr()


def sparse_embedding(w: scipy.sparse.csr_matrix, k: int, seed: int) -> np.ndarray:
    """``(n, k)`` NJW embedding of a sparse graph via ``sklearn.manifold.spectral_embedding``
    (ARPACK on the normalised Laplacian). scikit-learn returns the eigenvectors of
    ``D^-1/2 W D^-1/2`` divided by ``sqrt(d)`` per row, a per-row scale that NJW's row
    normalisation removes again. Small graphs (< 64 nodes) use the dense solver."""
    n = w.shape[0]
    if n < 64 or k >= n - 1:
        return njw_eigenvectors(w.toarray().astype(np.float64), k)[1]
    from sklearn.manifold import spectral_embedding

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "graph is not fully connected": fine for clustering
        return spectral_embedding(w, n_components=k, norm_laplacian=True, drop_first=False,
                                  random_state=seed)
