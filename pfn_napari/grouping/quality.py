"""How good is an object's mask: a few cheap numbers per object and a logistic score on them.

The Grouper has these numbers at hand when it scores an object (``grouping.scoring =
"quality"``). ``scripts/fit_quality.py`` fits the weights of :func:`quality_score` by
cross-validation on labelled photos (docs/experiments/quality-score.md); they live as plain
numbers in the config (``grouping.quality``: the bias, then one weight per feature in the
order of ``config.QUALITY_FEATURES``, which says what each feature is).

Pure numpy (and scipy's connected components); nothing here runs a network.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, special

from ..config import QUALITY_FEATURES  # the names, in order, each with what it says
from .votes import box_ious

__all__ = ["QUALITY_FEATURES", "box_agreement", "border_share", "largest_part",
           "object_features", "quality_score"]

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity for ndimage.label


def box_agreement(member_boxes: np.ndarray, mean_box: np.ndarray) -> float:
    """Mean IoU (:func:`~pfn_napari.grouping.votes.box_ious`) of ``member_boxes`` ``(n, 4)``
    ``(x1, y1, x2, y2)`` with ``mean_box`` ``(4,)`` (any common scale: IoU does not change when
    x and y are scaled). 1.0 when there are no boxes (a center-only encoding gives no evidence
    either way)."""
    if len(member_boxes) == 0:
        return 1.0
    return float(box_ious(member_boxes, mean_box).mean())


def border_share(mask: np.ndarray) -> float:
    """The mask's pixels on the image's outermost rows and columns over the perimeter of its
    bounding box, ``2 (w + h)`` pixels: 0 for an object inside the image, about 0.5 for one
    cut by two sides, about 1 for one that fills the image. 0 for an empty mask."""
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return 0.0
    edge = np.zeros(mask.shape, dtype=bool)  # (H, W) the one-pixel ring of the image
    edge[[0, -1], :] = True
    edge[:, [0, -1]] = True
    perimeter = 2 * ((rows[-1] - rows[0] + 1) + (cols[-1] - cols[0] + 1))
    return float(np.count_nonzero(mask & edge) / perimeter)


def largest_part(mask: np.ndarray) -> float:
    """The largest 8-connected piece's share of the mask's pixels (1.0: one piece; 0 for an
    empty mask). Labelled inside the mask's bounding box only."""
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return 0.0
    crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    labels, n = ndimage.label(crop, structure=_EIGHT)
    if n <= 1:
        return 1.0
    sizes = np.bincount(labels.ravel())[1:]  # (n,) pixels of each piece
    return float(sizes.max() / sizes.sum())


def object_features(mask: np.ndarray, mean_prob: float, similarity: float,
                    member_boxes: np.ndarray, mean_box: np.ndarray, count: float,
                    instances_made: int) -> np.ndarray:
    """The ``QUALITY_FEATURES`` (``pfn_napari.config``) of one object, ``(F,)`` float64.

    Args:
        mask: ``(H, W)`` bool the object's full-resolution mask (not empty).
        mean_prob: mean probability of its class over the mask.
        similarity: its cluster's mean within-cluster similarity (``Clustering.similarity``).
        member_boxes: ``(n, 4)`` the boxes ``(x1, y1, x2, y2)`` its member cells vote for
            (``(0, 4)`` for a center-only encoding).
        mean_box: ``(4,)`` the object's mean box, on the same scale.
        count: the count the grouping used for the class (the head's, or the user's).
        instances_made: the number of clusters the grouping made of the class (k).
    """
    area = np.count_nonzero(mask) / mask.size
    return np.array([
        float(mean_prob),
        math.log(max(area, 1.0 / mask.size)),
        float(similarity),
        box_agreement(member_boxes, mean_box),
        border_share(mask),
        largest_part(mask),
        float(count) - float(instances_made),
    ], dtype=np.float64)


def quality_score(features: np.ndarray, coef: np.ndarray, bias: float) -> float:
    """The logistic score ``1 / (1 + exp(-(bias + coef . features)))`` in (0, 1) of one
    object's ``features`` ``(F,)`` with the weights ``coef`` ``(F,)``."""
    features = np.asarray(features, dtype=np.float64)
    coef = np.asarray(coef, dtype=np.float64)
    if features.shape != coef.shape:
        raise ValueError(f"quality_score: {features.shape} features for {coef.shape} weights")
    return float(special.expit(float(bias) + float(features @ coef)))  # stable on both sides
