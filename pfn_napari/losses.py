"""The losses of PFN, as pure functions of tensors (no model import).

* :func:`segmentation_loss`: pixel-wise cross-entropy on the stride-8 grid, 255 ignored;
* :func:`location_loss`: ``(1 / Omega) sum_i [k_i >= 1] sum_channels smoothL1(t_i - t*_i)``,
  Omega = the foreground cells of the batch (the paper's per-image Omega, pooled over the batch);
* :func:`count_loss`: Euclidean, ``mean_c (g_c - g*_c)^2`` averaged over the batch;
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
    if bool((target != ignore_index).any()):
        return F.cross_entropy(logits, target, ignore_index=ignore_index)
    return logits.sum() * 0.0


def location_loss(pred: Tensor, target: Tensor, weight: Tensor, beta: float = 1.0) -> Tensor:
    """Masked smooth-L1: ``pred`` and ``target`` ``(B, L, h, w)``, ``weight (B, h, w)`` (1 on
    foreground, 0 elsewhere). Sum over channels and cells of ``weight * smoothL1``, divided by
    the number of foreground cells ``sum(weight > 0)`` of the batch. An empty foreground gives 0
    (with a zero, finite gradient)."""
    per = F.smooth_l1_loss(pred, target, reduction="none", beta=beta).sum(dim=1)  # (B, h, w)
    omega = (weight > 0).sum().clamp(min=1).to(per.dtype)
    return (per * weight).sum() / omega


def count_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Euclidean loss of instance numbers: ``mean over batch and classes of (g - g*)^2``,
    ``pred`` and ``target`` ``(B, C)``."""
    return F.mse_loss(pred, target.to(pred.dtype))


def total_loss(out: Any, batch: Mapping[str, Tensor], cfg: LossConfig,
               kind: str) -> tuple[Tensor, dict[str, float]]:
    """The training objective of one stage.

    ``out`` is a ``NetOutputs`` (``seg_logits``, ``locations``, ``stream_locations``,
    ``counts``); ``batch`` holds ``class_map (B, h, w)`` long, ``locations (B, L, h, w)``,
    ``location_weight (B, h, w)`` and ``counts (B, C)``. ``kind``: 'category' (segmentation
    only), 'instance' (``loc_weight Lo + count_weight Ln``) or 'unified' (all three).
    ``Lo`` sums the loss of every stream and of the fused output; with a single stream the
    fused output is that stream, counted once. Returns ``(loss, parts)`` with the float value
    of each term (``seg``, ``loc``, ``count``, ``loc/<stream>``, ``loc/fused``, ``total``).
    """
    if kind not in ("category", "instance", "unified"):
        raise ValueError(f"kind {kind!r}: 'category', 'instance' or 'unified'")
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
        if len(preds) != 1 or not any(p is out.locations for p in preds.values()):
            preds["fused"] = out.locations
        lo = out.locations.new_zeros(())
        for name, p in preds.items():
            term = location_loss(p, target, weight, cfg.smooth_l1_beta)
            parts[f"loc/{name}"] = float(term.detach())
            lo = lo + term
        ln = count_loss(out.counts, batch["counts"])
        terms += [cfg.loc_weight * lo, cfg.count_weight * ln]
        parts["loc"], parts["count"] = float(lo.detach()), float(ln.detach())
    loss = torch.stack(terms).sum()
    parts["total"] = float(loss.detach())
    return loss, parts
