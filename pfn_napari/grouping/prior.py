"""Naming what the category network left as background with the ImageNet classifier's evidence.

Beyond the paper. :class:`~pfn_napari.model.imagenet_prior.ImageNetPrior` gives, for each class,
how much of the ImageNet softmax its synsets hold at each stride-32 cell. :func:`prior_fill` adds
it to the category network's log-probabilities, ``log p_c + w log(1 + e_c / eps)`` for the classes
the prior may name, and keeps the pixels where that names such a class **and** the (refined)
category map says background. So the objects the networks found, their masks and their
instances, are never changed: the prior only adds objects. Each connected region of one class
becomes an instance when it covers at least ``min_frac`` of the image and touches the
network's objects along at most ``touch`` of its outline: a region that hugs a found object
(the dog the ImageNet classifier sees in a horse's legs and head) is a part of that object, not
another one. Its score is the mean evidence of its class over it.

Pure numpy / scipy; ``Grouper.run`` calls it when ``GroupingConfig.prior_weight > 0`` and the
network output holds the evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..config import VOID

#: Width in pixels of the outline ring that ``touch`` measures.
RING_PX = 4
#: The fused label is first read every this many pixels; only pixels within one such step of a
#: named one are then labelled exactly (both maps are smooth: bilinear from stride 8 and 32).
COARSE_STEP = 8


@dataclass
class PriorFill:
    """What the prior added: a class map of the new objects and one instance per object."""

    labels: np.ndarray  # (H, W) uint8, the class the prior named (0 where it named none)
    masks: np.ndarray  # (N, H, W) bool, disjoint, none on the class map's objects
    classes: np.ndarray  # (N,) int64, 1..C
    scores: np.ndarray  # (N,) float32, mean evidence of the class over the mask


def fused_labels(probs: np.ndarray, evidence: np.ndarray, fillable: np.ndarray,
                 weight: float, eps: float) -> np.ndarray:
    """``(n,)`` argmax over 0..C of ``log p + weight log(1 + e / eps)`` (the bonus only for the
    ``fillable`` classes) for ``n`` pixels: ``probs`` ``(C+1, n)``, ``evidence`` ``(C, n)``,
    ``fillable`` ``(C,)`` bool."""
    score = np.log(np.maximum(probs, 1e-8))  # (C+1, n)
    score[1:][fillable] += weight * np.log1p(evidence[fillable] / eps)
    return score.argmax(0)


def prior_fill(class_map: np.ndarray, probs: np.ndarray, evidence: np.ndarray,
               fillable: np.ndarray, weight: float, eps: float, min_frac: float,
               touch: float) -> PriorFill:
    """The objects the prior names on the background of ``class_map``.

    Args:
        class_map: ``(H, W)`` the (refined) category map: 0 background, 1..C, 255 void.
        probs: ``(C+1, H, W)`` the category network's probabilities.
        evidence: ``(C, H, W)`` the ImageNet evidence of each class, in [0, 1].
        fillable: ``(C,)`` bool, the classes the prior may name.
        weight, eps: the bonus ``weight log(1 + e / eps)`` (``weight`` 0: nothing is added).
        min_frac: smallest object, as a fraction of the image's pixels.
        touch: largest share of an object's outline ring (:data:`RING_PX` wide) on the class
            map's objects (1: no limit).

    Returns:
        :class:`PriorFill`; ``labels`` is non-zero only where ``class_map`` is 0.
    """
    class_map = np.asarray(class_map)
    big_h, big_w = class_map.shape
    fillable = np.asarray(fillable, dtype=bool)
    labels = np.zeros((big_h, big_w), dtype=np.uint8)
    empty = PriorFill(labels, np.zeros((0, big_h, big_w), bool), np.zeros(0, np.int64),
                      np.zeros(0, np.float32))
    background = class_map == 0
    if weight <= 0 or not fillable.any() or not background.any():
        return empty
    fill_ids = np.flatnonzero(fillable) + 1
    s = COARSE_STEP
    coarse = fused_labels(probs[:, ::s, ::s].reshape(len(probs), -1),
                          evidence[:, ::s, ::s].reshape(len(evidence), -1), fillable, weight, eps)
    coarse = np.isin(coarse, fill_ids).reshape(probs[0, ::s, ::s].shape)  # (h, w)
    if not coarse.any():
        return empty
    near = ndimage.binary_dilation(coarse, structure=np.ones((3, 3), bool))  # one step around
    background &= np.repeat(np.repeat(near, s, axis=0), s, axis=1)[:big_h, :big_w]
    py, px = np.nonzero(background)
    named = fused_labels(probs[:, py, px], evidence[:, py, px], fillable, weight, eps)  # (n,)
    labels[py, px] = named  # 0 or a class; only fillable classes can win over the network here
    labels[~np.isin(labels, fill_ids)] = 0
    objects = (class_map > 0) & (class_map != VOID)  # (H, W)
    min_pixels = min_frac * big_h * big_w
    masks, classes, scores = [], [], []
    for cls in np.unique(labels[labels > 0]):
        regions, n = ndimage.label(labels == cls)
        for j, box in enumerate(ndimage.find_objects(regions), start=1):
            ys, xs = box
            y0, y1 = max(ys.start - RING_PX, 0), min(ys.stop + RING_PX, big_h)
            x0, x1 = max(xs.start - RING_PX, 0), min(xs.stop + RING_PX, big_w)
            region = regions[y0:y1, x0:x1] == j  # (h, w), the region with a margin
            size = int(region.sum())
            keep = size >= max(min_pixels, 1)
            if keep and touch < 1:
                ring = ndimage.binary_dilation(region, iterations=RING_PX) & ~region
                keep = (ring & objects[y0:y1, x0:x1]).sum() <= touch * ring.sum()
            if not keep:
                labels[y0:y1, x0:x1][region] = 0
                continue
            mask = np.zeros((big_h, big_w), dtype=bool)
            mask[y0:y1, x0:x1] = region
            masks.append(mask)
            classes.append(int(cls))
            scores.append(float(evidence[cls - 1][mask].mean()))
    if not masks:
        return empty
    return PriorFill(labels, np.stack(masks), np.asarray(classes, np.int64),
                     np.asarray(scores, np.float32))
