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
* :func:`total_loss`: ``L = loc_weight * Lo + count_weight * Ln (+ seg_weight * Lseg)``, with
  ``Lo`` summed over every stream and the fused output (deep supervision).
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
    of each term (``seg``, ``loc``, ``count``, ``loc/<stream>``, ``loc/fused``, ``total``).
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
        for name, p in preds.items():
            p = p * units if units is not None else p
            term = location_loss(p, target, weight)
            parts[f"loc/{name}"] = float(term.detach())
            lo = lo + term
        terms.append(cfg.loc_weight * lo)
        parts["loc"] = float(lo.detach())
    if kind in ("instance", "unified", "counts"):
        if out.counts is None:
            raise ValueError(f"a {kind!r} loss needs counts")
        ln = count_loss(out.counts, batch["counts"], cfg.count_reduction)
        terms.append(cfg.count_weight * ln)
        parts["count"] = float(ln.detach())
    loss = torch.stack(terms).sum()
    parts["total"] = float(loss.detach())
    return loss, parts
