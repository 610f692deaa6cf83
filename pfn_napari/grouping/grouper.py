"""Network outputs -> instances: refinement, per-class clustering, full-resolution masks.

:func:`group` is the pure entry point; :class:`Grouper` is the same computation with caches
for one :class:`~pfn_napari.structures.NetworkOutput`, for the napari widget: a changed count
re-runs only k-means, a changed sigma only the affinity and embedding, and the full-resolution
maps (upsampled class probabilities, nearest cells, upsampled locations: its
:class:`~pfn_napari.grouping.full_resolution.FullResolution`) are computed once.

Steps of :meth:`Grouper.run`:

1. Class maps: the grid map is ``argmax(class_probs)``; the full-resolution map is
   ``argmax(full_class_probs)`` when given, else the argmax of the bilinearly upsampled
   ``class_probs``. Both are refined by the counts (:func:`refine_class_map`,
   ``cfg.refine``).
2. For each class ``c`` of the refined grid map: k = max(1, floor(g_c + 0.5)) (or the
   override; ``cfg.count_source`` 'votes' / 'mean': the number of distinct boxes its cells
   vote for, or the mean of both, :mod:`~pfn_napari.grouping.votes`), cluster its cells with
   ``GROUPING_METHODS[cfg.method]``; clusters with fewer cells than ``cfg.min_size_frac`` of
   the class's cells are dropped (``cfg.size_filter``).
3. Full resolution (:mod:`~pfn_napari.grouping.full_resolution`): every pixel of class ``c``
   in the refined full map takes a cluster of class ``c``, that of its nearest class-``c``
   cell (``assign="cell"``) or the one whose mean box is nearest to its own (``"location"``).
   Pixels of dropped clusters, and of classes without grid cells, are background. A method's
   ``Clustering.reach`` (``vote``: from sigma) also leaves out the cells whose vote, and the
   pixels whose box, lies farther than it from their cluster's mean box.
4. Scores (``cfg.scoring``): ``mean_prob``: mean probability of the class over the instance's
   full-resolution pixels; ``prob_x_similarity``: that times the cluster's mean within-cluster
   similarity; ``ones``: 1; ``quality``: the logistic mask-quality score of a few numbers of
   the object (:mod:`~pfn_napari.grouping.quality`) with the weights ``cfg.quality``, the
   numbers kept in ``GroupingResult.features``.

The ImageNet step that may follow is a stage of its own (:mod:`pfn_napari.imagenet`): it reads
a :class:`GroupingResult` and returns one; nothing here runs a network.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import QUALITY_FEATURES, VOID, GroupingConfig
from ..errors import PFNError
from ..structures import Instances, NetworkOutput
from .cache import cache_key, remember
from .full_resolution import FullResolution, box_descriptors
from .geometry import infer_stride, pixel_xy
from .methods import ClassData, Clustering, grouping_method
from .quality import object_features, quality_score
from .refine import refine_class_map
from .spectral import normalise_by_max
from .votes import combine_counts, vote_count

@dataclass
class GroupingResult:
    """Everything one grouping run produced, for evaluation and for napari layers.

    Instance ``n`` (1-based in the label maps) is ``instances.masks[n - 1]``; instances are
    ordered by class, then by cluster (first cell in row-major order first); after the ImageNet
    step (:mod:`pfn_napari.imagenet`) come the objects it named (no grid cells;
    ``prior_labels``).
    """

    instances: Instances  # (N, H, W) masks at full resolution, classes, scores
    refined_class_map: np.ndarray  # (h, w) uint8 grid class map after refinement
    full_class_map: np.ndarray  # (H, W) uint8 full-resolution class map after refinement
    grid_labels: np.ndarray  # (h, w) int32 instance 1..N of each grid cell, 0 none/dropped
    centers: np.ndarray  # (N, 2) float32 (x, y) in pixels of each instance's mean decoded center
    boxes: np.ndarray  # (N, 4) float32 (x1, y1, x2, y2) in pixels, mean decoded box (nan if none)
    counts: np.ndarray  # (C,) float32 counts used (network's, with the overrides applied)
    cluster_counts: dict[int, int]  # class -> clusters asked for (k)
    stride: int  # grid stride of the input
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds
    # (H, W) uint8 classes the ImageNet step named, 0 elsewhere; None: the step did not run
    prior_labels: np.ndarray | None = None
    # (N, F) float64 each instance's config.QUALITY_FEATURES (grouping/quality.py); None
    # unless grouping.scoring is 'quality' (and after the ImageNet step, whose objects have none)
    features: np.ndarray | None = None

    @property
    def label_map(self) -> np.ndarray:
        """``(H, W)`` int32 instance 1..N of each pixel, 0 background."""
        return self.instances.label_map()


@dataclass
class Objects:
    """The instances a run has found so far, one entry each (in place of five parallel lists
    passed around): full-resolution mask, class, score, center ``(x, y)`` and box ``(x1, y1,
    x2, y2)`` in pixels (nan when the encoding has no box)."""

    masks: list[np.ndarray] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    centers: list[tuple] = field(default_factory=list)
    boxes: list[tuple] = field(default_factory=list)

    @classmethod
    def of(cls, result: GroupingResult) -> Objects:
        """The instances of ``result``, to edit (the ImageNet step's)."""
        inst = result.instances
        return cls(list(inst.masks), [int(c) for c in inst.classes],
                   [float(s) for s in inst.scores], [tuple(c) for c in result.centers],
                   [tuple(b) for b in result.boxes])

    def __len__(self) -> int:
        return len(self.masks)

    def add(self, mask: np.ndarray, cls: int, score: float, center: tuple, box: tuple) -> None:
        self.masks.append(mask)
        self.classes.append(cls)
        self.scores.append(score)
        self.centers.append(center)
        self.boxes.append(box)

    def kept(self, keep: np.ndarray) -> Objects:
        """The objects where ``keep`` ``(N,)`` is True, in their order."""
        pick = np.flatnonzero(keep)
        return Objects(*([values[i] for i in pick] for values in (
            self.masks, self.classes, self.scores, self.centers, self.boxes)))

    def instances(self, size: tuple[int, int], image_id: str | int = "") -> Instances:
        """:class:`Instances` ``(N, H, W)`` of ``size``."""
        if not self.masks:
            return Instances.empty(*size, image_id=image_id)
        return Instances(np.stack(self.masks), np.array(self.classes), np.array(self.scores),
                         image_id=image_id)


def _one_blas_thread() -> Any:
    """A context in which BLAS (numpy's and scipy's OpenBLAS) uses one thread (threadpoolctl,
    which scikit-learn requires). The libraries are looked up on each call (about 3 ms): one
    loaded after a cached lookup (scipy's own OpenBLAS) would keep its threads."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


class Grouper:
    """Grouping of one :class:`NetworkOutput`, with caches for repeated runs.

    >>> grouper = Grouper(net)                                   # doctest: +SKIP
    >>> result = grouper.run(cfg)                                # doctest: +SKIP
    >>> result = grouper.run(cfg, count_override={15: 3})        # only k-means re-runs
    """

    def __init__(self, net: NetworkOutput, eager: bool = False) -> None:
        """``eager``: compute spectral embeddings even for classes with one instance, so that
        raising a count later re-runs only k-means, and cluster with one BLAS thread (the
        napari widget's and the notebook's setting)."""
        probs = np.asarray(net.class_probs)
        locs = np.asarray(net.locations)
        if probs.ndim != 3 or locs.ndim != 3 or probs.shape[1:] != locs.shape[1:]:
            raise PFNError(f"NetworkOutput: class_probs {probs.shape} and locations {locs.shape} "
                           "must be (C+1, h, w) and (L, h, w) on the same grid")
        self.net = net
        self.eager = eager
        self.num_classes = probs.shape[0] - 1
        counts = np.asarray(net.counts, dtype=np.float32).reshape(-1)
        if len(counts) != self.num_classes:
            raise PFNError(f"NetworkOutput: {len(counts)} counts for {self.num_classes} classes")
        self.image_size = (int(net.image_size[0]), int(net.image_size[1]))
        try:
            self.stride = infer_stride(probs.shape[1:], self.image_size)
        except ValueError as exc:
            raise PFNError(f"NetworkOutput: {exc}") from None
        if net.full_class_probs is not None and \
                tuple(np.shape(net.full_class_probs)) != (probs.shape[0], *self.image_size):
            raise PFNError(f"NetworkOutput: full_class_probs {np.shape(net.full_class_probs)} is "
                           f"not (C+1, H, W) = ({probs.shape[0]}, {self.image_size})")
        self.grid_shape = probs.shape[1:]
        self.grid_class = probs.argmax(0).astype(np.uint8)  # (h, w)
        self.full = FullResolution(net, self.stride)  # step 3: the pixels' side, cached
        self._class_data: dict[str, ClassData] = {}
        self._clusterings: dict[tuple, Clustering] = {}

    # ------------------------------------------------------------------ cached maps
    @property
    def full_probs(self) -> np.ndarray:
        """``(C+1, H, W)`` float32 full-resolution class probabilities
        (:attr:`FullResolution.probs`)."""
        return self.full.probs

    @property
    def full_class(self) -> np.ndarray:
        """``(H, W)`` uint8 unrefined full-resolution class map."""
        return self.full.class_map

    def class_data(self, cls: int, cell_mask: np.ndarray) -> ClassData:
        """Cached :class:`ClassData` of class ``cls`` on the cells ``cell_mask`` ``(h, w)``."""
        key = cache_key(np.array([cls]), cell_mask)
        data = self._class_data.get(key)
        if data is not None:
            return data
        rows, cols = np.nonzero(cell_mask)
        locs = np.asarray(self.net.locations, dtype=np.float64)[:, rows, cols].T  # (n, L)
        xy = pixel_xy(self.image_size, rows * self.stride, cols * self.stride)  # (n, 2)
        data = ClassData(cls=cls, rows=rows, cols=cols, locations=locs,
                         descriptors=box_descriptors(locs, self.net.encoding, xy),
                         t=normalise_by_max(locs), q=normalise_by_max(xy), key=key)
        data.cache["eager"] = self.eager
        return remember(self._class_data, key, data)

    # ------------------------------------------------------------------ the run
    def counts_used(self, count_override: dict[int, int] | None) -> np.ndarray:
        """The network's counts with ``count_override`` ``{class: number}`` applied."""
        counts = np.asarray(self.net.counts, dtype=np.float32).reshape(-1).copy()
        for cls, num in (count_override or {}).items():
            if not 1 <= int(cls) <= self.num_classes:
                raise PFNError(f"count override for class {cls}: classes are 1..{self.num_classes}")
            if num < 0:
                raise PFNError(f"count override for class {cls}: {num} instances is negative")
            counts[int(cls) - 1] = float(num)
        return counts

    def instance_number(self, data: ClassData, count: float, cfg: GroupingConfig,
                        overridden: bool = False) -> int:
        """``k`` of one class: ``count`` (the head's, or the user's override: always used as
        given) rounded, or combined with the boxes its cells vote for
        (``cfg.count_source``, :mod:`~pfn_napari.grouping.votes`; center-only encodings have
        no boxes and keep the head's count). The vote count is cached per setting."""
        if overridden or cfg.count_source == "head" or data.descriptors.shape[1] < 6:
            return combine_counts(count, 0, "head")
        votes = cfg.votes
        key = ("votes", votes.iou, votes.min_frac, votes.merge_iou)
        if key not in data.cache:
            data.cache[key] = vote_count(data.descriptors[:, 2:6], votes.iou, votes.min_frac,
                                         votes.merge_iou)
        return combine_counts(count, data.cache[key], cfg.count_source)

    def instance_numbers(self, cfg: GroupingConfig,
                         count_override: dict[int, int] | None = None) -> dict[int, int]:
        """``{class: k}`` for every class the grouping clusters (the refined grid map's
        classes), without clustering: what the napari count boxes start at."""
        counts = self.counts_used(count_override)
        grid_map = refine_class_map(self.grid_class, counts, cfg.tau) if cfg.refine \
            else self.grid_class
        return self._instance_numbers(grid_map, counts, count_override, cfg)

    def _instance_numbers(self, grid_map: np.ndarray, counts: np.ndarray,
                          count_override: dict[int, int] | None, cfg: GroupingConfig
                          ) -> dict[int, int]:
        """:meth:`instance_numbers` on an already refined ``grid_map`` and its ``counts``."""
        overridden = {int(c) for c in (count_override or {})}
        out = {}
        for cls in np.unique(grid_map):
            cls = int(cls)
            if cls == 0 or cls == VOID or cls > self.num_classes:
                continue
            data = self.class_data(cls, grid_map == cls)
            out[cls] = self.instance_number(data, float(counts[cls - 1]), cfg, cls in overridden)
        return out

    def cluster(self, data: ClassData, k: int, cfg: GroupingConfig) -> Clustering:
        """Cached clustering of one class's cells into (up to) ``k`` clusters; the cache key
        holds the fields of ``cfg`` the method declares (``GroupingMethod.cache_fields``)."""
        method = grouping_method(cfg.method)
        settings = tuple((name, getattr(cfg, name)) for name in method.cache_fields)
        key = (data.key, cfg.method, k, settings)
        result = self._clusterings.get(key)
        if result is None:
            result = method(data, k, cfg)
            remember(self._clusterings, key, result)
        return result

    def run(self, cfg: GroupingConfig, count_override: dict[int, int] | None = None
            ) -> GroupingResult:
        """Group the cached network output with ``cfg`` (see the module docstring).

        An eager (interactive) Grouper runs with one BLAS thread: its matrices are small, and
        on a busy 2-core machine OpenBLAS's second thread turned a 10-30 ms re-clustering
        into 0.1-1.3 s (``benchmarks/recluster.py``)."""
        if not self.eager:
            return self._run(cfg, count_override)
        with _one_blas_thread():
            return self._run(cfg, count_override)

    def _run(self, cfg: GroupingConfig, count_override: dict[int, int] | None
             ) -> GroupingResult:
        cfg.validate()
        timings: dict[str, float] = {}
        start = time.perf_counter()
        counts = self.counts_used(count_override)
        grid_map = self.grid_class
        full_map = self.full_class
        if cfg.refine:
            grid_map = refine_class_map(grid_map, counts, cfg.tau)
            full_map = refine_class_map(full_map, counts, cfg.tau)
        timings["class_maps"] = time.perf_counter() - start
        grid_labels = np.zeros(self.grid_shape, dtype=np.int32)
        objects = Objects()
        features: list[np.ndarray] = []  # (F,) per object, scoring 'quality' only
        t0 = time.perf_counter()
        cluster_counts = self._instance_numbers(grid_map, counts, count_override, cfg)
        t_cluster, t_full = time.perf_counter() - t0, 0.0
        for cls, k in cluster_counts.items():
            seconds = self._class_instances(cls, k, float(counts[cls - 1]), grid_map == cls,
                                            full_map == cls, cfg, objects, grid_labels,
                                            features)
            t_cluster, t_full = t_cluster + seconds[0], t_full + seconds[1]
        timings["cluster"] = t_cluster
        timings["full_resolution"] = t_full
        timings["total"] = time.perf_counter() - start
        return GroupingResult(
            instances=objects.instances(self.image_size),
            refined_class_map=grid_map.astype(np.uint8),
            full_class_map=full_map.astype(np.uint8),
            grid_labels=grid_labels,
            centers=np.asarray(objects.centers, dtype=np.float32).reshape(-1, 2),
            boxes=np.asarray(objects.boxes, dtype=np.float32).reshape(-1, 4),
            counts=counts,
            cluster_counts=cluster_counts,
            stride=self.stride,
            timings=timings,
            features=np.asarray(features, dtype=np.float64).reshape(
                len(features), len(QUALITY_FEATURES)) if cfg.scoring == "quality" else None,
        )

    def _class_instances(self, cls: int, k: int, count: float, cell_mask: np.ndarray,
                         pixel_mask: np.ndarray, cfg: GroupingConfig, objects: Objects,
                         grid_labels: np.ndarray, features: list[np.ndarray]
                         ) -> tuple[float, float]:
        """Steps 2-4 of :meth:`run` for one class (``count``: the count used for it):
        cluster its cells ``cell_mask`` ``(h, w)`` into ``k``, size filter, its
        full-resolution pixels ``pixel_mask`` ``(H, W)`` to the clusters, scores. Appends the
        instances to ``objects`` (and, for ``scoring='quality'``, their features to
        ``features``) and numbers their cells in ``grid_labels``; returns the seconds of
        ``(clustering, full resolution)``."""
        t0 = time.perf_counter()
        data = self.class_data(cls, cell_mask)  # cached by instance_numbers
        clustering = self.cluster(data, k, cfg)
        t1 = time.perf_counter()
        labels = clustering.labels
        m = int(labels.max()) + 1
        sizes = np.bincount(labels, minlength=m)
        keep = np.ones(m, dtype=bool)
        if cfg.size_filter:
            keep = sizes >= cfg.min_size_frac * len(data)
        pixels = self.full.pixels(cls, cell_mask, pixel_mask)
        if len(pixels) == 0:
            return t1 - t0, time.perf_counter() - t1
        desc = data.descriptors
        mean_box = np.stack([np.bincount(labels, weights=desc[:, i], minlength=m)
                             for i in range(desc.shape[1])], 1) / sizes[:, None]  # (m, D)
        assign = grouping_method(cfg.method).assign if cfg.assign == "auto" else cfg.assign
        member, pix_label = self.full.assign(data, pixels, clustering, mean_box, keep, assign)
        valid = pix_label >= 0
        pix_count = np.bincount(pix_label[valid], minlength=m)
        prob_sum = np.bincount(pix_label[valid], weights=pixels.prob[valid], minlength=m)
        big_h, big_w = self.image_size
        for j in range(m):
            if not keep[j] or pix_count[j] == 0:
                continue
            mask = np.zeros((big_h, big_w), dtype=bool)
            sel = pix_label == j
            mask[pixels.py[sel], pixels.px[sel]] = True
            cells = (labels == j) & member
            mean_prob = prob_sum[j] / pix_count[j]
            if cfg.scoring == "ones":
                score = 1.0
            elif cfg.scoring == "quality":
                member_boxes = desc[cells, 2:6] if desc.shape[1] >= 6 else np.zeros((0, 4))
                feats = object_features(mask, mean_prob, float(clustering.similarity[j]),
                                        member_boxes, mean_box[j, 2:6], count, k)
                features.append(feats)
                score = quality_score(feats, np.asarray(cfg.quality[1:]), cfg.quality[0])
            else:
                score = mean_prob
                if cfg.scoring == "prob_x_similarity":
                    score *= float(clustering.similarity[j])
            b = mean_box[j]
            objects.add(mask, cls, score, (b[0] * big_w, b[1] * big_h),
                        (b[2] * big_w, b[3] * big_h, b[4] * big_w, b[5] * big_h)
                        if len(b) >= 6 else (np.nan,) * 4)
            grid_labels[data.rows[cells], data.cols[cells]] = len(objects)
        return t1 - t0, time.perf_counter() - t1


def group(net: NetworkOutput, cfg: GroupingConfig | None = None,
          count_override: dict[int, int] | None = None) -> Instances:
    """Instances at full resolution ``(H, W) = net.image_size`` from one network output.

    Args:
        net: the networks' output (class probabilities and locations on a stride-s grid).
        cfg: grouping settings (default :class:`GroupingConfig`: the paper's spectral
            clustering, sigma 0.5, refinement and size filter on).
        count_override: ``{class: number}`` replacing the predicted count of those classes
            (used for the refinement too).

    Returns:
        :class:`Instances`: ``(N, H, W)`` disjoint masks, classes 1..C, scores.
    """
    return Grouper(net).run(cfg or GroupingConfig(), count_override).instances
