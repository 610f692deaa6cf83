"""Fully-connected CRF on the category probabilities (DeepLab's post-processing), through
``pydensecrf`` (PyPI ``pydensecrf2``): Krähenbühl & Koltun's permutohedral mean field is a
C++ library; nothing here reimplements it.

Defaults (``CRFConfig``) are the values commonly used with DeepLab-LargeFOV: bilateral kernel
weight 4, sxy 121, srgb 5; Gaussian kernel weight 3, sxy 3; 10 iterations.
"""

from __future__ import annotations

import numpy as np

from ..config import CRFConfig
from ..errors import PFNError

_EPS = 1e-8


def dense_crf(image: np.ndarray, probs: np.ndarray, cfg: CRFConfig | None = None) -> np.ndarray:
    """Refine class probabilities with a dense CRF.

    ``image``: ``(H, W, 3)`` uint8 RGB; ``probs``: ``(C + 1, H, W)`` float, each pixel's class
    distribution (softmax of the network, upsampled to full resolution). Returns ``(C + 1, H,
    W)`` float32 marginals after ``cfg.iterations`` mean-field steps (each pixel sums to 1).
    """
    cfg = cfg or CRFConfig()
    cfg.validate()  # a kernel width of 0 crashes the C++ library (segfault), not Python
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        raise PFNError("the CRF needs pydensecrf: pip install pydensecrf2 "
                       "(or run without --crf / crf.enabled=false)") from None
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"dense_crf: image must be (H, W, 3), got {image.shape}")
    n, h, w = probs.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"dense_crf: image {image.shape[:2]} and probs {(h, w)} differ in size")
    p = np.clip(probs.astype(np.float32), _EPS, 1.0)
    p /= p.sum(axis=0, keepdims=True)
    d = dcrf.DenseCRF2D(w, h, n)
    d.setUnaryEnergy(np.ascontiguousarray(-np.log(p).reshape(n, -1)))  # (C+1, H W)
    d.addPairwiseGaussian(sxy=cfg.pos_xy, compat=cfg.pos_w)
    d.addPairwiseBilateral(sxy=cfg.bi_xy, srgb=cfg.bi_rgb,
                           rgbim=np.ascontiguousarray(image.astype(np.uint8)), compat=cfg.bi_w)
    q = np.asarray(d.inference(int(cfg.iterations)), dtype=np.float32)  # (C+1, H W)
    return q.reshape(n, h, w)
