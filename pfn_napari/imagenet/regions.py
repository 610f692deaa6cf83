"""The ImageNet step's regions: naming what the category network left as background with the
ImageNet classifier's evidence, checking objects on their crops, fitting outlines.

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

Two further steps use the photo itself. :func:`grabcut_shape` fits each named object's outline
to the photo (the stride-32 region is a blob several times larger than a small object).
:func:`check_instances` reads what the classifier says of every object of a class it knows,
shown cropped as an ImageNet photo (``ImageNetPrior.classify_crops``): it drops the objects it
sees nothing of and relabels the ones it is sure are another class.

Pure numpy / scipy (and OpenCV for GrabCut, the optional extra ``grabcut``);
:class:`~pfn_napari.imagenet.step.ImageNetStep` calls them after the grouping when
``imagenet.enabled`` and ``imagenet.weight > 0``.
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


#: A network's object is relabelled only when its crop gives its own class less than this.
RELABEL_OWN_MAX = 0.05


def check_instances(classes: np.ndarray, from_prior: np.ndarray, evidence: np.ndarray,
                    covered: np.ndarray, any_min: float, named_min: float,
                    relabel_min: float) -> tuple[np.ndarray, np.ndarray]:
    """What the ImageNet classifier, shown each object cropped, says of the objects.

    Args:
        classes: ``(N,)`` int, 1..C, the objects' classes.
        from_prior: ``(N,)`` bool, the objects the prior named (the rest the networks found).
        evidence: ``(N, C)`` the classifier's evidence for each class on each object's crop
            (rows of objects of uncovered classes are not read).
        covered: ``(C,)`` bool, the classes with ImageNet evidence; objects of the others
            (person) are kept as they are.
        any_min: a network's object is dropped when the covered classes together hold less
            than this of its crop (the classifier sees none of them there).
        named_min: a prior-named object is dropped when its own class holds less than this
            (the crop does not confirm what the stride-32 evidence named).
        relabel_min: a network's object takes the covered class that holds at least this of
            its crop when its own class holds less than :data:`RELABEL_OWN_MAX` (> 1: never).

    Returns:
        ``(keep (N,) bool, classes (N,) int64)``.
    """
    classes = np.asarray(classes, dtype=np.int64).copy()
    from_prior = np.asarray(from_prior, dtype=bool)
    covered = np.asarray(covered, dtype=bool)
    keep = np.ones(len(classes), dtype=bool)
    if not covered.any():
        return keep, classes
    ev = np.where(covered[None], np.asarray(evidence, dtype=np.float64).reshape(-1, len(covered)),
                  0.0)  # (N, C)
    for n, cls in enumerate(classes):
        if not covered[cls - 1]:
            continue
        own = ev[n, cls - 1]
        if from_prior[n]:
            keep[n] = own >= named_min
            continue
        if ev[n].sum() < any_min:
            keep[n] = False
            continue
        best = int(ev[n].argmax())
        if best != cls - 1 and ev[n, best] >= relabel_min and own < RELABEL_OWN_MAX:
            classes[n] = best + 1
    return keep, classes


#: The one line a user without OpenCV reads when ``imagenet.shape`` is ``'grabcut'``.
GRABCUT_MISSING = ("imagenet.shape='grabcut' needs OpenCV, an optional extra: "
                   "pip install 'pfn-napari[grabcut]' (or --set imagenet.shape=region)")

#: GrabCut's window around an object: its box grown by this fraction of its sides (+ 4 px).
GRABCUT_PAD = 0.5
#: Pixels within this fraction of the box's longer side around the region may still be object.
GRABCUT_RING = 0.15
GRABCUT_ITERATIONS = 3
#: A window with a longer side than this is fitted at this size and the outline scaled back.
GRABCUT_MAX_SIDE = 300


def grabcut_shape(image: np.ndarray, mask: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The outline of a prior-named object fitted to the photo: OpenCV's GrabCut (Rother et al.,
    2004) in a window around ``mask``, started from the region as "probably object", a ring
    around it as "probably background" and the rest of the window, and every pixel outside
    ``allowed``, as background.

    ``image`` ``(H, W, 3)`` uint8 RGB; ``mask``, ``allowed`` ``(H, W)`` bool. Returns the new
    ``(H, W)`` mask, inside ``allowed``; the region itself (inside ``allowed``) when GrabCut
    keeps less than 5 % of it or cannot run (a window without background)."""
    try:
        import cv2
    except ImportError:
        from ..errors import PFNError

        raise PFNError(GRABCUT_MISSING) from None
    mask = np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return mask
    big_h, big_w = mask.shape
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    pad_y, pad_x = int((y1 - y0) * GRABCUT_PAD) + 4, int((x1 - x0) * GRABCUT_PAD) + 4
    a0, a1 = max(0, y0 - pad_y), min(big_h, y1 + pad_y)
    b0, b1 = max(0, x0 - pad_x), min(big_w, x1 + pad_x)
    region = mask[a0:a1, b0:b1]
    ring = max(2, int(GRABCUT_RING * max(y1 - y0, x1 - x0)))
    near = cv2.dilate(region.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=ring) > 0
    labels = np.full(region.shape, cv2.GC_BGD, dtype=np.uint8)  # (h, w)
    labels[near] = cv2.GC_PR_BGD
    labels[region] = cv2.GC_PR_FGD
    labels[~allowed[a0:a1, b0:b1]] = cv2.GC_BGD
    window = np.ascontiguousarray(image[a0:a1, b0:b1, ::-1])  # (h, w, 3) BGR, as OpenCV reads
    h, w = labels.shape
    scale = min(1.0, GRABCUT_MAX_SIDE / max(h, w))
    if scale < 1:  # GrabCut's time grows with the window's pixels: fit a large one smaller
        size = (max(1, round(w * scale)), max(1, round(h * scale)))  # (width, height)
        window = cv2.resize(window, size, interpolation=cv2.INTER_AREA)
        labels = cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.setRNGSeed(0)  # GrabCut's k-means seeding: the same photo gives the same outline
    try:
        cv2.grabCut(window, labels, None, bgd, fgd, GRABCUT_ITERATIONS, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return mask & allowed
    fitted = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.float32)
    if scale < 1:
        fitted = cv2.resize(fitted, (w, h), interpolation=cv2.INTER_LINEAR)
    out = np.zeros_like(mask)
    out[a0:a1, b0:b1] = fitted >= 0.5
    out &= allowed
    return out if out.sum() >= 0.05 * mask.sum() else mask & allowed
