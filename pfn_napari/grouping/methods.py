"""Grouping methods: one class's grid cells -> clusters. A plain dict registry of
:class:`GroupingMethod` entries.

Every method is ``fn(data: ClassData, k: int, cfg: GroupingConfig) -> Clustering``. ``data``
holds one class's cells on the grid (their raw locations, decoded box descriptors, normalised
features) and a ``cache`` dict the method may fill (affinities, embeddings) so that
:class:`~pfn_napari.grouping.Grouper` re-runs only what a changed setting invalidates. Its
entry declares the ``GroupingConfig`` fields ``fn`` reads (``cache_fields``): the Grouper's
cache of clusterings is keyed by them, so a method must read no other field (a test holds it).

=================  ==========================================================================
``spectral``       the paper: dense similarity graph over all pairs, NJW spectral embedding,
                   k-means x ``n_init`` kept by mean within-cluster similarity. O(N^2) memory,
                   O(N^3) time. Full-resolution pixels take the nearest cell's cluster.
``vote``           every cell votes for its instance's box (decoded ``cx, cy, x1, y1, x2, y2``);
                   k-means (k = count, ``n_init`` seedings, least inertia) finds the k boxes;
                   every full-resolution pixel goes to the nearest box in location space
                   (masked-bilinear upsampled locations), if it is within sigma's reach
                   (below). O(N k) time and memory.
``knn-spectral``   the paper's similarity on a sparse k-nearest-neighbour graph (10
                   neighbours), ARPACK embedding, same k-means selection as ``spectral``.
``kmeans``         k-means directly on the normalised ``[t, q]`` features (SPEC's baseline row).
=================  ==========================================================================

What sigma does (``GroupingMethod.sigma_role``, one line each, for the widget and the docs):

=================  ==========================================================================
``spectral``       the width of the similarity between cells, ``exp(-d^2 / (L sigma^2))`` on
                   locations plus the same on positions: smaller splits more.
``vote``           how far a vote may be from its instance's box: a cell or pixel whose
                   similarity ``exp(-d^2 / (D sigma^2))`` to the nearest box (D = 6 box
                   numbers, image units) is under 1/2 is in no instance, i.e. it must lie within
                   ``sigma * sqrt(D ln 2)`` (0.5, the shipped value -> 1.02: no vote on
                   the val photos is that far, nothing is left out; 0.1 -> 0.20; 0.05 ->
                   0.10). Smaller trims the pixels that disagree.
``knn-spectral``   as ``spectral``, on the 10-neighbour graph.
``kmeans``         only the score of ``grouping.scoring=prob_x_similarity``.
=================  ==========================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable

import math
import threading

import numpy as np

from ..config import ConfigError, GroupingConfig, register_grouping_method_name
from .kmeans import distinct_rows, kmeans_runs
from .spectral import (MAX_DENSE_CELLS, cluster_similarity, dense_affinity, knn_affinity,
                       njw_eigenvectors, sparse_embedding, spectral_partition)

#: Extra eigenvectors computed beyond k, so moving the count slider up reuses the cache.
EXTRA_EIGENVECTORS = 8
#: Neighbours per pixel of the ``knn-spectral`` graph.
KNN_NEIGHBORS = 10
#: ``vote``: a cell or pixel joins its nearest cluster box only when its similarity to it,
#: ``exp(-d^2 / (D sigma^2))``, is at least this.
VOTE_MIN_SIMILARITY = 0.5


@dataclass
class ClassData:
    """One class's cells on the grid (``n`` cells, row-major order)."""

    cls: int  # class 1..C
    rows: np.ndarray  # (n,) grid row of each cell
    cols: np.ndarray  # (n,) grid column
    locations: np.ndarray  # (n, L) float64 predicted locations (the encoding's channels)
    descriptors: np.ndarray  # (n, D) float64 decoded box (cx, cy, x1, y1, x2, y2) or (cx, cy)
    t: np.ndarray  # (n, L) locations divided by their per-dimension maximum over the class
    q: np.ndarray  # (n, 2) normalised (x, y) of the cell's pixel, divided by the maximum
    cache: dict[Any, Any] = field(default_factory=dict)
    key: str = ""  # identifies (class, cells) for the Grouper's caches

    def __len__(self) -> int:
        return int(len(self.rows))


@dataclass
class Clustering:
    """One class's clusters on the grid."""

    labels: np.ndarray  # (n,) int64 cluster 0..m-1 of each cell (every cluster non-empty)
    similarity: np.ndarray  # (m,) mean within-cluster similarity in [0, 1]
    # squared distance, in the space of ``ClassData.descriptors``, beyond which a cell or pixel
    # is in no cluster (``vote``'s sigma; inf: every cell and pixel joins its nearest cluster)
    reach: float = math.inf


def _rng(cfg: GroupingConfig, data: ClassData) -> np.random.Generator:
    """Deterministic per (seed, class): the result does not depend on the order of classes."""
    return np.random.default_rng([cfg.seed, data.cls])


def _compact(labels: np.ndarray) -> np.ndarray:
    """Renumber labels to 0..m-1 by first appearance (drops empty clusters)."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inverse.reshape(-1)].astype(np.int64)


def _kernel_similarity(x: np.ndarray, labels: np.ndarray, sigma: float) -> np.ndarray:
    """Linear-time stand-in for the mean within-cluster similarity of the k-means methods:
    mean over members of ``exp(-||x_i - mean||^2 / (D sigma^2))``."""
    m = int(labels.max()) + 1
    sizes = np.bincount(labels, minlength=m)
    means = np.stack([np.bincount(labels, weights=x[:, i], minlength=m) for i in
                      range(x.shape[1])], axis=1) / np.maximum(sizes, 1)[:, None]
    d2 = ((x - means[labels]) ** 2).sum(1)
    kern = np.exp(-d2 / (x.shape[1] * sigma ** 2))
    return np.bincount(labels, weights=kern, minlength=m) / np.maximum(sizes, 1)


def _features(data: ClassData, cfg: GroupingConfig) -> tuple[np.ndarray, np.ndarray | None]:
    return data.t, (data.q if cfg.use_coords else None)


def spectral(data: ClassData, k: int, cfg: GroupingConfig) -> Clustering:
    """The paper's dense normalised spectral clustering (see :mod:`.spectral`)."""
    n = len(data)
    if n > MAX_DENSE_CELLS:
        raise ConfigError(f"grouping.method='spectral': class {data.cls} has {n:,} cells, over "
                          f"the dense limit of {MAX_DENSE_CELLS:,} (an N x N matrix); use "
                          f"grouping.method=vote or knn-spectral")
    t, q = _features(data, cfg)
    key = ("dense", cfg.sigma, cfg.use_coords)
    w = data.cache.get(("W",) + key)
    if w is None:
        for old in [c for c in data.cache if isinstance(c, tuple) and c[0] in ("W", "eig")]:
            del data.cache[old]  # one sigma at a time: W is the big item
        w = dense_affinity(t, q, cfg.sigma)
        data.cache[("W",) + key] = w
    feats = t if q is None else np.concatenate([t, q], axis=1)
    k = min(k, distinct_rows(feats))
    terms = 1 if q is None else 2
    vecs = data.cache.get(("eig",) + key)
    if n > 2 and (k > 1 or data.cache.get("eager")) and (vecs is None or vecs.shape[1] < k):
        # "eager" (set by Grouper(eager=True), the napari widget): also for k = 1, so that a
        # later count change is only k-means
        vecs = njw_eigenvectors(w, k + EXTRA_EIGENVECTORS)[1]
        data.cache[("eig",) + key] = vecs
    if k <= 1 or n <= 2:
        labels = np.zeros(n, dtype=np.int64) if k <= 1 else np.arange(n, dtype=np.int64)
        return Clustering(labels, cluster_similarity(w, labels, terms))
    labels = _compact(spectral_partition(w, vecs, k, cfg.n_init, _rng(cfg, data)))
    return Clustering(labels, cluster_similarity(w, labels, terms))


def knn_spectral(data: ClassData, k: int, cfg: GroupingConfig) -> Clustering:
    """The paper's similarity on a sparse kNN graph, ARPACK embedding, NJW k-means selection."""
    n = len(data)
    t, q = _features(data, cfg)
    key = ("knnW", cfg.sigma, cfg.use_coords)
    w = data.cache.get(key)
    if w is None:
        w = knn_affinity(t, q, cfg.sigma, KNN_NEIGHBORS)
        data.cache[key] = w
    feats = t if q is None else np.concatenate([t, q], axis=1)
    k = min(k, distinct_rows(feats))
    terms = 1 if q is None else 2
    if k <= 1 or n <= 2:
        labels = np.zeros(n, dtype=np.int64) if k <= 1 else np.arange(n, dtype=np.int64)
        return Clustering(labels, cluster_similarity(w, labels, terms))
    ekey = ("knnE", cfg.sigma, cfg.use_coords, k)
    emb = data.cache.get(ekey)
    if emb is None:
        emb = sparse_embedding(w, k, cfg.seed)
        data.cache[ekey] = emb
    labels = _compact(spectral_partition(w, emb, k, cfg.n_init, _rng(cfg, data)))
    return Clustering(labels, cluster_similarity(w, labels, terms))


def _kmeans_on(x: np.ndarray, data: ClassData, k: int, cfg: GroupingConfig) -> Clustering:
    k = min(k, distinct_rows(x))
    runs = kmeans_runs(x, k, n_init=cfg.n_init, seed=_rng(cfg, data))
    best = int(np.argmin(runs.inertia))
    labels = _compact(runs.labels[best])
    return Clustering(labels, _kernel_similarity(x, labels, cfg.sigma))


def vote_reach(sigma: float, dims: int) -> float:
    """The squared distance at which a vote's similarity to a box, ``exp(-d^2 / (dims
    sigma^2))``, falls to :data:`VOTE_MIN_SIMILARITY`: ``dims sigma^2 ln(1 / min)``."""
    return dims * sigma ** 2 * math.log(1.0 / VOTE_MIN_SIMILARITY)


def vote(data: ClassData, k: int, cfg: GroupingConfig) -> Clustering:
    """k-means on the decoded boxes the cells vote for (least inertia of ``n_init`` seedings);
    ``reach`` from sigma (:func:`vote_reach`): the Grouper leaves the cells and pixels whose
    vote is farther than that from their cluster's mean box out of every instance."""
    result = _kmeans_on(data.descriptors, data, k, cfg)
    result.reach = vote_reach(cfg.sigma, data.descriptors.shape[1])
    return result


def kmeans_tq(data: ClassData, k: int, cfg: GroupingConfig) -> Clustering:
    """k-means on the normalised features ``[t, q]`` (``[t]`` without coordinates)."""
    t, q = _features(data, cfg)
    return _kmeans_on(t if q is None else np.concatenate([t, q], axis=1), data, k, cfg)


Method = Callable[[ClassData, int, GroupingConfig], Clustering]

_warm_up_lock = threading.Lock()
_warmed_up = False


def warm_up() -> None:
    """Pay the one-time costs of the first clustering in a process now: scikit-learn's
    neighbours and manifold modules (``knn-spectral``; 1.1-1.8 s to import on the project's
    2-core CPU, against 0.03-0.07 s for a re-clustering after it) and a first small LAPACK
    eigen-decomposition. Idempotent and thread-safe."""
    global _warmed_up
    with _warm_up_lock:
        if _warmed_up:
            return
        import sklearn.manifold  # noqa: F401
        import sklearn.neighbors  # noqa: F401

        w = np.ones((16, 16)) - np.eye(16)
        njw_eigenvectors(w, 2)
        _warmed_up = True


def warm_up_in_background() -> None:
    """:func:`warm_up` in a daemon thread, so that the first switch to ``knn-spectral`` in an
    interactive front end is not 1-2 s (the notebook's ``run_pfn`` starts it). Its CPU time
    counts in the process's: a test that measures ``time.process_time`` calls :func:`warm_up`
    first."""
    if not _warmed_up:
        threading.Thread(target=warm_up, name="pfn-grouping-warm-up", daemon=True).start()


@dataclass(frozen=True)
class GroupingMethod:
    """A grouping method and what its result depends on.

    ``cache_fields``: every :class:`~pfn_napari.config.GroupingConfig` field ``fn`` reads; the
    :class:`~pfn_napari.grouping.Grouper` keys its cached clusterings by ``(cells, method, k)``
    and these fields, so a field read but not declared would serve stale clusters.
    ``assign``: how the clusters reach full resolution when ``grouping.assign='auto'``:
    ``'cell'`` (nearest grid cell of the class) or ``'location'`` (nearest cluster box).
    ``sigma_role``: what ``grouping.sigma`` does in this method, one line (a widget's tooltip,
    a teaching sentence). Calling the entry calls ``fn``.
    """

    fn: Method
    cache_fields: tuple[str, ...]
    assign: str = "cell"
    sigma_role: str = ""

    def __call__(self, data: ClassData, k: int, cfg: GroupingConfig) -> Clustering:
        return self.fn(data, k, cfg)

    def knobs(self, cfg: GroupingConfig, name: str = "this") -> dict[str, Knob]:
        """Which of the front ends' knobs (:data:`KNOBS`) matter with this method over the
        settings ``cfg``, each with one line: what it does here, or why it does nothing.

        ``sigma`` matters when the method declares it (:attr:`cache_fields`; its line is
        :attr:`sigma_role`); ``tau`` only with the refinement by the counts (``cfg.refine``);
        ``min_size_frac`` only with the size filter (``cfg.size_filter``); ``count`` (an
        instance number typed for a class) always: every method clusters into ``k``."""
        role = self.sigma_role or "the width of the similarity the cells are grouped with"
        return {
            "sigma": Knob(True, f"sigma in '{name}': {role}") if "sigma" in self.cache_fields
            else Knob(False, f"the '{name}' method does not read sigma"),
            "tau": Knob(True, "a class is present when its count exceeds tau; the others are "
                              "taken out of the class map (refinement by the counts)")
            if cfg.refine else Knob(False, "the refinement is off (grouping.refine=false), the "
                                           "only step that reads tau"),
            "min_size_frac": Knob(True, "clusters smaller than this share of their class's "
                                        "cells are dropped")
            if cfg.size_filter else Knob(False, "the size filter is off "
                                                "(grouping.size_filter=false)"),
            "count": Knob(True, "the number of instances the class's cells are clustered into"),
        }


@dataclass(frozen=True)
class Knob:
    """One knob of a front end under a grouping method: whether it matters, and why."""

    matters: bool
    why: str  # one line: what it does there, or why it does nothing


#: The knobs the napari widget and the notebook show, as :meth:`GroupingMethod.knobs` names
#: them: ``grouping.sigma``, ``grouping.tau``, ``grouping.min_size_frac`` and a class's count.
KNOBS = ("sigma", "tau", "min_size_frac", "count")


def grouping_method(name: str) -> GroupingMethod:
    """The :data:`GROUPING_METHODS` entry of ``name``. A bare function registered there (a
    benchmark's) is taken as reading every field, so its cached clusterings are never stale."""
    entry = GROUPING_METHODS[name]
    if isinstance(entry, GroupingMethod):
        return entry
    return GroupingMethod(entry, tuple(f.name for f in fields(GroupingConfig)))


def method_knobs(name: str, cfg: GroupingConfig) -> dict[str, Knob]:
    """:meth:`GroupingMethod.knobs` of the method ``name`` (the front ends' entry point)."""
    return grouping_method(name).knobs(cfg, name)


#: name -> method. ``spectral`` is the paper's (the config default).
GROUPING_METHODS: dict[str, GroupingMethod] = {
    "spectral": GroupingMethod(
        spectral, ("sigma", "use_coords", "n_init", "seed"),
        sigma_role="the width of the similarity between cells: smaller splits more"),
    "vote": GroupingMethod(
        vote, ("sigma", "n_init", "seed"), assign="location",
        sigma_role="how far a pixel's vote may be from its instance's box: smaller leaves "
                   "out more pixels (at 0.5 in practice none)"),
    "knn-spectral": GroupingMethod(
        knn_spectral, ("sigma", "use_coords", "n_init", "seed"),
        sigma_role="the width of the similarity between neighbouring cells: smaller splits "
                   "more"),
    "kmeans": GroupingMethod(
        kmeans_tq, ("sigma", "use_coords", "n_init", "seed"),
        sigma_role="only the score of grouping.scoring=prob_x_similarity (the instances do "
                   "not change)"),
}


def register_grouping_method(name: str, method: GroupingMethod | Method) -> None:
    """Add (or replace) the method ``name``: ``grouping.method=<name>`` then validates and
    clusters with it. A bare function is taken as reading every field (:func:`grouping_method`)."""
    register_grouping_method_name(name)
    GROUPING_METHODS[name] = method
