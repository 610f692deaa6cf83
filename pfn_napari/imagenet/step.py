"""The ImageNet step: a stage after the grouping, ``GroupingResult -> GroupingResult``.

Beyond the paper. Given the image the networks saw, the category network's full-resolution
probabilities and the ImageNet classifier's dense evidence (:func:`imagenet_evidence`), it

1. names objects on the refined class map's background (:func:`~.regions.prior_fill`) and
   appends them as instances, scored by their mean evidence;
2. with ``imagenet.check.enabled``, shows every object of a class the classifier knows to it, cropped
   (``classify_crops``, :func:`~.regions.check_instances`): objects it sees nothing of are
   dropped (their pixels and cells become background), objects it is sure are another class
   relabelled;
3. with ``imagenet.shape='grabcut'``, fits the kept named objects' outlines to the photo
   (:func:`~.regions.grabcut_shape`);
4. paints the named objects into ``full_class_map`` (``prior_labels`` holds them alone).

The grouping before it is untouched: the step reads only the grouping's result, so
``name_missed_objects(group_result, ...)`` and ``Predictor.group`` agree for the same settings.
:class:`ImageNetStep` is the same computation with caches for one image (napari's re-runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from ..config import ImageNetConfig
from ..errors import PFNError
from ..grouping import GroupingResult, Objects
from ..grouping.cache import cache_key, remember
from ..grouping.geometry import infer_stride, upsample_bilinear
from .regions import check_instances, grabcut_shape, prior_fill

#: ``classify_crops(image (H, W, 3) uint8, boxes (N, 4) x0 y0 x1 y1) -> (N, C)`` evidence.
CropClassifier = Callable[[np.ndarray, np.ndarray], np.ndarray]


def imagenet_evidence(model: Any, image: np.ndarray) -> np.ndarray:
    """``(C, ceil(H/32), ceil(W/32))`` float32: the ImageNet classifier of ``model`` (a
    :class:`~pfn_napari.inference.PFNModel`; loaded at its first use) run densely on ``image``
    ``(H, W, 3)`` uint8, the photo as the networks saw it."""
    import torch

    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()  # a copy: may be read-only
    with torch.inference_mode():
        return model.imagenet_prior()(x.to(model.device))[0].float().cpu().numpy()


class ImageNetStep:
    """The step on one image, with caches for repeated runs: the fill per refined class map and
    settings, the classifier's verdict per box, GrabCut's outline per region.

    Args:
        probs: ``(C+1, H, W)`` the category network's full-resolution probabilities (the
            ``Grouper.full_probs`` of the image), or a function giving them when first needed.
        evidence: ``(C, h32, w32)`` the dense ImageNet evidence (:func:`imagenet_evidence`), or
            a function giving it when first needed (the Predictor runs the classifier lazily).
        image: ``(H, W, 3)`` uint8, the photo the networks saw: the check and GrabCut need it
            and are skipped without it.
        classify_crops: ``ImageNetPrior.classify_crops``; the check is skipped without it.
    """

    def __init__(self, probs: np.ndarray | Callable[[], np.ndarray],
                 evidence: np.ndarray | Callable[[], np.ndarray],
                 image: np.ndarray | None = None,
                 classify_crops: CropClassifier | None = None) -> None:
        self._probs_source, self._evidence_source = probs, evidence
        self._probs: np.ndarray | None = None
        self._evidence: np.ndarray | None = None
        self._covered: np.ndarray | None = None
        self.image = image
        self.classify_crops = classify_crops
        self._fills: dict[tuple, Any] = {}
        self._crop_evidence: dict[tuple, np.ndarray] = {}
        self._shapes: dict[str, np.ndarray] = {}

    @property
    def probs(self) -> np.ndarray:
        """``(C+1, H, W)`` float32 full-resolution class probabilities."""
        if self._probs is None:
            src = self._probs_source
            self._probs = np.asarray(src() if callable(src) else src, dtype=np.float32)
        return self._probs

    @property
    def evidence(self) -> np.ndarray:
        """``(C, H, W)`` float32 the ImageNet evidence upsampled to the image."""
        if self._evidence is None:
            src = self._evidence_source
            ev = np.asarray(src() if callable(src) else src, dtype=np.float32)
            num_classes, size = len(self.probs) - 1, self.probs.shape[1:]
            if ev.ndim != 3 or len(ev) != num_classes:
                raise PFNError(f"ImageNet evidence {ev.shape} is not (C, h, w) with "
                               f"C = {num_classes}")
            try:
                stride = infer_stride(ev.shape[1:], size)
            except ValueError as exc:
                raise PFNError(f"ImageNet evidence: {exc}") from None
            self._covered = ev.reshape(len(ev), -1).max(1) > 0  # (C,)
            self._evidence = upsample_bilinear(ev, size, stride)
        return self._evidence

    @property
    def covered(self) -> np.ndarray:
        """``(C,)`` bool, the classes with ImageNet evidence (person has none)."""
        if self._covered is None:
            _ = self.evidence
        return self._covered

    # ------------------------------------------------------------------ the parts
    def fill(self, full_map: np.ndarray, cfg: ImageNetConfig) -> Any:
        """:func:`prior_fill` of the refined ``full_map``, cached: a new count, sigma or method
        that leaves the map as it was does not fill again."""
        settings = (cfg.weight, cfg.eps, cfg.min_frac, cfg.touch)
        key = (cache_key(full_map),) + settings
        found = self._fills.get(key)
        if found is None:
            found = remember(self._fills, key, prior_fill(full_map, self.probs, self.evidence,
                                                           self.covered, *settings))
        return found

    def crop_classes(self, masks: list[np.ndarray], classes: list[int]) -> np.ndarray:
        """``(N, C)`` what ``classify_crops`` says of each object of a covered class (zeros for
        the others), cached by the object's box."""
        out = np.zeros((len(masks), len(self.covered)), dtype=np.float32)
        todo, keys = [], []
        for n, (mask, cls) in enumerate(zip(masks, classes)):
            if not self.covered[cls - 1]:
                continue
            ys, xs = np.nonzero(mask)
            key = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            if key in self._crop_evidence:
                out[n] = self._crop_evidence[key]
            else:
                todo.append(n)
                keys.append(key)
        if todo:
            found = np.asarray(self.classify_crops(self.image, np.asarray(keys, np.float64)),
                               dtype=np.float32).reshape(len(todo), len(self.covered))
            for n, key, row in zip(todo, keys, found):
                out[n] = remember(self._crop_evidence, key, row)
        return out

    def shape(self, mask: np.ndarray, free: np.ndarray) -> np.ndarray:
        """:func:`grabcut_shape` of one named region inside ``free``, cached per region."""
        key = cache_key(mask, free)
        shaped = self._shapes.get(key)
        if shaped is None:
            shaped = remember(self._shapes, key, grabcut_shape(self.image, mask, free))
        return shaped

    # ------------------------------------------------------------------ the run
    def run(self, result: GroupingResult, cfg: ImageNetConfig) -> GroupingResult:
        """``result`` with the step applied (see the module docstring); ``result`` itself when
        the step is off (``cfg.active`` False)."""
        if not cfg.active:
            return result
        cfg.validate()
        start = time.perf_counter()
        timings = dict(result.timings)
        objects = Objects.of(result)
        n_net = len(objects)
        fill = self.fill(result.full_class_map, cfg)
        for mask, cls, score in zip(fill.masks, fill.classes, fill.scores):
            # a named object's center and box are set by _painted, from its final mask
            objects.add(mask, int(cls), float(score), (np.nan, np.nan), (np.nan,) * 4)
        keep, found = np.ones(len(objects), dtype=bool), list(objects.classes)
        check = cfg.check
        if check.enabled and self.classify_crops is not None and self.image is not None:
            t1 = time.perf_counter()  # on the regions as named: no GrabCut for dropped ones
            keep, checked = check_instances(
                np.asarray(objects.classes, np.int64), np.arange(len(objects)) >= n_net,
                self.crop_classes(objects.masks, objects.classes), self.covered,
                check.any, check.named, check.relabel)
            objects.classes = checked.tolist()
            timings["imagenet_check"] = time.perf_counter() - t1
        if cfg.shape == "grabcut" and self.image is not None:
            t1 = time.perf_counter()
            free = result.full_class_map == 0  # (H, W) the background the step may name
            for n in range(n_net, len(objects)):
                if keep[n]:
                    objects.masks[n] = self.shape(objects.masks[n], free)
                    free &= ~objects.masks[n]
                    keep[n] = objects.masks[n].any()  # another object's outline took it all
            timings["imagenet_shape"] = time.perf_counter() - t1
        out = _painted(result, objects, n_net, keep, found)
        timings["imagenet"] = time.perf_counter() - start
        timings["total"] = timings.get("total", 0.0) + timings["imagenet"]
        out.timings = timings
        return out


def _painted(result: GroupingResult, objects: Objects, n_net: int, keep: np.ndarray,
             found: list[int]) -> GroupingResult:
    """The result with the checked objects' classes painted into the class maps, the named
    objects into ``full_class_map`` and ``prior_labels``, and the dropped ones removed."""
    big_h, big_w = result.full_class_map.shape
    prior_labels = np.zeros((big_h, big_w), dtype=np.uint8)
    full_map, grid_map = result.full_class_map.copy(), result.refined_class_map.copy()
    grid_labels = result.grid_labels
    for n, mask in enumerate(objects.masks):
        if n >= n_net:
            prior_labels[mask] = objects.classes[n] if keep[n] else 0
        elif not keep[n] or objects.classes[n] != found[n]:
            full_map[mask] = objects.classes[n] if keep[n] else 0
            grid_map[grid_labels == n + 1] = objects.classes[n] if keep[n] else 0
    full_map = np.where(prior_labels > 0, prior_labels, full_map)
    for n in range(n_net, len(objects)):  # the named objects: their own box and center
        ys, xs = np.nonzero(objects.masks[n])
        if len(ys):
            objects.centers[n] = (xs.mean(), ys.mean())
            objects.boxes[n] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    if not keep.all():
        new_index = np.concatenate([[0], np.cumsum(keep) * keep])  # old 1..N -> new
        grid_labels = new_index[grid_labels].astype(np.int32)
        objects = objects.kept(keep)
    instances = objects.instances((big_h, big_w), result.instances.image_id)
    return replace(result, instances=instances, refined_class_map=grid_map.astype(np.uint8),
                   full_class_map=full_map.astype(np.uint8), grid_labels=grid_labels,
                   centers=np.asarray(objects.centers, dtype=np.float32).reshape(-1, 2),
                   boxes=np.asarray(objects.boxes, dtype=np.float32).reshape(-1, 4),
                   prior_labels=prior_labels, features=None)  # named objects have none


def name_missed_objects(result: GroupingResult, cfg: ImageNetConfig, probs: np.ndarray,
                        evidence: np.ndarray, image: np.ndarray | None = None,
                        classify_crops: CropClassifier | None = None) -> GroupingResult:
    """The ImageNet step on one grouping result (the pure form of :class:`ImageNetStep`).

    Args:
        result: the grouping's result (:meth:`pfn_napari.grouping.Grouper.run`).
        cfg: the step's settings (``PFNConfig.imagenet``); off: ``result`` is returned.
        probs: ``(C+1, H, W)`` the category network's full-resolution probabilities.
        evidence: ``(C, h32, w32)`` the classifier's dense evidence (:func:`imagenet_evidence`).
        image: ``(H, W, 3)`` uint8 the photo the networks saw (check and GrabCut need it).
        classify_crops: ``ImageNetPrior.classify_crops`` (the check needs it).
    """
    return ImageNetStep(probs, evidence, image, classify_crops).run(result, cfg)
