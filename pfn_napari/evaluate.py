"""AP^r, AP^r_vol and mean IoU, per class and averaged, plus COCO results JSON in and out.

The default protocol (``ap_style="voc"``) is SDS's released MATLAB evaluation
(``bharath272/sds_eccv2014``: ``evaluation/run_benchmark.m``, ``evaluation/generalized_det_eval.m``,
``get_ap.m``, ``get_gt_overlaps.m``), the one the PFN paper reports with:

* per class, every predicted instance of the whole set is ranked by score (a *stable* sort:
  equal scores keep dataset order, then the instance order within an image, as MATLAB's
  ``sort(..., 'descend')`` does);
* in that order each prediction takes the highest mask IoU among the not yet matched
  ground-truth instances of its class in its image (the first one on equal IoUs); it is a true
  positive if that IoU is **strictly greater** than the threshold (and the instance is then
  used), else a false positive (also when every instance is already used);
* every ground-truth instance counts as a positive (there is no "difficult");
* AP is the all-points area under the precision/recall curve made monotone (VOC 2010+
  ``VOCap``); AP^r_vol is the mean of the APs at IoU 0.1, 0.2, ..., 0.9.

What a user sees is counted too: every predicted instance is a *shown* object; it is *right*
when its mask has IoU >= 0.5 (:data:`PRECISION_IOU`) with a true instance of its class in its
image, each true instance matched at most once, greedily by score (:func:`right_objects`: the
rule of ``ap_style="coco"`` at 0.5, whatever the AP style). Precision is right / shown, per
class and over every shown object; false objects per image is (shown - right) / images. An
image without any true object makes every object shown on it false.

Void (255) pixels of the ground truth are left out of both areas and of the intersection
(SDS ran on SBD masks, which have no void). A class without any ground-truth instance has no
AP (``NaN`` here, ``null`` in JSON) and is left out of the means; SDS averages over all 20
classes, which is the same on VOC 2012 val where every class has instances.

``ap_style="coco"`` is pycocotools' ``COCOeval`` with one IoU threshold, one area range and no
crowd (matching IoU ``>=`` threshold, best IoU among unmatched instances, 101-point
interpolated precision); ``ap_style="mnc"`` is the rule of MNC's and FCIS's Python ports
(best IoU over *all* instances of the class, ``>=``, a second hit on a used instance is a false
positive, 11-point VOC 2007 AP). All three share the IoUs (pycocotools RLE) and void handling.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .config import VOID
from .data.coco import segmentation_rle
from .errors import DatasetError
from .output import atomic_write_text, check_output_dir
from .structures import Instances, Sample

AP_STYLES: tuple[str, ...] = ("voc", "coco", "mnc")
#: The thresholds of the paper's tables.
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
#: AP^r_vol averages AP^r over these (SDS: ``0.1 * t`` for t = 1..9).
VOL_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: What ``pfn predict`` writes beside predictions.json: each image's id and file.
PREDICT_IMAGES = "images.json"
#: pycocotools' recall points of the 101-point interpolated AP.
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)
#: A shown object is right when its IoU with a true instance of its class is at least this.
PRECISION_IOU = 0.5


def threshold_key(threshold: float) -> str:
    """``0.5 -> "0.5"``: the key of a threshold in dicts and JSON."""
    return f"{threshold:g}"


# ----------------------------------------------------------------------------- masks and IoU

def encode_masks(masks: np.ndarray, void: np.ndarray | None = None) -> list[dict]:
    """``(N, H, W)`` bool -> N pycocotools RLEs (``counts`` as bytes), with the ``(H, W)``
    ``void`` pixels (optional) removed. One mask at a time: the temporary memory is one
    ``(H, W)`` copy, whatever N."""
    masks = np.asarray(masks, dtype=bool)
    rles = []
    for mask in masks:  # (H, W)
        if void is not None:
            mask = mask & ~void
        rles.append(mask_utils.encode(np.asfortranarray(mask[:, :, None], dtype=np.uint8))[0])
    return rles


@dataclass
class EncodedInstances:
    """Predicted instances kept as pycocotools RLEs, never as an ``(N, H, W)`` array: what a COCO
    results file holds, evaluated with memory that does not grow with N times the image area.
    :meth:`Evaluator.add` takes it wherever it takes :class:`Instances`."""

    rles: list[dict]  # N pycocotools RLEs of size image_size
    classes: np.ndarray  # (N,) int64, 1..C
    scores: np.ndarray  # (N,) float32
    image_size: tuple[int, int]  # (H, W)
    image_id: str | int = ""

    def __len__(self) -> int:
        return len(self.rles)

    def class_map(self) -> np.ndarray:
        """``(H, W)`` uint8 class of each pixel's instance (later instances on top), 0
        elsewhere; decodes one mask at a time."""
        out = np.zeros(self.image_size, dtype=np.uint8)
        for rle, c in zip(self.rles, self.classes):
            out[mask_utils.decode(rle).astype(bool)] = c
        return out

    def to_instances(self) -> Instances:
        """All masks decoded: an :class:`Instances` (``N x H x W`` bytes)."""
        h, w = self.image_size
        masks = np.zeros((len(self), h, w), dtype=bool)
        for n, rle in enumerate(self.rles):
            masks[n] = mask_utils.decode(rle).astype(bool)
        return Instances(masks, self.classes, self.scores, self.image_id)


def _without_void(rles: list[dict], void: np.ndarray | None) -> list[dict]:
    if void is None or not rles:
        return rles
    keep = mask_utils.encode(np.asfortranarray(~void[:, :, None], dtype=np.uint8))[0]
    return [mask_utils.merge([rle, keep], intersect=True) for rle in rles]


def mask_ious(pred_masks: np.ndarray | list[dict], gt_masks: np.ndarray,
              void: np.ndarray | None = None) -> np.ndarray:
    """Mask IoUs with void pixels left out of both areas and the intersection.

    Args:
        pred_masks: ``(N, H, W)`` bool, or N pycocotools RLEs.
        gt_masks: ``(G, H, W)`` bool.
        void: optional ``(H, W)`` bool; these pixels are removed from every mask first.

    Returns:
        ``(N, G)`` float64 IoU (0 where a union is empty), computed by ``pycocotools.mask.iou``.
    """
    if void is not None and not void.any():
        void = None
    if len(pred_masks) == 0 or len(gt_masks) == 0:
        return np.zeros((len(pred_masks), len(gt_masks)), dtype=np.float64)
    pred_rles = (_without_void(list(pred_masks), void) if isinstance(pred_masks, list)
                 else encode_masks(pred_masks, void))
    ious = mask_utils.iou(pred_rles, encode_masks(gt_masks, void), [0] * len(gt_masks))
    return np.asarray(ious, dtype=np.float64).reshape(len(pred_masks), len(gt_masks))


# ----------------------------------------------------------------------------- matching

def _stable_descending(scores: np.ndarray) -> np.ndarray:
    """Indices sorting ``scores`` high to low; equal scores keep their order."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def match_image(scores: np.ndarray, ious: np.ndarray, threshold: float,
                style: str = "voc") -> np.ndarray:
    """True positives of one image and one class.

    Args:
        scores: ``(N,)`` scores of the class's predictions in the image.
        ious: ``(N, G)`` IoUs with the class's ground-truth instances in the image.
        threshold: the IoU threshold.
        style: ``"voc"`` (SDS), ``"coco"`` (COCOeval) or ``"mnc"`` (MNC/FCIS), see the module
            docstring.

    Returns:
        ``(N,)`` bool, in the order of ``scores`` (not sorted).
    """
    n, g = ious.shape
    tp = np.zeros(n, dtype=bool)
    if n == 0 or g == 0:
        return tp
    used = np.zeros(g, dtype=bool)
    for d in _stable_descending(scores):
        row = ious[d]
        if style == "voc":  # SDS overlaps_to_labels: best unmatched, strictly greater
            if used.all():
                break
            free = np.flatnonzero(~used)
            best = free[int(np.argmax(row[free]))]
            if row[best] > threshold:
                tp[d] = True
                used[best] = True
        elif style == "coco":  # COCOeval.evaluateImg: best unmatched >= thr (last on ties)
            best_iou, best = min(threshold, 1 - 1e-10), -1
            for j in range(g):
                if used[j] or row[j] < best_iou:
                    continue
                best_iou, best = row[j], j
            if best >= 0:
                tp[d] = True
                used[best] = True
        elif style == "mnc":  # MNC voc_eval_sds: best over all, >=, duplicates are FP
            best = int(np.argmax(row))
            if row[best] >= threshold and not used[best]:
                tp[d] = True
                used[best] = True
        else:
            raise ValueError(f"ap_style {style!r}: choose one of {AP_STYLES}")
    return tp


def visible_truth(gt: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(masks (G, H, W) bool, classes (G,) int64, void (H, W) bool)``: the true instances of
    ``gt`` with their void pixels left out, those with no pixel left dropped."""
    void = (gt.instance_map == VOID) | (gt.class_map == VOID)  # (H, W)
    masks = gt.instance_masks() & ~void[None]  # (K, H, W)
    visible = masks.any(axis=(1, 2))  # (K,)
    return masks[visible], np.asarray(gt.instance_classes, dtype=np.int64)[visible], void


def pixel_confusion(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """``(C + 1, C + 1)`` int64 pixel counts, rows the true class, columns the predicted one, of
    the paired non-void pixels ``truth`` and ``predicted`` (same shape, classes 0..C)."""
    c = num_classes
    index = truth.astype(np.int64) * (c + 1) + predicted.astype(np.int64)
    return np.bincount(index.ravel(), minlength=(c + 1) ** 2).reshape(c + 1, c + 1)


def right_objects(scores: np.ndarray, ious: np.ndarray,
                  threshold: float = PRECISION_IOU) -> np.ndarray:
    """Which shown objects of one class in one image are right.

    Args:
        scores: ``(N,)`` scores of the class's predictions in the image.
        ious: ``(N, G)`` IoUs with the class's true instances in the image (void left out).
        threshold: the IoU a right object reaches (``>=``).

    Returns:
        ``(N,)`` bool in the order of ``scores``: from the highest score down, each prediction
        takes the not yet matched true instance of highest IoU, and is right when that IoU is
        at least ``threshold`` (COCOeval's greedy matching; ``G == 0``: all False).
    """
    return match_image(scores, ious, threshold, "coco")


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-points AP (VOC 2010+ ``VOCap``): area under the monotone precision envelope."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # envelope, right to left
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def voc07_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """11-point AP (VOC 2007; MNC/FCIS ``voc_ap(..., use_07_metric=True)``)."""
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        above = recall >= t
        ap += (float(np.max(precision[above])) if above.any() else 0.0) / 11.0
    return ap


def coco_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """101-point interpolated AP as ``COCOeval.accumulate`` computes it."""
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    where = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
    q = np.zeros(len(COCO_RECALL_POINTS))
    valid = where < len(envelope)
    q[valid] = envelope[where[valid]]
    return float(np.mean(q))


def average_precision(scores: np.ndarray, tp: np.ndarray, num_gt: int, style: str = "voc"
                      ) -> tuple[float, np.ndarray, np.ndarray]:
    """AP of one class from all its predictions over the set.

    Args:
        scores: ``(D,)`` scores, in dataset order (image by image).
        tp: ``(D,)`` bool true positives from :func:`match_image`.
        num_gt: ground-truth instances of the class (the positives).
        style: ``"voc"``, ``"coco"`` or ``"mnc"``.

    Returns:
        ``(ap, recall, precision)``: AP in [0, 1] (NaN when ``num_gt == 0``) and the ``(D,)``
        curves in rank order (stable sort by score, high to low).
    """
    order = _stable_descending(scores)
    hits = np.asarray(tp, dtype=np.float64)[order]
    tps = np.cumsum(hits)
    fps = np.cumsum(1.0 - hits)
    if num_gt == 0:
        return math.nan, np.zeros(len(tps)), np.zeros(len(tps))
    recall = tps / num_gt
    if style == "coco":
        precision = tps / (tps + fps + np.spacing(1))
        return coco_ap(recall, precision), recall, precision
    precision = tps / np.maximum(tps + fps, np.finfo(np.float64).eps)
    if style == "mnc":
        return voc07_ap(recall, precision), recall, precision
    return voc_ap(recall, precision), recall, precision


# ----------------------------------------------------------------------------- metrics

@dataclass
class Metrics:
    """Everything an evaluation measured. APs are fractions here and percent in :meth:`to_dict`.

    Attributes:
        class_names: names of classes 1..C.
        thresholds: the thresholds reported as AP^r (AP^r_vol always uses ``VOL_THRESHOLDS``).
        ap_style: ``"voc"``, ``"coco"`` or ``"mnc"``.
        ap: threshold -> ``(C,)`` AP in [0, 1] per class, NaN for a class without ground truth;
            holds every threshold of ``thresholds`` and ``VOL_THRESHOLDS``.
        curves: threshold (of ``thresholds``) -> C pairs ``(recall, precision)`` in rank order.
        confusion: ``(C + 1, C + 1)`` int64 pixel counts, rows ground truth, columns
            prediction, classes 0..C (void left out).
        num_images: images evaluated.
        num_gt: ``(C,)`` ground-truth instances per class (those with a non-void pixel).
        num_pred: ``(C,)`` predicted instances per class.
        count_abs_error: ``(C,)`` sum over images of ``|predicted - true|`` instances of each
            class (:meth:`count_error` divides by the images).
        num_right: ``(C,)`` predicted instances per class that are right
            (:func:`right_objects`); ``num_pred`` are the shown ones.
    """

    class_names: tuple[str, ...]
    thresholds: tuple[float, ...]
    ap_style: str
    ap: dict[float, np.ndarray]
    curves: dict[float, list[tuple[np.ndarray, np.ndarray]]]
    confusion: np.ndarray
    num_images: int
    num_gt: np.ndarray
    num_pred: np.ndarray
    count_abs_error: np.ndarray | None = None
    num_right: np.ndarray | None = None

    def class_precision(self) -> np.ndarray:
        """``(C,)`` right / shown objects per class, fraction (NaN where none is shown)."""
        right = self._right().astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.num_pred > 0, right / np.maximum(self.num_pred, 1), np.nan)

    def class_false_per_image(self) -> np.ndarray:
        """``(C,)`` shown objects that are not right, per image, per class."""
        return (self.num_pred - self._right()) / max(1, self.num_images)

    @property
    def precision(self) -> float:
        """Right / shown over every shown object, percent (NaN when nothing is shown)."""
        shown = int(self.num_pred.sum())
        return 100 * float(self._right().sum()) / shown if shown else math.nan

    @property
    def false_per_image(self) -> float:
        """Shown objects that are not right, per image (all classes)."""
        return float(self.class_false_per_image().sum())

    def _right(self) -> np.ndarray:
        if self.num_right is None:
            raise ValueError("these metrics hold no right objects (num_right)")
        return self.num_right

    def count_error(self) -> np.ndarray:
        """``(C,)`` mean absolute error of the number of instances per image, per class
        (every image counts, also those where the class is absent and not predicted)."""
        if self.count_abs_error is None or self.num_images == 0:
            return np.full(len(self.class_names), np.nan)
        return self.count_abs_error / self.num_images

    @property
    def has_gt(self) -> np.ndarray:
        """``(C,)`` bool: classes with at least one ground-truth instance (they are averaged)."""
        return self.num_gt > 0

    def class_ap_vol(self) -> np.ndarray:
        """``(C,)`` AP^r_vol per class, fraction (NaN without ground truth)."""
        return np.mean(np.stack([self.ap[t] for t in VOL_THRESHOLDS]), axis=0)

    def mean_ap(self, threshold: float) -> float:
        """AP^r at ``threshold`` averaged over the classes with ground truth (fraction)."""
        values = self.ap[threshold][self.has_gt]
        return float(np.mean(values)) if values.size else math.nan

    @property
    def ap_r(self) -> dict[str, float]:
        """``{"0.5": 58.7, ...}``: mean AP^r per threshold, percent."""
        return {threshold_key(t): 100 * self.mean_ap(t) for t in self.thresholds}

    @property
    def ap_r_vol(self) -> float:
        """Mean AP^r over IoU 0.1..0.9 and the classes with ground truth, percent."""
        values = self.class_ap_vol()[self.has_gt]
        return 100 * float(np.mean(values)) if values.size else math.nan

    def class_iou(self) -> np.ndarray:
        """``(C + 1,)`` IoU of classes 0..C (background first); NaN where a class is in
        neither the ground truth nor the prediction."""
        inter = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(0) + self.confusion.sum(1) - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, inter / np.maximum(union, 1), np.nan)

    @property
    def miou(self) -> float:
        """Mean IoU over classes 0..C that occur (VOC's semantic metric), percent."""
        iou = self.class_iou()
        return 100 * float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan

    def pr_curves(self, threshold: float = 0.5) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``class name -> (recall, precision)`` at ``threshold``, classes with ground truth
        only (what ``visualize.plot_pr_curves`` takes)."""
        if threshold not in self.curves:
            raise KeyError(f"no curves at IoU {threshold}; have {sorted(self.curves)}")
        return {name: pair for name, pair, ok in
                zip(self.class_names, self.curves[threshold], self.has_gt) if ok}

    def to_dict(self, curves: bool = True) -> dict[str, Any]:
        """JSON-ready dict, APs and IoUs in percent, ``None`` where undefined."""
        def pct(x: float) -> float | None:
            return None if not math.isfinite(x) else 100 * float(x)

        vol = self.class_ap_vol()
        count_err = self.count_error()
        per_class = {}
        for c, name in enumerate(self.class_names):
            per_class[name] = {
                "ap_r": {threshold_key(t): pct(self.ap[t][c]) for t in self.thresholds},
                "ap_r_vol": pct(vol[c]),
                "num_gt": int(self.num_gt[c]),
                "num_pred": int(self.num_pred[c]),
                "count_error": _finite(float(count_err[c])),
                **self._shown_dict(c),
            }
        iou = self.class_iou()
        out: dict[str, Any] = {
            "ap_style": self.ap_style,
            "ap_r": {k: _finite(v) for k, v in self.ap_r.items()},
            "ap_r_vol": _finite(self.ap_r_vol),
            "ap_r_by_threshold": {threshold_key(t): pct(self.mean_ap(t))
                                  for t in sorted(self.ap)},
            "miou": _finite(self.miou),
            "class_iou": {name: pct(v) for name, v in
                          zip(("background", *self.class_names), iou)},
            "per_class": per_class,
            "num_images": int(self.num_images),
            "num_gt": int(self.num_gt.sum()),
            "num_pred": int(self.num_pred.sum()),
            "classes_averaged": [n for n, ok in zip(self.class_names, self.has_gt) if ok],
        }
        if self.num_right is not None:
            out.update(num_right=int(self.num_right.sum()), precision=_finite(self.precision),
                       false_per_image=self.false_per_image)
        if curves:
            out["pr_curves"] = {
                threshold_key(t): {
                    name: {"recall": np.round(rec, 6).tolist(),
                           "precision": np.round(prec, 6).tolist()}
                    for name, (rec, prec) in zip(self.class_names, self.curves[t])}
                for t in self.thresholds}
        return out

    def _shown_dict(self, c: int) -> dict[str, Any]:
        """Class ``c``'s (0-based) right objects, precision (percent) and false objects per
        image; empty without ``num_right``."""
        if self.num_right is None:
            return {}
        precision = self.class_precision()[c]
        return {"num_right": int(self.num_right[c]),
                "precision": _finite(100 * float(precision)),
                "false_per_image": float(self.class_false_per_image()[c])}


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _check_thresholds(thresholds: Iterable[float]) -> tuple[float, ...]:
    out = tuple(float(t) for t in thresholds)
    if not out or any(not 0.0 <= t < 1.0 for t in out):
        raise ValueError(f"IoU thresholds must be in [0, 1), got {list(out)}")
    return out


class Evaluator:
    """Streams (ground truth, prediction) pairs image by image; :meth:`result` gives
    :class:`Metrics`. Keeps only scores and IoU tables, never the masks.

    >>> ev = Evaluator(("cat",))
    >>> # for sample, instances in ...: ev.add(sample, instances)
    """

    def __init__(self, class_names: Sequence[str], thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                 ap_style: str = "voc") -> None:
        if ap_style not in AP_STYLES:
            raise ValueError(f"ap_style {ap_style!r}: choose one of {AP_STYLES}")
        self.class_names = tuple(class_names)
        self.thresholds = _check_thresholds(thresholds)
        self.ap_style = ap_style
        c = len(self.class_names)
        # per class: one (scores (n,), ious (n, g)) entry per image that has either
        self._tables: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(c)]
        self.confusion = np.zeros((c + 1, c + 1), dtype=np.int64)
        self.num_gt = np.zeros(c, dtype=np.int64)
        self.num_pred = np.zeros(c, dtype=np.int64)
        self.count_abs_error = np.zeros(c, dtype=np.int64)  # sum of |#pred - #gt| per class
        self.num_right = np.zeros(c, dtype=np.int64)  # predictions right at PRECISION_IOU
        self.num_images = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def add(self, gt: Sample, pred: Instances | EncodedInstances,
            semantic: np.ndarray | None = None) -> None:
        """Add one image.

        Args:
            gt: the ground truth (class map, instance map with 255 void, instance classes).
            pred: predicted instances at the same ``(H, W)``, classes 1..C (masks, or RLEs as
                :class:`EncodedInstances`).
            semantic: optional ``(H, W)`` predicted class map (0..C) for the mean IoU; by
                default the predicted instances' class map.
        """
        where = gt.source or f"image {gt.image_id!r}"
        size = tuple(gt.class_map.shape)
        if pred.image_size != size:
            raise DatasetError(f"{where}: prediction is {pred.image_size[1]}x{pred.image_size[0]} "
                               f"pixels but the ground truth is {size[1]}x{size[0]}")
        c = self.num_classes
        if len(pred) and (pred.classes.min() < 1 or pred.classes.max() > c):
            raise DatasetError(f"{where}: predicted classes {sorted(set(pred.classes.tolist()))} "
                               f"outside 1..{c}")
        if not np.all(np.isfinite(pred.scores)):
            raise DatasetError(f"{where}: predicted scores must be finite numbers")
        gt_masks, gt_classes, void = visible_truth(gt)
        ious = mask_ious(pred.rles if isinstance(pred, EncodedInstances) else pred.masks,
                         gt_masks, void)  # (N, G)
        self.count_abs_error += np.abs(np.bincount(pred.classes - 1, minlength=c)[:c]
                                       - np.bincount(gt_classes - 1, minlength=c)[:c])
        for k in np.union1d(np.unique(gt_classes), np.unique(pred.classes)):
            p = pred.classes == k
            g = gt_classes == k
            self._tables[k - 1].append((pred.scores[p].astype(np.float64), ious[np.ix_(p, g)]))
            self.num_right[k - 1] += int(right_objects(*self._tables[k - 1][-1]).sum())
            self.num_gt[k - 1] += int(g.sum())
            self.num_pred[k - 1] += int(p.sum())

        sem = pred.class_map() if semantic is None else np.asarray(semantic)
        if sem.shape != size:
            raise DatasetError(f"{where}: semantic map {sem.shape} differs from the image {size}")
        if sem.size and (sem.min() < 0 or sem.max() > c):
            raise DatasetError(f"{where}: semantic map holds classes outside 0..{c}")
        keep = gt.class_map != VOID
        truth = gt.class_map[keep].astype(np.int64)
        if truth.size and truth.max() > c:
            raise DatasetError(f"{where}: ground-truth classes outside 0..{c}")
        self.confusion += pixel_confusion(truth, sem[keep], c)
        self.num_images += 1

    def result(self) -> Metrics:
        """Match and compute the APs at every threshold (``thresholds`` and 0.1..0.9)."""
        every = tuple(sorted(set(self.thresholds) | set(VOL_THRESHOLDS)))
        ap = {t: np.full(self.num_classes, np.nan) for t in every}
        curves: dict[float, list[tuple[np.ndarray, np.ndarray]]] = {t: [] for t in self.thresholds}
        for c, tables in enumerate(self._tables):
            scores = np.concatenate([s for s, _ in tables]) if tables else np.zeros(0)
            for t in every:
                tp = np.concatenate([match_image(s, i, t, self.ap_style) for s, i in tables]) \
                    if tables else np.zeros(0, bool)
                value, rec, prec = average_precision(scores, tp, int(self.num_gt[c]), self.ap_style)
                ap[t][c] = value
                if t in curves:
                    curves[t].append((rec, prec))
        return Metrics(self.class_names, self.thresholds, self.ap_style, ap, curves,
                       self.confusion.copy(), self.num_images, self.num_gt.copy(),
                       self.num_pred.copy(), self.count_abs_error.copy(), self.num_right.copy())


def evaluate(gts: Sequence[Sample], preds: Sequence[Instances], class_names: Sequence[str],
             thresholds: Sequence[float] = DEFAULT_THRESHOLDS, ap_style: str = "voc",
             semantic: Sequence[np.ndarray] | None = None) -> Metrics:
    """AP^r at ``thresholds``, AP^r_vol and mean IoU of ``preds`` against ``gts``.

    Args:
        gts: ground-truth samples (a dataset works: it is read once, in order).
        preds: one :class:`Instances` per sample, same order and size.
        class_names: names of classes 1..C.
        thresholds: IoU thresholds reported as AP^r.
        ap_style: ``"voc"`` (SDS, default), ``"coco"`` or ``"mnc"`` (see the module docstring).
        semantic: optional ``(H, W)`` predicted class maps for the mean IoU; by default the
            predicted instances' class maps.

    Returns:
        :class:`Metrics` (``.to_dict()`` for JSON, percent).
    """
    if len(gts) != len(preds):
        raise DatasetError(f"{len(preds)} predictions for {len(gts)} ground-truth images")
    if semantic is not None and len(semantic) != len(gts):
        raise DatasetError(f"{len(semantic)} semantic maps for {len(gts)} images")
    evaluator = Evaluator(class_names, thresholds, ap_style)
    for i, (gt, pred) in enumerate(zip(gts, preds)):
        evaluator.add(gt, pred, None if semantic is None else semantic[i])
    return evaluator.result()


# ----------------------------------------------------------------------------- reports

def format_table(metrics: Metrics, class_names: Sequence[str] | None = None) -> str:
    """The paper's Table 1 shape as a Markdown table: rows AP^r@t and AP^r_vol, one column per
    class and the mean (percent, one decimal; ``-`` for a class without ground truth), then
    the semantic IoU of each class (mean: the mean IoU, background included), the mean
    absolute error of the number of instances per image (mean over the classes with ground
    truth), the precision of the shown objects (mean: over every shown object) and the false
    objects per image (mean: their sum over the classes)."""
    names = tuple(class_names) if class_names is not None else metrics.class_names
    vol = metrics.class_ap_vol()

    def cell(x: float, scale: float = 100.0, digits: int = 1) -> str:
        return f"{scale * x:.{digits}f}" if math.isfinite(x) else "-"

    rows = [[f"AP^r@{threshold_key(t)}", *(cell(v) for v in metrics.ap[t]),
             cell(metrics.mean_ap(t))]
            for t in metrics.thresholds]
    rows.append(["AP^r_vol", *(cell(v) for v in vol), cell(metrics.ap_r_vol / 100)])
    rows.append(["IoU", *(cell(v) for v in metrics.class_iou()[1:]), cell(metrics.miou / 100)])
    errors = metrics.count_error()
    mean_error = float(np.mean(errors[metrics.has_gt])) if metrics.has_gt.any() else math.nan
    rows.append(["count error", *(cell(v, 1.0, 2) for v in errors), cell(mean_error, 1.0, 2)])
    if metrics.num_right is not None:  # the mean column: over every shown object
        rows.append(["precision", *(cell(v) for v in metrics.class_precision()),
                     cell(metrics.precision / 100)])
        rows.append(["false / image", *(cell(v, 1.0, 2) for v in metrics.class_false_per_image()),
                     cell(metrics.false_per_image, 1.0, 2)])
    header = [f"{metrics.ap_style} ({metrics.num_images} img)", *names, "mean"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if i else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" if i else "-" * (w + 2)
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def shown_line(metrics: Metrics) -> str:
    """One line: shown objects, right ones, precision and false objects per image."""
    shown = int(metrics.num_pred.sum())
    precision = metrics.precision
    return (f"shown objects {shown}, right {int(metrics.num_right.sum())} (IoU >= "
            f"{PRECISION_IOU:g} with a true object of their class): precision "
            f"{'-' if not math.isfinite(precision) else f'{precision:.1f} %'}, "
            f"{metrics.false_per_image:.2f} false objects per image")


def write_metrics(metrics: Metrics, out_dir: str | Path, class_names: Sequence[str] | None = None
                  ) -> tuple[Path, Path]:
    """Write ``out_dir/metrics.json`` (``Metrics.to_dict()``) and ``out_dir/metrics.md`` (the
    table, mean IoU and counts), each atomically (temporary file + ``os.replace``)."""
    out = check_output_dir(out_dir)
    data = metrics.to_dict()
    json_path, md_path = out / "metrics.json", out / "metrics.md"
    atomic_write_text(json_path, json.dumps(data, indent=1) + "\n")
    miou = data["miou"]
    md = [
        f"# Instance segmentation ({metrics.ap_style} AP^r, percent)",
        "",
        format_table(metrics, class_names),
        "",
        f"- images: {metrics.num_images}; ground-truth instances: {data['num_gt']}; "
        f"predicted instances: {data['num_pred']}",
        f"- AP^r_vol: mean over IoU 0.1..0.9; means over the {len(data['classes_averaged'])} "
        "classes with ground truth",
        f"- semantic mean IoU (classes 0..C, void excluded): "
        f"{'-' if miou is None else f'{miou:.1f}'}",
        *([f"- {shown_line(metrics)}"] if metrics.num_right is not None else []),
        "",
    ]
    atomic_write_text(md_path, "\n".join(md))
    return json_path, md_path


# ----------------------------------------------------------------------------- COCO results JSON

def instances_to_coco_results(instances_list: Iterable[Instances], category_ids: Sequence[int],
                              category_names: Sequence[str] | None = None
                              ) -> list[dict[str, Any]]:
    """COCO results entries: one per instance.

    Args:
        instances_list: predictions, each with its ``image_id``.
        category_ids: ``category_ids[c - 1]`` is the dataset's category id of class ``c``.
        category_names: optional names of classes 1..C; each entry then also carries its
            ``category_name``, by which :func:`load_coco_results` maps it onto any dataset's
            classes (``pfn predict`` writes class indices as ids, not COCO's ids).

    Returns:
        ``[{"image_id", "category_id", ["category_name",] "segmentation": {"size": [H, W],
        "counts": str}, "score"}]``: compressed RLE with ``counts`` decoded to str (JSON-ready).
    """
    results: list[dict[str, Any]] = []
    for inst in instances_list:
        for rle, c, score in zip(encode_masks(inst.masks), inst.classes, inst.scores):
            if not 1 <= c <= len(category_ids):
                raise ValueError(f"class {c} has no category id ({len(category_ids)} given)")
            image_id = inst.image_id
            if isinstance(image_id, np.generic):
                image_id = image_id.item()
            entry = {"image_id": image_id, "category_id": int(category_ids[c - 1])}
            if category_names is not None:
                entry["category_name"] = str(category_names[c - 1])
            results.append({
                **entry,
                "segmentation": {"size": [int(s) for s in rle["size"]],
                                 "counts": rle["counts"].decode("ascii")},
                "score": float(score),
            })
    return results


@dataclass
class _Entry:
    index: int  # position in the file, for error messages
    segmentation: Any
    class_index: int  # 1..C
    score: float


@dataclass
class CocoResults:
    """A parsed COCO results file, grouped by the dataset's images (masks decoded on demand)."""

    path: str
    image_ids: list[str | int]
    entries: list[list[_Entry]] = field(default_factory=list)

    def instances(self, index: int, image_size: tuple[int, int]) -> Instances:
        """The predictions of image ``index`` (of the dataset) as :class:`Instances` of
        ``image_size`` ``(H, W)``; a mask of another size is a :class:`DatasetError`."""
        return self.encoded(index, image_size).to_instances()

    def encoded(self, index: int, image_size: tuple[int, int]) -> EncodedInstances:
        """The predictions of image ``index`` as checked RLEs (nothing decoded): what
        ``pfn evaluate --predictions`` evaluates, in memory proportional to the file."""
        height, width = image_size
        image_id = self.image_ids[index]
        entries = self.entries[index]
        rles = [segmentation_rle(e.segmentation, height, width,
                                 f"{self.path}: entry {e.index} (image_id {image_id!r})")
                for e in entries]
        return EncodedInstances(rles, np.array([e.class_index for e in entries], dtype=np.int64),
                                np.array([e.score for e in entries], dtype=np.float32),
                                (height, width), image_id)


def load_coco_results(path: str | Path, dataset: Sequence[Sample]) -> CocoResults:
    """Parse and check a COCO results file against ``dataset`` (a ``PFNDataset``: uses its
    ``image_ids``, ``category_ids``, ``classes`` and ``source_of``); masks are decoded later,
    per image. The file is a list of results entries, or a COCO dataset dict (``annotations``
    with scores, ``images``, ``categories``: what the napari writer exports).

    Images: where the results name an entry's file (``images.json`` of ``pfn predict`` beside a
    list: id -> path; a dataset dict's ``images``: id -> ``file_name``), the dataset's image of
    that path, else of that file stem, is it. Otherwise ``image_id`` is matched to the
    dataset's ids (file stem for VOC/SBD/folder/synthetic, COCO id for COCO; ``"12"`` and ``12``
    are the same id), else to the stem of an image's file (``pfn predict`` writes stems, COCO's
    ids are numbers).

    Classes: an entry with a ``category_name`` (or, in a dataset dict, whose ``category_id``
    its ``categories`` name) is mapped by name onto the dataset's classes (COCO->VOC aliases
    apply); one whose name is none of them is left out with one warning. Without a name,
    ``category_id`` must be one of the dataset's ``category_ids``.

    Raises :class:`DatasetError` naming the file and the entry for malformed JSON, unknown image
    ids, unknown category ids, bad scores or segmentations, and a file none of whose category
    names is a class of the dataset.
    """
    path = Path(path)
    data = _read_results_json(path)
    names, files = _dict_names(path, data)
    entries = data["annotations"] if isinstance(data, dict) else data
    image_ids = list(getattr(dataset, "image_ids", None) or [s.image_id for s in dataset])
    images = _ImageLookup(dataset, image_ids)
    classes = _ClassLookup(dataset)
    results = CocoResults(str(path), image_ids, [[] for _ in image_ids])
    left_out: dict[str, int] = {}
    for n, entry in enumerate(entries):
        where = f"{path}: entry {n}"
        _check_entry(where, entry)
        image_id = entry["image_id"]
        index = images.find(image_id, files.get(str(image_id)))
        if index is None:
            raise DatasetError(f"{where}: image_id {image_id!r} is not an image of the dataset "
                               f"({len(image_ids)} images, e.g. {image_ids[:3]}), nor the name "
                               "of one's file")
        name = entry.get("category_name", names.get(str(entry["category_id"])))
        class_index = classes.find(where, entry["category_id"], name)
        if class_index is None:
            left_out[str(name)] = left_out.get(str(name), 0) + 1
            continue
        results.entries[index].append(_Entry(n, entry["segmentation"], class_index,
                                             float(entry["score"])))
    _report_left_out(path, left_out, len(entries), dataset)
    return results


def _read_results_json(path: Path) -> list | dict:
    """The parsed file: a list of entries, or a dict holding a list ``annotations``."""
    if not path.is_file():
        raise DatasetError(f"{path}: predictions file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        return data
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected a list of COCO results entries "
                           "(image_id, category_id, segmentation, score)")
    return data


def _dict_names(path: Path, data: list | dict) -> tuple[dict[str, str], dict[str, str]]:
    """A dataset dict's ``category id -> name`` and ``image id -> file_name`` (both keyed by
    ``str(id)``); for a plain list no names, and the files of ``images.json`` beside it."""
    if not isinstance(data, dict):
        return {}, _predict_files(path.parent / PREDICT_IMAGES)
    names: dict[str, str] = {}
    for cat in data.get("categories") or []:
        if not (isinstance(cat, dict) and isinstance(cat.get("name"), str) and "id" in cat):
            raise DatasetError(f"{path}: a 'categories' entry without id and name: {cat!r:.80}")
        names[str(cat["id"])] = cat["name"]
    files: dict[str, str] = {}
    for im in data.get("images") or []:
        if isinstance(im, dict) and isinstance(im.get("file_name"), str) and "id" in im:
            files[str(im["id"])] = im["file_name"]
    return names, files


def _predict_files(path: Path) -> dict[str, str]:
    """``image id -> its file`` from the ``images.json`` of ``pfn predict`` (its ids
    differ from the stems where two inputs share one); empty when absent or unreadable (the
    ids are then matched as they are)."""
    try:
        listed = json.loads(path.read_text())
        return {str(e["image_id"]): str(e["file"]) for e in listed}
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
        return {}


def _check_entry(where: str, entry: Any) -> None:
    """Keys and types of one results entry (segmentations are checked when decoded)."""
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = [k for k in ("image_id", "category_id", "segmentation", "score") if k not in entry]
    if missing:
        raise DatasetError(f"{where}: missing {', '.join(missing)}")
    category, score = entry["category_id"], entry["score"]
    if not (isinstance(category, int) and not isinstance(category, bool)):
        raise DatasetError(f"{where}: category_id must be an integer, got {category!r}")
    if not (isinstance(score, (int, float)) and not isinstance(score, bool)):
        raise DatasetError(f"{where}: score must be a number, got {score!r}")
    if not math.isfinite(score):
        raise DatasetError(f"{where}: score {score!r} is not a finite number")
    name = entry.get("category_name")
    if name is not None and not isinstance(name, str):
        raise DatasetError(f"{where}: category_name must be a string, got {name!r}")


class _ImageLookup:
    """A results entry's image -> the dataset's index: by its file (path, then stem), by id,
    or by the stem of the dataset image's file."""

    def __init__(self, dataset: Sequence[Sample], image_ids: list[str | int]) -> None:
        self.by_id = {str(i): n for n, i in enumerate(image_ids)}
        source_of = getattr(dataset, "source_of", None)
        self.sources = [str(source_of(n)) for n in range(len(image_ids))] if source_of else []
        self.by_stem: dict[str, int | None] = {}  # None: two images of that stem
        for n, source in enumerate(self.sources):
            stem = Path(source).stem
            self.by_stem[stem] = None if stem in self.by_stem else n
        self.by_path: dict[str, int] | None = None  # built when a file path is given

    def find(self, image_id: Any, file: str | None = None) -> int | None:
        """Index of the image of ``image_id``, or None. ``file``: the image's file as the
        results name it (``images.json``: a path; a dataset dict: its ``file_name``), tried
        first."""
        if file is not None:
            if os.path.isabs(file):
                if self.by_path is None:
                    self.by_path = {os.path.realpath(s): n for n, s in enumerate(self.sources)}
                if os.path.realpath(file) in self.by_path:
                    return self.by_path[os.path.realpath(file)]
            stem = Path(file.replace("\\", "/")).stem
            if self.by_stem.get(stem) is not None:
                return self.by_stem[stem]
        key = str(image_id)
        if key in self.by_id:
            return self.by_id[key]
        return self.by_stem.get(key)


class _ClassLookup:
    """A results entry's category -> the dataset's class 1..C: by name when it has one, else
    by the dataset's category ids."""

    def __init__(self, dataset: Sequence[Sample]) -> None:
        from .data.base import normalise_class_name

        self.normalise = normalise_class_name
        self.classes = tuple(getattr(dataset, "classes", ()))
        ids = getattr(dataset, "category_ids", None) or range(1, len(self.classes) + 1)
        self.by_id = {int(cid): c for c, cid in enumerate(ids, start=1)}
        self.by_name: dict[str, int] = {}
        for c, name in enumerate(self.classes, start=1):
            self.by_name.setdefault(normalise_class_name(name), c)

    def find(self, where: str, category_id: int, name: str | None) -> int | None:
        """The class of the entry; None for a name that is not one of the dataset's."""
        if name is not None:
            return self.by_name.get(self.normalise(name))
        if category_id not in self.by_id:
            raise DatasetError(f"{where}: category_id {category_id} unknown to the dataset "
                               f"(known: {sorted(self.by_id)}); entries with a category_name "
                               "are matched by name instead")
        return self.by_id[category_id]


def _report_left_out(path: Path, left_out: dict[str, int], total: int,
                     dataset: Sequence[Sample]) -> None:
    """Refuse a file none of whose category names is a class of the dataset; warn once about
    entries left out for a name the dataset does not score."""
    if not left_out:
        return
    counts = ", ".join(f"{name} ({k})" for name, k in sorted(left_out.items()))
    classes = ", ".join(getattr(dataset, "classes", ()))
    if sum(left_out.values()) == total:
        raise DatasetError(f"{path}: none of its {total} predictions is of a class of the dataset "
                           f"(its categories: {counts}; the dataset's classes: {classes}); check "
                           "that the predictions are of this dataset")
    warnings.warn(f"{path}: left out {sum(left_out.values())} of {total} predictions whose "
                  f"category is not a class of the dataset: {counts}", stacklevel=3)


def read_coco_results(path: str | Path, dataset: Sequence[Sample]) -> list[Instances]:
    """A COCO results file as one :class:`Instances` per image of ``dataset``, in its order
    (images without entries get empty Instances). Reads every sample once for its size."""
    results = load_coco_results(path, dataset)
    return [results.instances(i, tuple(dataset[i].class_map.shape))
            for i in range(len(results.image_ids))]
