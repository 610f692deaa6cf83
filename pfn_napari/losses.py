"""The losses of PFN, as pure functions of tensors (no model import).

* :func:`segmentation_loss`: pixel-wise cross-entropy on the stride-8 grid, 255 ignored;
* :func:`location_loss`: ``(1 / Omega) sum_i [k_i >= 1] sum_channels smoothL1(t_i - t*_i)``
  (smooth-L1 with beta 1),
  Omega = the foreground cells of the batch (the paper's per-image Omega, pooled over the batch);
* :func:`count_loss`: Euclidean, ``mean_c (g_c - g*_c)^2`` averaged over the batch
  (``reduction='sum'``: Caffe's EuclideanLoss, ``sum_c (g_c - g*_c)^2 / 2`` averaged over the
  batch, which does not shrink as the number of classes grows);
* :func:`location_units`: the factors that measure location errors in pixels / ``loc_unit``
  rather than in fractions of the input's size (``loss.loc_unit > 0``);
* :func:`separation_loss` (beyond the paper, ``loss.separation_weight``): a cross-entropy over
  the instances of a cell's class in its image, asking its predicted box to be nearer its own
  instance's box than a rival's; :func:`coherence_loss` (``loss.coherence_weight``): how far
  each cell's box is from the mean of its instance's cells'; :func:`box_giou_loss`
  (``loss.giou_weight``): ``1 - GIoU`` of each cell's predicted box and its instance's, an
  error relative to the object's size;
* :func:`total_loss`: ``L = loc_weight * Lo + count_weight * Ln (+ seg_weight * Lseg)
  (+ separation_weight * Lsep + coherence_weight * Lcoh + giou_weight * Lgiou)``, with ``Lo``
  and ``Lgiou`` summed over every stream and the fused output (deep supervision).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import VOID, LossConfig


def segmentation_loss(logits: Tensor, target: Tensor, ignore_index: int = VOID) -> Tensor:
    """Cross-entropy of ``logits (B, C+1, h, w)`` against ``target (B, h, w)`` long, averaged
    over the non-ignored cells (0 if there are none)."""
    if not bool((target != ignore_index).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target, ignore_index=ignore_index)


def location_loss(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Masked smooth-L1 (beta 1): ``pred`` and ``target`` ``(B, L, h, w)``, ``weight (B, h, w)`` (1 on
    foreground, 0 elsewhere). Sum over channels and cells of ``weight * smoothL1``, divided by
    the number of foreground cells ``sum(weight > 0)`` of the batch. An empty foreground gives 0
    (with a zero, finite gradient)."""
    per = F.smooth_l1_loss(pred, target, reduction="none", beta=1.0).sum(dim=1)  # (B, h, w)
    omega = (weight > 0).sum().clamp(min=1).to(per.dtype)
    return (per * weight).sum() / omega


def count_loss(pred: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Euclidean loss of instance numbers, ``pred`` and ``target`` ``(B, C)``: ``'mean'`` over
    batch and classes of ``(g - g*)^2``, or ``'sum'``: ``sum_c (g - g*)^2 / 2`` per image,
    averaged over the batch (Caffe's EuclideanLoss)."""
    if reduction == "sum":
        return 0.5 * (pred - target.to(pred.dtype)).pow(2).sum(dim=1).mean()
    if reduction != "mean":
        raise ValueError(f"count loss reduction {reduction!r}: 'mean' or 'sum'")
    return F.mse_loss(pred, target.to(pred.dtype))


def _instances(target: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
    """The instances of one image's foreground cells: ``target (F, L)`` their true locations,
    ``classes (F,)``. Every cell of an instance has the same target, so the instances are the
    distinct ``(class, box)`` rows: returns ``keys (K, 1 + L)`` and each cell's row ``(F,)``."""
    return torch.unique(torch.cat([classes[:, None].to(target.dtype), target], dim=1), dim=0,
                        return_inverse=True)


def separation_loss(pred: Tensor, target: Tensor, weight: Tensor, class_map: Tensor,
                    temperature: float = 0.25, min_gap: float = 1.0) -> Tensor:
    """How far each cell's box is from being told apart from the neighbours' (beyond the paper).

    The location loss regresses every cell to its own instance's box; a cell between two
    people of one class that lands halfway between their boxes costs no more than one that
    misses away from both, yet only the first merges the two when they are grouped. This term
    asks for the grouping's condition itself: per image, the instances are the distinct
    ``(class, box)`` targets of its foreground cells, and a cell of instance ``a`` of class
    ``c`` is scored by the cross-entropy of ``a`` over the instances of ``c`` with logits
    ``-|p - b_k|^2 / s_a``, ``s_a = temperature * max(g_a, min_gap)^2`` (``g_a``: the distance
    from ``a``'s box to the nearest other box of class ``c``). So a cell at its own box costs
    ``log(1 + e^(-1 / temperature))`` (0.018 at 0.25) against its nearest rival, one halfway
    ``log 2``, whatever the objects' size. Cells whose class has one instance in the image add
    nothing.

    Args:
        pred, target: ``(B, L, h, w)`` predicted and true absolute locations, in units in which
            ``min_gap`` is meant (``loss.loc_unit`` pixels: ``total_loss`` passes them so).
        weight: ``(B, h, w)``, > 0 on the foreground cells (the location loss's weight).
        class_map: ``(B, h, w)`` the cells' classes.

    Returns:
        The mean over the cells that have a rival (0, with a zero gradient, when none has).
    """
    total, cells = pred.sum() * 0.0, 0
    for b in range(pred.shape[0]):
        fg = weight[b] > 0  # (h, w)
        keys, owner = _instances(target[b][:, fg].T, class_map[b][fg])  # (K, 1 + L), (F,)
        same = keys[:, :1] == keys[:, :1].T  # (K, K) same class
        rivals = same & ~torch.eye(len(keys), dtype=torch.bool, device=keys.device)
        use = rivals.any(dim=1)[owner]  # (F,) cells of a class with two or more instances
        if not bool(use.any()):
            continue
        boxes = keys[:, 1:]  # (K, L)
        gaps = (boxes[:, None] - boxes[None]).pow(2).sum(-1)  # (K, K) squared
        nearest = gaps.masked_fill(~rivals, float("inf")).min(dim=1).values  # (K,)
        scale = temperature * nearest.clamp(min=min_gap ** 2)  # (K,)
        p, own = pred[b][:, fg].T[use], owner[use]  # (F', L), (F',)
        dist = (p[:, None] - boxes[None]).pow(2).sum(-1)  # (F', K)
        logits = (-dist / scale[own, None]).masked_fill(~same[own], float("-inf"))
        total = total + F.cross_entropy(logits, own, reduction="sum")
        cells += int(use.sum())
    return total / max(cells, 1)


def coherence_loss(pred: Tensor, target: Tensor, weight: Tensor, class_map: Tensor) -> Tensor:
    """How much the cells of one instance disagree on its box (beyond the paper).

    The grouping clusters the boxes the cells vote for; it needs the cells of one object to
    vote for one box more than it needs that box to be the true one. Per image, the instances
    are the distinct ``(class, box)`` targets of the foreground cells (as in
    :func:`separation_loss`), and each cell is charged the smooth-L1 (beta 1, summed over the
    channels) between its predicted location and the mean of its instance's predictions (the
    variance term of De Brabandere et al.'s discriminative loss, 2017, without its margin).
    ``pred``, ``target``, ``weight``, ``class_map`` as in :func:`separation_loss`; returns the
    mean over the foreground cells (0, with a zero gradient, when there are none).
    """
    total, cells = pred.sum() * 0.0, 0
    for b in range(pred.shape[0]):
        fg = weight[b] > 0  # (h, w)
        if not bool(fg.any()):
            continue
        keys, owner = _instances(target[b][:, fg].T, class_map[b][fg])  # (K, 1 + L), (F,)
        p = pred[b][:, fg].T  # (F, L)
        sums = p.new_zeros(len(keys), p.shape[1]).index_add(0, owner, p)  # (K, L)
        sizes = torch.bincount(owner, minlength=len(keys)).to(p.dtype)  # (K,)
        mean = sums / sizes[:, None]  # (K, L)
        total = total + F.smooth_l1_loss(p, mean[owner], reduction="sum", beta=1.0)
        cells += len(owner)
    return total / max(cells, 1)


#: The channels of the top-left and bottom-right corners ``(lx, ly, rx, ry)`` in the box6 and
#: box10 encodings (``targets.ENCODINGS``).
BOX_CORNERS = slice(2, 6)


def box_giou_loss(pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """``1 - GIoU`` (Rezatofighi et al., 2019) between each foreground cell's predicted box and
    its instance's, averaged over the foreground cells (beyond the paper).

    The smooth-L1 of :func:`location_loss` charges a 30-pixel error as much on a 60-pixel
    pedestrian as on a 400-pixel horse; the vote grouping asks whether the boxes of a cell
    and its neighbours overlap by IoU > 0.6, an error relative to the object's size, and this
    term measures exactly that. ``pred``, ``target`` ``(B, L, h, w)`` in the box6 / box10
    layout (corners in channels 2-5, any units: IoU does not change when an axis is scaled),
    ``weight (B, h, w)`` as in :func:`location_loss`. A predicted box whose corners have
    crossed counts as empty (IoU 0, finite gradients); the smooth-L1 term this one is added
    to puts its corners back in order. Written out because
    ``torchvision.ops.generalized_box_iou_loss`` requires ordered corners, which a network's
    raw output does not guarantee.
    """
    p = pred[:, BOX_CORNERS]  # (B, 4, h, w): lx, ly, rx, ry
    t = target[:, BOX_CORNERS].to(p.dtype)
    area_p = (p[:, 2] - p[:, 0]).clamp(min=0) * (p[:, 3] - p[:, 1]).clamp(min=0)  # (B, h, w)
    area_t = (t[:, 2] - t[:, 0]).clamp(min=0) * (t[:, 3] - t[:, 1]).clamp(min=0)
    iw = (torch.minimum(p[:, 2], t[:, 2]) - torch.maximum(p[:, 0], t[:, 0])).clamp(min=0)
    ih = (torch.minimum(p[:, 3], t[:, 3]) - torch.maximum(p[:, 1], t[:, 1])).clamp(min=0)
    inter = iw * ih
    union = area_p + area_t - inter
    hull = ((torch.maximum(p[:, 2], t[:, 2]) - torch.minimum(p[:, 0], t[:, 0])) *
            (torch.maximum(p[:, 3], t[:, 3]) - torch.minimum(p[:, 1], t[:, 1])))
    eps = 1e-7
    giou = inter / (union + eps) - (hull - union) / (hull + eps)  # (B, h, w)
    omega = (weight > 0).sum().clamp(min=1).to(giou.dtype)
    return ((1.0 - giou) * weight).sum() / omega


def location_units(num_channels: int, image_size: tuple[int, int], unit: float,
                   like: Tensor) -> Tensor:
    """``(1, L, 1, 1)`` factors taking normalised locations (x / W, y / H of an input of
    ``image_size = (H, W)``) to units of ``unit`` pixels: ``W / unit`` on the x channels,
    ``H / unit`` on the y channels (every encoding alternates x, y)."""
    H, W = image_size
    per_axis = torch.tensor([W / unit, H / unit], dtype=like.dtype, device=like.device)
    return per_axis.repeat(num_channels // 2).view(1, num_channels, 1, 1)  # (1, L, 1, 1)


def total_loss(out: Any, batch: Mapping[str, Tensor], cfg: LossConfig,
               kind: str) -> tuple[Tensor, dict[str, float]]:
    """The training objective of one stage.

    ``out`` is a ``NetOutputs`` (``seg_logits``, ``locations``, ``stream_locations``,
    ``counts``); ``batch`` holds ``class_map (B, h, w)`` long, ``locations (B, L, h, w)``,
    ``location_weight (B, h, w)`` and ``counts (B, C)``. ``kind``: 'category' (segmentation
    only), 'instance' (``loc_weight Lo + count_weight Ln``), 'unified' (all three) or 'counts'
    (``count_weight Ln`` alone: stage 'counts', the count head on whole photos).
    ``Lo`` sums the loss of every stream and of the fused output; with a single stream the
    fused output is that stream, counted once. Returns ``(loss, parts)`` with the float value
    of each term (``seg``, ``loc``, ``count``, ``loc/<stream>``, ``loc/fused``, ``sep`` / ``coh``
    / ``giou`` when their weight is > 0, ``total``).
    The loss is computed in float32 whatever the dtype of ``out`` (a mixed-precision forward
    pass, ``train.amp``, gives bfloat16 or float16 maps).
    """
    if kind not in ("category", "instance", "unified", "counts"):
        raise ValueError(f"kind {kind!r}: 'category', 'instance', 'unified' or 'counts'")
    out = out.float()  # NetOutputs in float32 (no copy for float32 maps)
    parts: dict[str, float] = {}
    terms: list[Tensor] = []
    if kind in ("category", "unified"):
        if out.seg_logits is None:
            raise ValueError(f"a {kind!r} loss needs seg_logits")
        seg = segmentation_loss(out.seg_logits, batch["class_map"])
        terms.append(cfg.seg_weight * seg)
        parts["seg"] = float(seg.detach())
    if kind in ("instance", "unified"):
        if out.locations is None or out.counts is None:
            raise ValueError(f"a {kind!r} loss needs locations and counts")
        target, weight = batch["locations"], batch["location_weight"]
        preds = dict(out.stream_locations)
        if len(preds) != 1:  # one stream: the fused output is that stream (counted once)
            preds["fused"] = out.locations
        units = None
        if cfg.loc_unit > 0:  # errors in pixels / loc_unit of the network input
            units = location_units(target.shape[1], tuple(batch["image"].shape[-2:]),
                                   cfg.loc_unit, target)
            target = target * units
        lo = out.locations.new_zeros(())
        lg = out.locations.new_zeros(())
        for name, p in preds.items():
            p = p * units if units is not None else p
            term = location_loss(p, target, weight)
            parts[f"loc/{name}"] = float(term.detach())
            lo = lo + term
            if cfg.giou_weight > 0:
                lg = lg + box_giou_loss(p, target, weight)
        terms.append(cfg.loc_weight * lo)
        parts["loc"] = float(lo.detach())
        if cfg.giou_weight > 0:
            terms.append(cfg.giou_weight * lg)
            parts["giou"] = float(lg.detach())
        # the grouping reads the fused output: the two grouping terms score it alone
        fused = out.locations * units if units is not None else out.locations
        if cfg.separation_weight > 0:
            sep = separation_loss(fused, target, weight, batch["class_map"],
                                  cfg.separation_temperature)
            terms.append(cfg.separation_weight * sep)
            parts["sep"] = float(sep.detach())
        if cfg.coherence_weight > 0:
            coh = coherence_loss(fused, target, weight, batch["class_map"])
            terms.append(cfg.coherence_weight * coh)
            parts["coh"] = float(coh.detach())
    if kind in ("instance", "unified", "counts"):
        if out.counts is None:
            raise ValueError(f"a {kind!r} loss needs counts")
        ln = count_loss(out.counts, batch["counts"], cfg.count_reduction)
        terms.append(cfg.count_weight * ln)
        parts["count"] = float(ln.detach())
    loss = torch.stack(terms).sum()
    parts["total"] = float(loss.detach())
    return loss, parts
